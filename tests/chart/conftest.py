"""Shared fixtures for the chart tests: the chart rendered once per value set with the real Helm
engine (helm-python-sdk, Helm's Go SDK), parsed into objects, plus lookup helpers."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "simpleloggers"
VALUES_DIR = Path(__file__).resolve().parent / "values"

RELEASE = "demo"
NAMESPACE = "logs"
FULLNAME = "demo-simpleloggers"

# Every value set the chart must render and validate with: name -> values file (None: defaults).
VALUE_SETS: dict[str, Path | None] = {
    "default": None,
    "kind": CHART / "values-kind.yaml",
    "ha-consul": VALUES_DIR / "ha-consul.yaml",
    "external-consul": VALUES_DIR / "external-consul.yaml",
    "external-sidecars": VALUES_DIR / "external-sidecars.yaml",
    "agentless": VALUES_DIR / "agentless.yaml",
    "producer-off": VALUES_DIR / "producer-off.yaml",
    "five-replicas": VALUES_DIR / "five-replicas.yaml",
    "hardened": VALUES_DIR / "hardened.yaml",
    "open": VALUES_DIR / "open.yaml",
}

Obj = dict[str, Any]


def load_values(name: str) -> dict[str, Any] | None:
    """The values of one value set, parsed as Helm parses `-f` files."""
    path = VALUE_SETS[name]
    return None if path is None else helm.values_from_yaml(path.read_text())


def render(values: dict[str, Any] | None) -> dict[str, str]:
    """Renders the chart offline; raises HelmValuesError/HelmRenderError like `helm template`."""
    return render_as(values, RELEASE)


def render_as(values: dict[str, Any] | None, release: str, chart_dir: Path = CHART) -> dict[str, str]:
    """Renders a chart directory (this chart by default) as an install of `release`."""
    with helm.Chart.load(chart_dir) as chart:
        return chart.render(values=values, name=release, namespace=NAMESPACE, is_install=True)


def parse(manifests: dict[str, str]) -> list[Obj]:
    """Every object of every rendered template (NOTES.txt and empty documents left out); each
    gets a `_template` key naming the file it came from."""
    objects: list[Obj] = []
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["_template"] = template
                objects.append(doc)
    return objects


@functools.lru_cache(maxsize=None)
def _rendered(name: str) -> tuple[dict[str, str], list[Obj]]:
    manifests = render(load_values(name))
    return manifests, parse(manifests)


@pytest.fixture(scope="session", params=list(VALUE_SETS))
def value_set(request: pytest.FixtureRequest) -> str:
    """Each value set's name in turn."""
    return request.param


@pytest.fixture(scope="session")
def objects_of():
    """objects_of(name) -> the rendered objects of that value set (rendered once per session)."""
    return lambda name: _rendered(name)[1]


@pytest.fixture(scope="session")
def notes_of():
    """notes_of(name) -> the rendered NOTES.txt of that value set."""

    def notes(name: str) -> str:
        manifests = _rendered(name)[0]
        return next(v for k, v in manifests.items() if k.endswith("NOTES.txt"))

    return notes


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    """The objects of one kind."""
    return [o for o in objects if o["kind"] == kind]


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    """The one object of `kind` named `name`; fails the test when absent."""
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def node_sts(objects: list[Obj]) -> Obj:
    """The node StatefulSet."""
    return find(objects, "StatefulSet", FULLNAME)


def container(pod_spec: Obj, name: str) -> Obj:
    """A container of a pod spec by name."""
    found = [c for c in pod_spec.get("containers", []) if c["name"] == name]
    assert len(found) == 1, f"no container {name}"
    return found[0]


def env_of(c: Obj) -> dict[str, Obj]:
    """A container's env entries by name."""
    return {e["name"]: e for e in c.get("env", [])}


def pod_specs(objects: list[Obj]) -> list[tuple[str, Obj, Obj]]:
    """(kind/name, pod template metadata, pod spec) for every workload and bare Pod."""
    out = []
    for o in objects:
        if o["kind"] in ("StatefulSet", "Deployment", "DaemonSet", "Job"):
            t = o["spec"]["template"]
            out.append((f"{o['kind']}/{o['metadata']['name']}", t["metadata"], t["spec"]))
        elif o["kind"] == "Pod":
            out.append((f"Pod/{o['metadata']['name']}", o["metadata"], o["spec"]))
    return out


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether an equality selector matches a label set."""
    return all(labels.get(k) == v for k, v in selector.items())
