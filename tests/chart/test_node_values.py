"""The node values that become settings of the binary: each value in the chart README's Node values
table reaches the variable the table names, the values left to the binary's default set nothing
while empty, values.schema.json refuses what the binary would refuse, and every SIMPLELOGGERS_*
variable the chart sets is one that the subcommand its container runs declares in src/ (so a
renamed or removed flag cannot leave a stale variable in the chart)."""

from __future__ import annotations

import re
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import CHART, ROOT, VALUE_SETS, container, env_of, node_sts, parse, pod_specs, render

# One sample per row of the README table: (value, what the variable must then say). Each differs
# from what the defaults render, so every case can fail.
SAMPLES: dict[str, tuple[Any, str]] = {
    "node.replicas": (5, "5"),
    "node.port": (4000, "0.0.0.0:4000"),
    "node.replicationPort": (4001, "0.0.0.0:4001"),
    "node.dataDir": ("/data/log", "/data/log"),
    "node.durability": ("interval:50", "interval:50"),
    "node.maxMessageBytes": (4194304, "4194304"),
    "node.followerWrites": ("forward", "forward"),
    "node.serviceName": ("logs", "logs"),
    "node.electionKey": ("service/logs/leader", "service/logs/leader"),
    "node.election.sessionTTL": ("15s", "15s"),
    "node.election.lockDelay": ("3s", "3s"),
    "node.election.renewInterval": ("250ms", "250ms"),
    "node.election.checkInterval": ("2s", "2s"),
    "node.logFormat": ("text", "text"),
    "node.logLevel": ("debug,hyper=info", "debug,hyper=info"),
    "node.leaderDrivenRollout": (False, "off"),
    "node.replication.acks": ("leader", "leader"),
    "node.replication.minInsync": (2, "2"),
    "node.replication.replicaLagMax": ("5s", "5s"),
    "node.log.segmentBytes": ("16MiB", "16MiB"),
    "node.retention.bytes": ("10Gi", "10Gi"),
    "node.retention.age": ("7d", "7d"),
    "node.retention.interval": ("30s", "30s"),
    "node.producerIdExpiry": ("36h", "36h"),
    "node.http.headerTimeout": ("5s", "5s"),
    "node.http.idleTimeout": ("2m", "2m"),
    "node.http.bodyTimeout": ("90s", "90s"),
    "node.http.maxConnections": (4096, "4096"),
    "node.http.maxConcurrentRequests": (512, "512"),
}

# The values the chart leaves to the binary while empty: value -> variable.
OPTIONAL: dict[str, str] = {
    "node.replication.acks": "SIMPLELOGGERS_ACKS",
    "node.replication.minInsync": "SIMPLELOGGERS_MIN_INSYNC",
    "node.replication.replicaLagMax": "SIMPLELOGGERS_REPLICA_LAG_MAX",
    "node.log.segmentBytes": "SIMPLELOGGERS_SEGMENT_BYTES",
    "node.retention.bytes": "SIMPLELOGGERS_RETENTION_BYTES",
    "node.retention.age": "SIMPLELOGGERS_RETENTION_AGE",
    "node.retention.interval": "SIMPLELOGGERS_RETENTION_INTERVAL",
    "node.producerIdExpiry": "SIMPLELOGGERS_PRODUCER_ID_EXPIRY",
    "node.http.headerTimeout": "SIMPLELOGGERS_HTTP_HEADER_TIMEOUT",
    "node.http.idleTimeout": "SIMPLELOGGERS_HTTP_IDLE_TIMEOUT",
    "node.http.bodyTimeout": "SIMPLELOGGERS_HTTP_BODY_TIMEOUT",
    "node.http.maxConnections": "SIMPLELOGGERS_HTTP_MAX_CONNECTIONS",
    "node.http.maxConcurrentRequests": "SIMPLELOGGERS_HTTP_MAX_CONCURRENT_REQUESTS",
}


