"""Checks that need no rendering: the values schema rejects bad values (rendering fails), every
value is commented, the shell scripts pass shellcheck, and the image recipe keeps its promises."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import helm_python as helm
import pytest
import yaml

from conftest import CHART, ROOT, parse, pod_specs, render, render_as


@pytest.mark.parametrize(
    "values",
    [
        {"node": {"replicas": "three"}},
        {"node": {"followerWrites": "drop"}},
        {"node": {"election": {"sessionTTL": "ten seconds"}}},
        {"node": {"durability": "sometimes"}},
        {"consul": {"server": {"replicas": 0}}},
        {"producer": {"rate": -1}},
        {"node": {"replica": 3}},
    ],
    ids=["replicas-string", "follower-writes-enum", "duration", "durability", "zero-servers", "negative-rate", "typo-key"],
)
def test_schema_rejects_bad_values(values):
    """values.schema.json makes rendering fail on a wrong type, enum, format or unknown key."""
    with pytest.raises(helm.HelmValuesError):
        render(values)


def test_schema_accepts_every_value_file():
    """The defaults and every value set pass the schema (the render tests use them too)."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(None)
        for path in [CHART / "values-kind.yaml", *sorted((ROOT / "tests/chart/values").glob("*.yaml"))]:
            chart.validate_schema(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize(
    "values, message",
    [
        ({"consul": {"server": {"enabled": False}, "agent": {"enabled": False}}}, "consul.external.address"),
        ({"consul": {"server": {"enabled": False}}}, "consul.external.retryJoin"),
    ],
)
def test_contradictory_consul_values_fail(values, message):
    """Turning the in-chart servers off without saying where Consul is fails with a clear message."""
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(values)


def test_every_value_is_commented():
    """vault-helm habit: every key in values.yaml has a comment above it (resource quantities
    under resources/requests/limits excepted)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    uncommented = []
    parents: list[tuple[int, str]] = []
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][\w.-]*):", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        parents = [(d, k) for d, k in parents if d < indent]
        parent = parents[-1][1] if parents else ""
        parents.append((indent, key))
        if parent in ("resources", "requests", "limits"):
            continue
        prev = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        if not prev.startswith("#") and not line.split(":", 1)[1].strip().startswith("#"):
            uncommented.append(f"{i + 1}: {line.strip()}")
    assert uncommented == []


def test_templates_named_component_kind():
    """One object per template, named <component>-<kind>.yaml; helpers are namespaced."""
    for path in (CHART / "templates").rglob("*.yaml"):
        assert re.fullmatch(r"(node|producer|consul-server)(-[a-z]+)*-[a-z]+\.yaml", path.name), path.name
    helpers = (CHART / "templates/_helpers.tpl").read_text()
    defines = re.findall(r'define "([^"]+)"', helpers)
    assert defines and all(d.startswith("simpleloggers.") for d in defines)
    # Each define is documented by the comment block right above it.
    assert len(re.findall(r'\*/\}\}\n\{\{- define "', helpers)) == len(defines)


def _scripts():
    return sorted(ROOT.glob("deploy/*.sh"))


def test_shell_scripts_pass_shellcheck():
    """deploy/*.sh (the sourced kind-common.sh included) pass shellcheck, following `source`."""
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is required in CI (make chart-test installs it with apt-get)")
        pytest.skip("shellcheck not installed (make chart-test installs it when run as root)")
    scripts = [str(p.relative_to(ROOT)) for p in _scripts()]
    assert len(scripts) >= 4
    result = subprocess.run(["shellcheck", "-x", *scripts], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shell_scripts_are_strict_and_executable():
    """Every script runs with `set -euo pipefail` and is executable (kind-common.sh is sourced,
    so neither); bash parses each one."""
    for path in _scripts():
        text = path.read_text()
        assert text.startswith("#!/usr/bin/env bash\n"), path
        if path.name != "kind-common.sh":
            assert os.access(path, os.X_OK), path
            assert "set -euo pipefail" in text, path
        subprocess.run(["bash", "-n", str(path)], check=True)


def test_chart_works_as_a_subchart(tmp_path):
    """A parent chart can carry this chart in charts/ and set global keys of its own (Helm copies
    the parent's globals into every subchart, so the schema must allow keys it does not know);
    the shared global.imagePullSecrets reaches the subchart's pods."""
    parent = tmp_path / "platform"
    (parent / "templates").mkdir(parents=True)
    shutil.copytree(CHART, parent / "charts" / "simpleloggers")
    version = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
    (parent / "Chart.yaml").write_text(
        "apiVersion: v2\nname: platform\nversion: 1.0.0\n"
        f"dependencies:\n  - name: simpleloggers\n    version: {version}\n"
    )
    (parent / "values.yaml").write_text(
        "global:\n  environment: staging\n  region: eu-west-1\n  imagePullSecrets:\n    - name: regcred\n"
    )
    manifests = render_as(None, "platform", parent)
    objects = parse(manifests)
    pods = pod_specs(objects)
    assert len(pods) >= 4
    for name, _, spec in pods:
        assert spec.get("imagePullSecrets") == [{"name": "regcred"}], name
