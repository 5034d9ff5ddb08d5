"""What `helm install --wait` and `helm upgrade` do to the release: a chart bump leaves the pod
templates (and so the pods) alone unless what runs in them changes, Helm's readiness wait covers
the Consul servers and the producer and skips the nodes' OnDelete StatefulSet, and every
document and script says so."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import CHART, FULLNAME, RELEASE, ROOT, find, load_values, parse, render_as

WORKLOADS = [("StatefulSet", f"{FULLNAME}-consul-server"), ("StatefulSet", FULLNAME), ("Deployment", f"{FULLNAME}-producer")]


def _bumped_chart(tmp_path: Path, version: str, app_version: str | None = None) -> Path:
    chart = tmp_path / "simpleloggers"
    shutil.copytree(CHART, chart)
    meta = yaml.safe_load((chart / "Chart.yaml").read_text())
    meta["version"] = version
    if app_version:
        meta["appVersion"] = app_version
    (chart / "Chart.yaml").write_text(yaml.safe_dump(meta))
    return chart


def _templates(chart: Path, values=None) -> dict[tuple[str, str], dict]:
    objects = parse(render_as(values, RELEASE, chart))
    return {key: find(objects, *key)["spec"]["template"] for key in WORKLOADS}


def test_chart_version_bump_restarts_no_pod(tmp_path):
    """A new chart version alone changes no pod template: no Consul server restart (with one
    server, a write outage), no leader-driven roll of the nodes, no producer restart."""
    before = _templates(CHART)
    after = _templates(_bumped_chart(tmp_path, "9.9.9"))
    for key in WORKLOADS:
        assert after[key] == before[key], f"{key} would restart on a chart-version bump"


def test_app_version_bump_restarts_only_what_runs_it(tmp_path):
    """A new appVersion (the simpleloggers image tag) rolls the node and producer pods through
    their image, and leaves the Consul servers, which do not run it, alone."""
    before = _templates(CHART)
    after = _templates(_bumped_chart(tmp_path, "9.9.9", "9.9.9"))
    assert after[WORKLOADS[0]] == before[WORKLOADS[0]]
    for key in WORKLOADS[1:]:
        images = [c["image"] for c in after[key]["spec"]["containers"]]
        assert images == ["simpleloggers:9.9.9"], key
        app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
        restored = yaml.safe_load(yaml.safe_dump(after[key]).replace("simpleloggers:9.9.9", f"simpleloggers:{app_version}"))
        assert restored == before[key], f"{key} differs in more than its image"


def helm_waits_for(obj: dict) -> bool:
    """Whether `helm install/upgrade --wait` waits for this object to become ready. Helm 3's
    ReadyChecker (pkg/kube/ready.go) and Helm 4's kstatus watcher agree: a StatefulSet whose
    updateStrategy is not RollingUpdate is ready at once ("nothing to wait for"); Deployments,
    RollingUpdate StatefulSets, DaemonSets, PVCs and non-hook Pods are waited for."""
    kind = obj["kind"]
    if kind == "StatefulSet":
        return obj["spec"].get("updateStrategy", {}).get("type", "RollingUpdate") == "RollingUpdate"
    if kind == "Pod":
        return "helm.sh/hook" not in obj["metadata"].get("annotations", {})
    return kind in ("Deployment", "DaemonSet", "ReplicaSet", "PersistentVolumeClaim")


@pytest.mark.parametrize("value_set", ["default", "kind"])
def test_helm_wait_covers_consul_and_producer_not_the_nodes(value_set, objects_of):
    """`--wait` waits for the Consul servers (Ready once Raft has a leader) and the producer (no
    readiness probe: available once started, after its agent joined), and skips the nodes, whose
    followers are never Ready: so it returns, and usefully."""
    objects = objects_of(value_set)
    waited = {(o["kind"], o["metadata"]["name"]) for o in objects if helm_waits_for(o)}
    assert waited == {("StatefulSet", f"{FULLNAME}-consul-server"), ("Deployment", f"{FULLNAME}-producer")}
    producer = find(objects, "Deployment", f"{FULLNAME}-producer")["spec"]["template"]["spec"]
    assert all("readinessProbe" not in c for c in producer["containers"])
    consul = find(objects, "StatefulSet", f"{FULLNAME}-consul-server")["spec"]["template"]["spec"]["containers"][0]
    # Ready on a known Raft leader, through an endpoint that needs no ACL token: readiness must
    # not wait for the tokens the ACL bootstrap Job (not waited for) creates.
    assert "/v1/status/leader" in consul["readinessProbe"]["exec"]["command"][-1]
    assert "token" not in consul["readinessProbe"]["exec"]["command"][-1].lower()


DOCS = ["README.md", "charts/simpleloggers/README.md", "charts/simpleloggers/values.yaml",
        "charts/simpleloggers/templates/NOTES.txt", "deploy/kind-up.sh"]


@pytest.mark.parametrize("doc", DOCS)
def test_docs_say_what_helm_wait_does(doc):
    """No document or script claims that `helm install --wait` (or `kubectl rollout status`)
    waits for every pod and times out; where --wait is discussed, the text says it waits for the
    Consul servers and the producer."""
    text = " ".join((ROOT / doc).read_text().split())
    assert not re.search(r"--wait\W.{0,160}?\btim(e|es|ed) out", text, re.I), doc
    assert not re.search(r"rollout status\W.{0,80}?\b(wait|time)s? (for every|out)", text, re.I), doc
    if "--wait" in text and doc != "deploy/kind-up.sh":
        assert re.search(r"--wait\W.{0,200}?Consul (servers )?and the producer", text, re.I | re.S), doc