def _nested(path: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for key in reversed(path.split(".")):
        out = {key: out}
    return out


def _as_file(values: dict[str, Any]) -> dict[str, Any]:
    """Values as Helm reads them from a `-f` file (numbers become float64, as in Helm)."""
    return helm.values_from_yaml(yaml.safe_dump(values))


def _node_env(values: dict[str, Any] | None) -> dict[str, Any]:
    objects = parse(render(values))
    return env_of(container(node_sts(objects)["spec"]["template"]["spec"], "node"))


def _readme_rows() -> dict[str, str]:
    """The chart README's Node values table: value -> variable (the first name in its cell)."""
    text = (CHART / "README.md").read_text()
    section = text.split("## Node values", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(node\.[\w.]+)` \| `([A-Z][A-Z0-9_]+)`", section, re.M)
    assert rows, "no rows found in the README's Node values table"
    assert len(rows) == len(dict(rows)), "a value is listed twice"
    return dict(rows)


def test_readme_table_lists_every_sampled_value():
    """The README table and this file's samples name the same values, and the table names the
    same variables for the optional ones as the template sets."""
    rows = _readme_rows()
    assert set(rows) == set(SAMPLES)
    assert {k: rows[k] for k in OPTIONAL} == OPTIONAL


@pytest.mark.parametrize("path", list(SAMPLES))
def test_each_value_reaches_its_variable(path):
    """Set through a values file, each value shows up in the variable the README names, which the
    defaults do not already render the same way."""
    variable = _readme_rows()[path]
    sample, expected = SAMPLES[path]
    default = _node_env(None).get(variable, {}).get("value")
    assert default != expected, f"{path}: the sample renders what the defaults render"
    assert _node_env(_as_file(_nested(path, sample)))[variable]["value"] == expected


def test_optional_values_set_nothing_by_default(value_set, objects_of):
    """With the defaults and every value set, the chart sets none of the optional variables: the
    binary's own defaults apply."""
    env = env_of(container(node_sts(objects_of(value_set))["spec"]["template"]["spec"], "node"))
    assert set(env) & set(OPTIONAL.values()) == set()


def test_values_yaml_leaves_the_optional_values_empty():
    """The chart's values.yaml has each optional value, empty: "" or null, no default restated."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for path in OPTIONAL:
        node: Any = values
        for key in path.split("."):
            assert isinstance(node, dict) and key in node, f"{path} missing from values.yaml"
            node = node[key]
        assert node in ("", None), f"{path} = {node!r}"


@pytest.mark.parametrize("empty", ["", None], ids=["empty-string", "null"])
def test_explicitly_empty_values_set_nothing(empty):
    """Setting every optional value to "" or to null (which Helm drops, as `--set x=null` does)
    still sets none of the variables."""
    values: dict[str, Any] = {}
    for path in OPTIONAL:
        _merge(values, _nested(path, empty))
    env = _node_env(_as_file(values))
    assert set(env) & set(OPTIONAL.values()) == set()


def _merge(into: dict[str, Any], other: dict[str, Any]) -> None:
    for k, v in other.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v


def test_every_optional_value_at_once():
    """All optional values set together: each variable exactly once, and the StatefulSet still
    validates against the Kubernetes schema."""
    values: dict[str, Any] = {}
    for path in OPTIONAL:
        _merge(values, _nested(path, SAMPLES[path][0]))
    objects = parse(render(_as_file(values)))
    sts = node_sts(objects)
    env = container(sts["spec"]["template"]["spec"], "node")["env"]
    names = [e["name"] for e in env]
    for path, variable in OPTIONAL.items():
        assert names.count(variable) == 1, variable
        assert env_of({"env": env})[variable]["value"] == SAMPLES[path][1]
    kubernetes_validate.validate({k: v for k, v in sts.items() if not k.startswith("_")}, "1.34.0", strict=True)


@pytest.mark.parametrize(
    "path, value, expected",
    [
        ("node.log.segmentBytes", 67108864, "67108864"),
        ("node.retention.bytes", 10737418240, "10737418240"),
        ("node.retention.bytes", "1073741824", "1073741824"),
    ],
)
def test_sizes_given_as_numbers_print_as_integers(path, value, expected):
    """A size written as a YAML number (a float64 to Helm) reaches the binary as an integer, never
    as 1.073741824e+10, which the binary would refuse."""
    assert _node_env(_as_file(_nested(path, value)))[OPTIONAL[path]]["value"] == expected
    assert _node_env(_nested(path, value))[OPTIONAL[path]]["value"] == expected


SIZE_OK = ["1", "1073741824", 1073741824, "64MiB", "10Gi", "10GiB", "500MB", "500M", "1KiB", "1kB", "4k", "1TiB", "100B"]
SIZE_BAD = ["0", 0, -1, "-1", "ten", "10 parsecs", "10GiBs", "64 MiB", "0Mi", "1.5", 1.5, True, "10gigs"]
DURATION_OK = ["500ms", "36h", "7d", "1h30m", "2w", "10s", "250us", "1µs"]
DURATION_BAD = ["0s", "0", "10", 10, "7 days", "1.5h", "-5s", "forever", "1y", "5sec", True]
COUNT_OK = [1, 256, 100000, "512"]
COUNT_BAD = [0, -1, "0", "-1", 1.5, "1.5", "many", "10k", True]


def _cases(paths: list[str], samples: list[Any]) -> list[Any]:
    return [pytest.param(p, s, id=f"{p}={s!r}") for p in paths for s in samples]


SIZES = ["node.log.segmentBytes", "node.retention.bytes"]
DURATIONS = ["node.replication.replicaLagMax", "node.retention.age", "node.retention.interval",
             "node.producerIdExpiry",
             "node.http.headerTimeout", "node.http.idleTimeout", "node.http.bodyTimeout"]
COUNTS = ["node.http.maxConnections", "node.http.maxConcurrentRequests"]


@pytest.mark.parametrize(
    "path, value",
    _cases(SIZES, SIZE_OK) + _cases(DURATIONS, DURATION_OK) + _cases(COUNTS, COUNT_OK),
)
def test_schema_accepts_what_the_binary_takes(path, value):
    """Sizes, durations and counts in the forms README.md documents pass the schema."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(_as_file(_nested(path, value)))


@pytest.mark.parametrize(
    "path, value",
    _cases(SIZES, SIZE_BAD) + _cases(DURATIONS, DURATION_BAD) + _cases(COUNTS, COUNT_BAD)
    + [pytest.param("node.http.maxConnection", 10, id="typo-key"),
       pytest.param("node.retention.size", "1Gi", id="unknown-retention-key")],
)
def test_schema_rejects_bad_values(path, value):
    """Zero, negative, unitless durations, unknown units, wrong types and unknown keys make the
    install fail before any pod starts (zero is refused by the binary too)."""
    with pytest.raises(helm.HelmValuesError):
        render(_as_file(_nested(path, value)))


# What src/ declares, read from the source so that the chart cannot ship a name no flag reads.
STRUCT = re.compile(r"^(?:pub(?:\([^)]*\))? )?struct (\w+) \{\n(.*?)^\}", re.M | re.S)
ENV_ATTR = re.compile(r'\benv = "(SIMPLELOGGERS_\w+)"')
# A flattened field's type, path prefixes (`auth::AccessArgs`) dropped.
FLATTEN = re.compile(r"#\[(?:command|clap)\(flatten[^\]]*\)\]\s*(?:pub(?:\([^)]*\))? )?\w+: (?:Box<)?(?:\w+::)*(\w+)")
# The Kubernetes integration reads its variables with an env lookup, not through clap.
K8S_LOOKUP = re.compile(r'\bget\("(SIMPLELOGGERS_\w+)"\)')
# The subcommands the chart's containers run: args[0] -> (file, the clap struct of its flags).
SUBCOMMANDS = {
    "node": ("src/node/mod.rs", "NodeConfig"),
    "producer": ("src/producer/mod.rs", "Config"),
}


def _structs() -> dict[tuple[str, str], tuple[set[str], list[str]]]:
    """Every top-level struct in src/: (file, name) -> (its env names, the types it flattens).
    Structs inside `mod tests` are indented, so the pattern skips them."""
    out = {}
    for path in sorted((ROOT / "src").rglob("*.rs")):
        rel = str(path.relative_to(ROOT))
        for m in STRUCT.finditer(path.read_text()):
            out[(rel, m.group(1))] = (set(ENV_ATTR.findall(m.group(2))), FLATTEN.findall(m.group(2)))
    return out


def declared(subcommand: str) -> set[str]:
    """The SIMPLELOGGERS_* variables `simpleloggers <subcommand>` reads: its flags and those it
    flattens, the global flags of the Cli struct, and for the node the Kubernetes lookups."""
    structs = _structs()

    def resolve(name: str, near: str) -> tuple[str, str]:
        found = [k for k in structs if k[1] == name]
        same_file = [k for k in found if k[0] == near]
        assert len(same_file) == 1 or len(found) == 1, f"cannot tell which struct {name} is: {found}"
        return same_file[0] if len(same_file) == 1 else found[0]

    def walk(key: tuple[str, str], seen: set) -> set[str]:
        if key in seen:
            return set()
        seen.add(key)
        envs, flattened = structs[key]
        return envs.union(*(walk(resolve(t, key[0]), seen) for t in flattened))

    names = walk(SUBCOMMANDS[subcommand], set()) | structs[("src/main.rs", "Cli")][0]
    if subcommand == "node":
        names |= set(K8S_LOOKUP.findall((ROOT / "src/k8s/mod.rs").read_text().split("#[cfg(test)]")[0]))
    return names


def test_the_source_parser_finds_the_known_flags():
    """The parser of src/ sees flags of each kind: the node's own, flattened ones (two levels
    deep for the Consul timeout, through a module path for the API tokens), the HTTP limits, the
    global log format and the Kubernetes lookups; the producer's exclude the node's. Otherwise
    the check below would prove nothing."""
    node = declared("node")
    assert {"SIMPLELOGGERS_SEGMENT_BYTES", "SIMPLELOGGERS_SESSION_TTL", "SIMPLELOGGERS_CONSUL_TIMEOUT",
            "SIMPLELOGGERS_HTTP_MAX_CONNECTIONS", "SIMPLELOGGERS_LOG_FORMAT",
            "SIMPLELOGGERS_K8S_ROLLOUT", "SIMPLELOGGERS_API_TOKEN", "SIMPLELOGGERS_READ_TOKEN"} <= node
    producer = declared("producer")
    assert {"SIMPLELOGGERS_TARGET", "SIMPLELOGGERS_RATE", "SIMPLELOGGERS_ELECTION_KEY",
            "SIMPLELOGGERS_LOG_FORMAT", "SIMPLELOGGERS_API_TOKEN"} <= producer
    assert "SIMPLELOGGERS_SEGMENT_BYTES" not in producer and "SIMPLELOGGERS_RATE" not in node


def _all_optional_set() -> dict[str, Any]:
    values: dict[str, Any] = {}
    for path in OPTIONAL:
        _merge(values, _nested(path, SAMPLES[path][0]))
    return _as_file(values)


@pytest.mark.parametrize("values_name", ["value-sets", "every-optional-value"])
def test_every_variable_the_chart_sets_is_declared(values_name, objects_of):
    """Every SIMPLELOGGERS_* variable of every container (extraEnv aside, none is set there) is
    one the subcommand it runs reads, across every value set and with every optional value set."""
    renders = ([objects_of(n) for n in VALUE_SETS] if values_name == "value-sets"
               else [parse(render(_all_optional_set()))])
    checked = 0
    for objects in renders:
        for name, _, spec in pod_specs(objects):
            for c in spec.get("containers", []) + spec.get("initContainers", []):
                ours = [e["name"] for e in c.get("env", []) if e["name"].startswith("SIMPLELOGGERS_")]
                if not ours:
                    continue
                subcommand = c.get("args", [None])[0]
                assert subcommand in SUBCOMMANDS, f"{name}/{c['name']} runs {subcommand!r}"
                stale = set(ours) - declared(subcommand)
                assert not stale, f"{name}/{c['name']}: `simpleloggers {subcommand}` reads no {sorted(stale)}"
                checked += len(ours)
    assert checked >= 20
