"""Replication in the chart: `node.replicas` is both the StatefulSet's size and `--replicas`, the
in-sync minimum can never exceed it (a template `fail` says so), the schema refuses malformed
acks, counts and durations, the cluster secret reaches the node only through a Secret (generated
with 32 random letters and digits and kept across upgrades, or an existing one, or none), and the
internal endpoint is reachable pod to pod at the address the node advertises."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import (
    CHART,
    FULLNAME,
    NAMESPACE,
    RELEASE,
    container,
    env_of,
    find,
    node_sts,
    of_kind,
    parse,
    render,
    render_as,
    selects,
)
from netpol import Pod, allows

SECRET = f"{FULLNAME}-cluster-secret"
KUBE_VERSION = "1.34.0"


def _node(objects: list[dict]) -> dict:
    return container(node_sts(objects)["spec"]["template"]["spec"], "node")


def _replication(**values: Any) -> dict[str, Any]:
    return {"node": {"replication": values}}


def _validate(obj: dict) -> None:
    kubernetes_validate.validate({k: v for k, v in obj.items() if not k.startswith("_")}, KUBE_VERSION, strict=True)


def test_replicas_are_the_statefulset_size(value_set, objects_of):
    """With every value set (five-replicas included), --replicas is exactly the StatefulSet's size,
    so a node never counts a majority of a different cluster than the one running."""
    objects = objects_of(value_set)
    sts = node_sts(objects)
    assert env_of(_node(objects))["SIMPLELOGGERS_REPLICAS"]["value"] == str(sts["spec"]["replicas"])


def test_replication_port_equal_to_the_api_port_fails_clearly():
    """One port for both would let the NetworkPolicy no longer tell peers from clients."""
    with pytest.raises(helm.HelmRenderError, match=re.escape("node.replicationPort (3000) must differ from node.port")):
        render({"node": {"port": 3000, "replicationPort": 3000}})


@pytest.mark.parametrize("replicas, min_insync", [(1, 1), (3, 3), (3, 1), (5, "5"), (64, 33)])
def test_min_insync_up_to_replicas_renders(replicas, min_insync):
    """A minimum up to the replica count (as a number or as a --set-string) renders and sets
    --min-insync to it."""
    values = {"node": {"replicas": replicas, "replication": {"minInsync": min_insync}}}
    objects = parse(render(helm.values_from_yaml(yaml.safe_dump(values))))
    env = env_of(_node(objects))
    assert env["SIMPLELOGGERS_MIN_INSYNC"]["value"] == str(min_insync)
    assert env["SIMPLELOGGERS_REPLICAS"]["value"] == str(replicas)


@pytest.mark.parametrize("replicas, min_insync", [(3, 4), (1, 2), (5, "6"), (2, 64)])
def test_min_insync_above_replicas_fails_clearly(replicas, min_insync):
    """A minimum above the replica count would make the leader refuse every write: the install
    fails, and the message names both values and their numbers."""
    message = (f"node.replication.minInsync ({int(min_insync)}) must not exceed "
               f"node.replicas ({replicas})")
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render({"node": {"replicas": replicas, "replication": {"minInsync": min_insync}}})


@pytest.mark.parametrize(
    "values",
    [
        _replication(acks="all"),
        _replication(acks="leader"),
        _replication(acks=""),
        _replication(minInsync=None),
        _replication(minInsync="2"),
        _replication(replicaLagMax="500ms"),
        _replication(replicaLagMax="1m30s"),
        _replication(clusterSecret={"create": False, "existingSecret": "my-secret.v2", "key": "token_1"}),
        {"node": {"replicas": 64}},
    ],
    ids=["acks-all", "acks-leader", "acks-empty", "min-insync-null", "min-insync-string", "lag-ms",
         "lag-compound", "existing-secret", "replicas-64"],
)
def test_schema_accepts_replication_values(values):
    """The forms the binary takes pass the schema."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)


