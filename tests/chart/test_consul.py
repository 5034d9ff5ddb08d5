"""The Consul the chart runs, checked against Consul's own rules: every flag passed to
`consul agent` is one Consul defines, every HCL or JSON configuration fragment parses, the
image's entrypoint (dumb-init) is kept, each Consul container has a writable /tmp, joins retry
quickly, the agent's startup probe passes only for this pod's own catalog entry (run here against
recorded `consul catalog nodes` output), and agents joining an external Consul get their ACL
token in their configuration (the init script run here, its output parsed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest

from conftest import FULLNAME, NAMESPACE, VALUE_SETS, env_of, find, pod_specs

# `consul agent` command-line flags, from Consul's agent CLI reference (developer.hashicorp.com,
# "Consul agent command-line flags") and the flag set in Consul's agent/config/flags.go.
CONSUL_AGENT_FLAGS = {
    "advertise", "advertise-wan", "allow-write-http-from", "alt-domain", "auto-reload-config", "bind",
    "bootstrap", "bootstrap-expect", "check_output_max_size", "client", "config-dir", "config-file",
    "config-format", "data-dir", "datacenter", "default-query-time", "dev", "disable-host-node-id",
    "disable-keyring-file", "dns-port", "domain", "enable-local-script-checks", "enable-script-checks",
    "encrypt", "grpc-port", "grpc-tls-port", "hcl", "http-port", "https-port", "join", "join-wan",
    "log-file", "log-json", "log-level", "log-rotate-bytes", "log-rotate-duration", "log-rotate-max-files",
    "max-query-time", "node", "node-id", "node-meta", "non-voting-server", "pid-file", "primary-gateway",
    "protocol", "raft-protocol", "read-replica", "recursor", "rejoin", "retry-interval", "retry-interval-wan",
    "retry-join", "retry-join-wan", "retry-max", "retry-max-wan", "segment", "serf-lan-allowed-cidrs",
    "serf-lan-bind", "serf-lan-port", "serf-wan-allowed-cidrs", "serf-wan-bind", "serf-wan-port", "server",
    "server-port", "syslog", "ui", "ui-content-path", "ui-dir",
}
# Flags that take no value (Go's flag package also accepts -flag=true).
BOOLEAN_FLAGS = {"bootstrap", "dev", "disable-host-node-id", "disable-keyring-file", "enable-local-script-checks",
                 "enable-script-checks", "log-json", "non-voting-server", "read-replica", "rejoin", "server", "syslog",
                 "ui", "auto-reload-config"}
DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")
DURATION_FLAGS = {"retry-interval", "retry-interval-wan", "default-query-time", "max-query-time", "log-rotate-duration"}
# Top-level keys of Consul's agent configuration the chart's fragments may set.
CONSUL_CONFIG_KEYS = {"leave_on_terminate", "acl", "skip_leave_on_interrupt", "ports", "telemetry", "retry_join", "tls",
                      "auto_encrypt", "addresses"}
ACL_KEYS = {"enabled", "default_policy", "down_policy", "tokens", "enable_token_persistence"}
ACL_TOKEN_KEYS = {"agent", "default", "agent_recovery", "replication", "config_file_service_registration", "initial_management"}
# The image runs as the consul user, uid 100 (hashicorp/consul's Dockerfile).
CONSUL_IMAGE = "hashicorp/consul"


def _consul_containers(spec):
    for c in spec.get("initContainers", []) + spec["containers"]:
        if c["image"].startswith(CONSUL_IMAGE + ":"):
            yield c


def _agents(objects):
    """(workload, pod spec, container) for every container that runs `consul agent`."""
    for name, _, spec in pod_specs(objects):
        for c in _consul_containers(spec):
            if (c.get("command", []) + c.get("args", []))[:2] == ["consul", "agent"] or c.get("args", [])[:1] == ["agent"]:
                yield name, spec, c


def _flags(args):
    """The -name[=value] flags after `consul agent`."""
    rest = args[args.index("agent") + 1 :]
    out = []
    for a in rest:
        assert a.startswith("-") and not a.startswith("--"), f"not a single-dash flag: {a!r}"
        name, eq, value = a[1:].partition("=")
        out.append((name, value if eq else None))
    return out


def test_every_consul_agent_flag_is_a_consul_flag(value_set, objects_of):
    """Every -flag the chart passes to `consul agent` is one Consul accepts, in the form it
    accepts (booleans bare, durations as Go durations, a value after `=` otherwise)."""
    agents = list(_agents(objects_of(value_set)))
    assert agents or value_set in ("agentless", "external-consul")
    for where, _, c in agents:
        for name, value in _flags(c["args"]):
            assert name in CONSUL_AGENT_FLAGS, f"{where}: -{name} is not a `consul agent` flag"
            if name in BOOLEAN_FLAGS:
                assert value in (None, "true", "false"), f"{where}: -{name}={value}"
            else:
                assert value, f"{where}: -{name} needs a value"
            if name in DURATION_FLAGS:
                assert DURATION.match(value), f"{where}: -{name}={value} is not a duration"


def test_config_fragments_parse(value_set, objects_of):
    """Every -hcl fragment parses as HCL and sets only known agent configuration keys; every
    -config-file/-config-dir is on a volume the container mounts."""
    for where, spec, c in _agents(objects_of(value_set)):
        mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
        for name, value in _flags(c["args"]):
            if name == "hcl":
                parsed = hcl2.loads(value)
                assert set(parsed) <= CONSUL_CONFIG_KEYS, f"{where}: {value!r}"
            if name in ("config-file", "config-dir", "data-dir"):
                assert any(value == m or value.startswith(m.rstrip("/") + "/") for m in mounts), f"{where}: -{name}={value}"


def test_consul_keeps_the_image_entrypoint(value_set, objects_of):
    """No Consul container replaces the image's entrypoint with `command: [consul]`: its
    dumb-init (PID 1) reaps the exec probes' children. As a non-root user the entrypoint must
    neither chown nor su-exec, which CONSUL_DISABLE_PERM_MGMT switches off."""
    for name, _, spec in pod_specs(objects_of(value_set)):
        for c in _consul_containers(spec):
            command = c.get("command", [])
            assert "consul" not in [Path(w).name for w in command], f"{name}:{c['name']} bypasses the entrypoint"
            if command:
                assert c.get("restartPolicy") != "Always", "a long-running Consul container must keep the entrypoint"
                continue
            assert c["args"][:2] == ["consul", "agent"], f"{name}:{c['name']}"
            assert env_of(c)["CONSUL_DISABLE_PERM_MGMT"]["value"] == "true", f"{name}:{c['name']}"
            uid = c.get("securityContext", {}).get("runAsUser", spec.get("securityContext", {}).get("runAsUser"))
            assert uid not in (None, 0)


def test_long_running_containers_have_a_writable_tmp(value_set, objects_of):
    """Every container of a workload (init steps that exit excepted) whose root filesystem is
    read-only mounts an emptyDir at /tmp: `consul snapshot save/restore` and friends write there."""
    for name, _, spec in pod_specs(objects_of(value_set)):
        if name.startswith("Pod/"):
            continue
        empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for c in spec.get("initContainers", []) + spec["containers"]:
            one_shot = c in spec.get("initContainers", []) and c.get("restartPolicy") != "Always"
            if one_shot or not c["securityContext"].get("readOnlyRootFilesystem"):
                continue
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in empty_dirs and not tmp[0].get("readOnly"), f"{name}:{c['name']}"


def test_joins_retry_quickly(value_set, objects_of):
    """Every agent and server that retry-joins retries within a few seconds, not Consul's
    default 30 s, which would be added to every cold start."""
    for where, _, c in _agents(objects_of(value_set)):
        flags = dict(_flags(c["args"]))
        if "retry-join" not in flags:
            continue
        interval = flags.get("retry-interval", "30s")
        seconds = float(re.fullmatch(r"([0-9.]+)(ms|s)", interval).group(1)) / (1000 if interval.endswith("ms") else 1)
        assert seconds <= 5, f"{where}: -retry-interval={interval}"


# `consul catalog nodes` (columnize, two spaces between columns; ID is the first 8 characters).
CATALOG = """Node                                ID        Address      DC
demo-simpleloggers-0                {id0}  {ip0}  dc1
demo-simpleloggers-1                7c2e91d0  10.244.3.9   dc1
demo-simpleloggers-consul-server-0  9b0e4d11  10.244.2.4   dc1
"""


def _startup_probe(objects):
    (agent,) = [c for c in find(objects, "StatefulSet", FULLNAME)["spec"]["template"]["spec"]["initContainers"]
                if c["name"] == "consul-agent"]
    command = agent["startupProbe"]["exec"]["command"]
    assert command[:2] == ["/bin/sh", "-ec"]
    return command[2]


def _run_probe(tmp_path: Path, script: str, catalog: str | None, pod_ip: str) -> int:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    consul = bin_dir / "consul"
    if catalog is None:  # the agent is not up yet
        consul.write_text("#!/bin/sh\necho 'Error listing nodes: Get \"http://127.0.0.1:8500/v1/catalog/nodes\": "
                          "dial tcp 127.0.0.1:8500: connect: connection refused' >&2\nexit 1\n")
    else:
        (tmp_path / "catalog.txt").write_text(catalog)
        consul.write_text(f"#!/bin/sh\n[ \"$1 $2\" = 'catalog nodes' ] || exit 2\ncat '{tmp_path / 'catalog.txt'}'\n")
    consul.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "POD_NAME": "demo-simpleloggers-0", "POD_IP": pod_ip}
    return subprocess.run(["/bin/sh", "-ec", script], env=env, capture_output=True).returncode


def test_agent_startup_probe_wants_this_pods_own_entry(objects_of, tmp_path):
    """The agent's startup probe passes once the catalog lists this pod's node name at this
    pod's IP, and not on a previous pod's entry of the same name (another IP) or before the
    agent answers."""
    script = _startup_probe(objects_of("default"))
    mine = CATALOG.format(id0="3f5a1c2e", ip0="10.244.1.7 ")
    previous = CATALOG.format(id0="d41b77aa", ip0="10.244.1.3 ")
    assert _run_probe(tmp_path, script, mine, "10.244.1.7") == 0
    assert _run_probe(tmp_path, script, previous, "10.244.1.7") != 0
    assert _run_probe(tmp_path, script, mine, "10.244.1.70") != 0
    assert _run_probe(tmp_path, script, None, "10.244.1.7") != 0


def test_agents_joining_an_external_consul_get_their_acl_token(objects_of, tmp_path):
    """Sidecar agents joining an external Consul with a token Secret: an init step (before the
    agent) writes acl.tokens.agent from the Secret into a JSON file on an in-memory volume the
    agent loads with -config-file; the agent itself does not read CONSUL_HTTP_TOKEN. The step is
    run here on a token file; a malformed token fails it."""
    objects = objects_of("external-sidecars")
    for name, _, spec in pod_specs(objects):
        if name.startswith("Pod/"):
            continue
        inits = spec["initContainers"]
        assert [c["name"] for c in inits] == ["consul-agent-acl", "consul-agent"], name
        acl, agent = inits
        env = {e["name"]: e["value"] for e in acl["env"]}
        config_file = env["CONFIG_FILE"]
        assert f"-config-file={config_file}" in agent["args"]
        volumes = {v["name"]: v for v in spec["volumes"]}

        def volume_at(c, path):
            (m,) = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
            return m["name"]

        shared = volume_at(acl, config_file)
        assert volume_at(agent, config_file) == shared and volumes[shared]["emptyDir"] == {"medium": "Memory"}
        secret = volumes[volume_at(acl, env["TOKEN_FILE"])]["secret"]
        assert secret["secretName"] == "consul-acl" and Path(env["TOKEN_FILE"]).name == "agent-token"

        script = acl["command"][2]
        token_file, out_file = tmp_path / "token", tmp_path / "agent-token.json"
        token = "0b8bbd1c-8c42-4a36-9c7e-2f05b0e6a3d4"
        token_file.write_text(token + "\n")
        run_env = {"PATH": os.environ["PATH"], "TOKEN_FILE": str(token_file), "CONFIG_FILE": str(out_file)}
        subprocess.run(["/bin/sh", "-ec", script], env=run_env, check=True)
        config = json.loads(out_file.read_text())
        assert config["acl"]["tokens"]["agent"] == token and config["acl"]["enabled"] is True
        assert set(config) <= CONSUL_CONFIG_KEYS and set(config["acl"]) <= ACL_KEYS
        assert set(config["acl"]["tokens"]) <= ACL_TOKEN_KEYS
        out_file.unlink()
        token_file.write_text('x", "default": "y')
        bad = subprocess.run(["/bin/sh", "-ec", script], env=run_env, capture_output=True, text=True)
        assert bad.returncode != 0 and "not a Consul ACL token" in bad.stderr and not out_file.exists()


def test_no_agent_token_step_without_a_token(value_set, objects_of):
    """The ACL step and its volumes exist only for sidecars joining an external Consul with a
    token."""
    expected = value_set == "external-sidecars"
    for name, _, spec in pod_specs(objects_of(value_set)):
        names = [c["name"] for c in spec.get("initContainers", [])]
        assert ("consul-agent-acl" in names) == (expected and not name.startswith("Pod/")), name