@pytest.mark.parametrize(
    "values",
    [
        _replication(acks="ALL"),
        _replication(acks="none"),
        _replication(acks=1),
        _replication(acks=True),
        _replication(minInsync=0),
        _replication(minInsync=-1),
        _replication(minInsync="0"),
        _replication(minInsync=1.5),
        _replication(minInsync="two"),
        _replication(minInsync=True),
        _replication(replicaLagMax="0s"),
        _replication(replicaLagMax="2"),
        _replication(replicaLagMax="-1s"),
        _replication(replicaLagMax="2 s"),
        _replication(replicaLagMax=2),
        {"node": {"replicas": 0}},
        {"node": {"replicas": 65}},
        _replication(clusterSecret={"value": "hunter2"}),
        _replication(secret="hunter2"),
        _replication(clusterSecret={"create": "yes"}),
        _replication(clusterSecret={"existingSecret": "Not_A_Name"}),
        _replication(clusterSecret={"key": "a/b"}),
        _replication(clusterSecret={"key": ""}),
        _replication(unknown=1),
    ],
    ids=["acks-case", "acks-enum", "acks-number", "acks-bool", "min-insync-zero", "min-insync-negative",
         "min-insync-zero-string", "min-insync-fraction", "min-insync-word", "min-insync-bool", "lag-zero",
         "lag-unitless", "lag-negative", "lag-space", "lag-number", "replicas-zero", "replicas-above-64",
         "secret-in-values", "secret-in-replication", "create-string", "existing-secret-name", "key-slash",
         "key-empty", "typo-key"],
)
def test_schema_refuses_bad_replication_values(values):
    """Wrong enums, zero or fractional counts, unitless or zero durations, a replica count the
    binary refuses (1..=64), the secret itself as a value, and unknown keys all fail the install
    before any pod starts, with a message naming the key."""
    with pytest.raises(helm.HelmValuesError) as refused:
        render(values)
    message = str(refused.value)
    replication = values["node"].get("replication")
    leaf = next(iter(replication or values["node"]))
    path = f"/node/replication/{leaf}" if replication else f"/node/{leaf}"
    assert f"at '{path}" in message or f"properties '{leaf}' not allowed" in message, message


def _secret_value(objects: list[dict], name: str = SECRET, key: str = "cluster-secret") -> str:
    return base64.b64decode(find(objects, "Secret", name)["data"][key]).decode()


def test_cluster_secret_generated_by_default():
    """By default the chart creates one Secret holding 32 random letters and digits, which the
    node reads through a secretKeyRef; the value appears nowhere else, and each install draws a
    new one (so it is random, not a constant shipped in the chart)."""
    manifests = render(None)
    objects = parse(manifests)
    secret = find(objects, "Secret", SECRET)
    _validate(secret)
    assert secret["type"] == "Opaque"
    assert selects({"app.kubernetes.io/instance": RELEASE}, secret["metadata"]["labels"])
    value = _secret_value(objects)
    assert re.fullmatch(r"[A-Za-z0-9]{32}", value), value
    env = env_of(_node(objects))["SIMPLELOGGERS_CLUSTER_SECRET"]
    assert env == {"name": "SIMPLELOGGERS_CLUSTER_SECRET",
                   "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "cluster-secret"}}}
    others = "".join(text for template, text in manifests.items() if not template.endswith("node-cluster-secret.yaml"))
    assert value not in others and secret["data"]["cluster-secret"] not in others
    assert _secret_value(parse(render(None))) != value


def test_cluster_secret_key_is_configurable():
    """A custom key names both the Secret's data entry and the node's secretKeyRef."""
    objects = parse(render(_replication(clusterSecret={"key": "bearer"})))
    assert list(find(objects, "Secret", SECRET)["data"]) == ["bearer"]
    assert env_of(_node(objects))["SIMPLELOGGERS_CLUSTER_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": SECRET, "key": "bearer"}


@pytest.mark.parametrize("create", [True, False])
def test_existing_secret_is_used_and_none_created(create):
    """existingSecret names the Secret the node reads, whatever `create` says; the chart then
    creates none."""
    values = _replication(clusterSecret={"create": create, "existingSecret": "ops-cluster-secret", "key": "token"})
    objects = parse(render(values))
    assert SECRET not in {s["metadata"]["name"] for s in of_kind(objects, "Secret")}
    ref = env_of(_node(objects))["SIMPLELOGGERS_CLUSTER_SECRET"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "ops-cluster-secret", "key": "token"}
    _validate(node_sts(objects))


def test_no_secret_when_neither_created_nor_named():
    """create: false without existingSecret (allowed explicitly, as test_access checks): no
    Secret and no variable (the endpoint is open)."""
    objects = parse(render(_replication(clusterSecret={"create": False, "allowNone": True})))
    assert SECRET not in {s["metadata"]["name"] for s in of_kind(objects, "Secret")}
    assert "SIMPLELOGGERS_CLUSTER_SECRET" not in env_of(_node(objects))
    _validate(node_sts(objects))


def _chart_whose_cluster_holds(tmp_path: Path, data: dict[str, str] | None) -> Path:
    """A copy of the chart whose `lookup` answers as a cluster would that holds the Secret
    `SECRET` in the release namespace with `data` (None: no such Secret), and nothing else: the
    Go SDK renders offline, where `lookup` always finds nothing."""
    chart = tmp_path / "simpleloggers"
    shutil.copytree(CHART, chart)
    helpers = chart / "templates" / "_helpers.tpl"
    text = helpers.read_text()
    call = 'lookup "v1" "Secret" .namespace .name'
    assert text.count(call) == 1, "the chart looks the cluster secret up in one place"
    entries = " ".join(f'"{k}" "{v}"' for k, v in (data or {}).items())
    held = f'(dict "data" (dict {entries}))' if data is not None else "(dict)"
    fake = f'(ternary {held} (dict) (and (eq .namespace "{NAMESPACE}") (eq .name "{SECRET}")))'
    helpers.write_text(text.replace(call, fake))
    return chart


def _upgrade(chart: Path, values: dict | None = None) -> list[dict]:
    with helm.Chart.load(chart) as loaded:
        return parse(loaded.render(values=values, name=RELEASE, namespace=NAMESPACE, revision=2, is_upgrade=True))


def test_cluster_secret_kept_across_upgrades(tmp_path):
    """An upgrade re-renders the value the cluster's Secret already holds, byte for byte, so no
    restarted pod gets a secret its peers do not share."""
    held = base64.b64encode(b"k" * 32).decode()
    chart = _chart_whose_cluster_holds(tmp_path, {"cluster-secret": held})
    for _ in range(2):
        assert find(_upgrade(chart), "Secret", SECRET)["data"] == {"cluster-secret": held}


def test_cluster_secret_generated_when_the_held_secret_lacks_the_key(tmp_path):
    """A Secret without the configured key (e.g. the key was renamed) gets a new random value
    under the new key rather than an empty one."""
    chart = _chart_whose_cluster_holds(tmp_path, {"old-key": base64.b64encode(b"x" * 32).decode()})
    objects = _upgrade(chart, _replication(clusterSecret={"key": "new-key"}))
    assert re.fullmatch(r"[A-Za-z0-9]{32}", _secret_value(objects, key="new-key"))
    first_install = parse(render_as(None, RELEASE, _chart_whose_cluster_holds(tmp_path / "empty", None)))
    assert re.fullmatch(r"[A-Za-z0-9]{32}", _secret_value(first_install))


def test_replication_endpoint_reachable_pod_to_pod(value_set, objects_of):
    """The internal endpoint has a listener of its own (--replication-listen on
    node.replicationPort, never the API port); the node publishes POD_IP (downward API) with
    that port in its leader record, as no advertise address is set and it listens on every
    interface. The headless peers Service publishes not-Ready pods (followers) on both ports and
    is the StatefulSet's serviceName (per-pod DNS), and the NetworkPolicies let node pods reach
    each other on the replication port."""
    objects = objects_of(value_set)
    node = _node(objects)
    env = env_of(node)
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert "SIMPLELOGGERS_ADVERTISE_ADDR" not in env
    host, port = env["SIMPLELOGGERS_LISTEN"]["value"].rsplit(":", 1)
    repl_host, repl_port = env["SIMPLELOGGERS_REPLICATION_LISTEN"]["value"].rsplit(":", 1)
    assert host == repl_host == "0.0.0.0" and repl_port != port
    assert {p["name"]: p["containerPort"] for p in node["ports"]} == {
        "http": int(port), "replication": int(repl_port)}
    peers = find(objects, "Service", f"{FULLNAME}-peers")
    assert peers["spec"]["clusterIP"] == "None" and peers["spec"]["publishNotReadyAddresses"] is True
    assert [(p["port"], p["targetPort"]) for p in peers["spec"]["ports"]] == [
        (int(port), "http"), (int(repl_port), "replication")]
    assert selects(peers["spec"]["selector"], node_sts(objects)["spec"]["template"]["metadata"]["labels"])
    assert node_sts(objects)["spec"]["serviceName"] == peers["metadata"]["name"]
    policies = of_kind(objects, "NetworkPolicy")
    node = Pod(node_sts(objects)["spec"]["template"]["metadata"]["labels"], NAMESPACE)
    assert allows(policies, node, node, int(repl_port)), "the nodes must reach each other's replication port"


def test_every_replication_value_at_once_validates():
    """All replication values set together render each variable once and the StatefulSet and
    Secret validate against the Kubernetes schema."""
    values = {"node": {"replicas": 5, "replication": {
        "acks": "leader", "minInsync": 3, "replicaLagMax": "750ms", "clusterSecret": {"key": "k"}}}}
    objects = parse(render(values))
    env = _node(objects)["env"]
    names = [e["name"] for e in env]
    expected = {"SIMPLELOGGERS_REPLICAS": "5", "SIMPLELOGGERS_ACKS": "leader", "SIMPLELOGGERS_MIN_INSYNC": "3",
                "SIMPLELOGGERS_REPLICA_LAG_MAX": "750ms"}
    for name, value in expected.items():
        assert names.count(name) == 1, name
        assert env_of({"env": env})[name]["value"] == value
    assert names.count("SIMPLELOGGERS_CLUSTER_SECRET") == 1
    _validate(node_sts(objects))
    _validate(find(objects, "Secret", SECRET))
