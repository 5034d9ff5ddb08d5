"""The in-chart Consul's closed doors: ACLs (default deny) with an initial management token and
one least-privilege token per role, all uuidv4s generated into one Secret and kept across
upgrades; a per-revision bootstrap Job whose script (run here against a fake `consul` CLI that
answers as Consul's does) creates or updates the policies and tokens and waits for a leader;
each container gets only its own token; gossip encryption with a generated 32-byte key or an
existing Secret. External Consul keeps consul.external.tokenSecret."""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from pathlib import Path

import hcl2
import helm_python as helm
import pytest

from conftest import CHART, FULLNAME, NAMESPACE, RELEASE, container, env_of, find, of_kind, parse, pod_specs, render
from test_scripts import Harness, err, out, rule

SERVER = f"{FULLNAME}-consul-server"
ACL_SECRET = f"{SERVER}-acl"
GOSSIP_SECRET = f"{SERVER}-gossip"
ROLES = ["server-agent", "client-agent", "node", "producer"]
CONSUL_IMAGE = "hashicorp/consul:"


def _secret_data(objects, name) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in find(objects, "Secret", name)["data"].items()}


def _consul_containers(objects):
    for name, _, spec in pod_specs(objects):
        for c in spec.get("initContainers", []) + spec["containers"]:
            if c["image"].startswith(CONSUL_IMAGE):
                yield name, spec, c


def _job(objects):
    (job,) = of_kind(objects, "Job")
    return job


def _token_refs(objects) -> dict[str, set[str]]:
    """container -> the ACL Secret keys it reads through env or a mounted item."""
    refs: dict[str, set[str]] = {}
    for name, _, spec in pod_specs(objects):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec.get("initContainers", []) + spec["containers"]:
            keys = set()
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] == ACL_SECRET:
                    keys.add(ref["key"])
            for m in c.get("volumeMounts", []):
                secret = volumes.get(m["name"], {}).get("secret")
                if secret and secret["secretName"] == ACL_SECRET:
                    assert "items" in secret, f"{name}:{c['name']} mounts the whole ACL Secret"
                    keys |= {i["key"] for i in secret["items"]}
            refs[f"{name}:{c['name']}"] = keys
    return refs


def test_acl_ids_are_uuids_and_configs_use_them():
    """The ACL Secret holds a uuidv4 per ID (a new draw per install) and the two agent
    configurations built from them, which parse and set ACLs on, default deny."""
    objects = parse(render(None))
    data = _secret_data(objects, ACL_SECRET)
    ids = {k: v for k, v in data.items() if not k.endswith(".json")}
    assert set(ids) == {"management-token"} | {f"{r}-{k}" for r in ROLES for k in ("accessor", "token")}
    for key, value in ids.items():
        assert uuid.UUID(value).version == 4, key
    assert len(set(ids.values())) == len(ids)
    server, client = json.loads(data["server-acl.json"])["acl"], json.loads(data["client-acl.json"])["acl"]
    for acl in (server, client):
        assert acl["enabled"] is True and acl["default_policy"] == "deny" and acl["enable_token_persistence"] is True
        assert acl["down_policy"] == "extend-cache"
    assert server["tokens"] == {"initial_management": ids["management-token"], "agent": ids["server-agent-token"]}
    assert client["tokens"] == {"agent": ids["client-agent-token"]}
    assert _secret_data(parse(render(None)), ACL_SECRET)["management-token"] != ids["management-token"]


def test_each_container_reads_only_its_own_token(value_set, objects_of):
    """Servers mount only server-acl.json, agent sidecars only client-acl.json and read their
    own agent token (startup probe), nodes the node token, producers the producer token, the
    bootstrap Job the management token and the roles' IDs; nothing else touches the Secret."""
    objects = objects_of(value_set)
    if not of_kind(objects, "Job"):
        assert ACL_SECRET not in {s["metadata"]["name"] for s in of_kind(objects, "Secret")}
        return
    expected = {
        f"StatefulSet/{SERVER}:consul": {"server-acl.json"},
        f"StatefulSet/{FULLNAME}:consul-agent": {"client-acl.json", "client-agent-token"},
        f"StatefulSet/{FULLNAME}:node": {"node-token"},
        f"Deployment/{FULLNAME}-producer:consul-agent": {"client-acl.json", "client-agent-token"},
        f"Deployment/{FULLNAME}-producer:producer": {"producer-token"},
        f"Job/{_job(objects)['metadata']['name']}:acl-bootstrap":
            {"management-token"} | {f"{r}-{k}" for r in ROLES for k in ("accessor", "token")},
    }
    got = {k: v for k, v in _token_refs(objects).items() if v}
    assert got == {k: v for k, v in expected.items() if k.split(":")[0].split("/", 1)[1] in
                   {o["metadata"]["name"] for o in objects} and (":consul-agent" not in k or value_set != "agentless")}


def test_agents_and_servers_load_their_acl_config(objects_of):
    """The servers and every agent sidecar load their ACL configuration from the mounted file."""
    objects = objects_of("default")
    for name, spec, c in _consul_containers(objects):
        if c.get("command"):
            continue
        want = "server-acl.json" if "consul-server" in name else "client-acl.json"
        assert f"-config-file=/consul/acl-config/{want}" in c["args"], name


def _policies(objects) -> dict[str, dict]:
    (cm,) = [c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"] == f"{SERVER}-acl-bootstrap"]
    return {k.removesuffix(".hcl"): hcl2.loads(v) for k, v in cm["data"].items() if k.endswith(".hcl")}


def _rules(policy: dict) -> set[tuple[str, str, str]]:
    """(rule kind, name, access) for every rule of a parsed policy."""
    out = set()
    for kind, blocks in policy.items():
        for block in blocks:
            for name, body in block.items():
                out.add((kind, name.strip('"'), body["policy"].strip('"')))
    return out


def test_policies_grant_only_what_each_role_needs():
    """The policies follow docs/consul-acl.md to the letter: the node writes its service, holds
    sessions only on its own pods' agent nodes, writes the election key and what is under it,
    reads nodes; the producer reads the election key; agents write only their own nodes (each
    node pod by name, producer pods by prefix) and read services; servers write their own."""
    policies = _policies(parse(render(None)))
    assert set(policies) == set(ROLES)
    pods = {f"{FULLNAME}-{i}" for i in range(3)}
    assert _rules(policies["node"]) == {
        ("service", "simpleloggers", "write"), ("key_prefix", "service/simpleloggers/leader", "write"),
        ("node_prefix", "", "read")} | {("session", p, "write") for p in pods}
    assert _rules(policies["producer"]) == {("key", "service/simpleloggers/leader", "read")}
    assert _rules(policies["client-agent"]) == {("node", p, "write") for p in pods} | {
        ("node_prefix", f"{FULLNAME}-producer-", "write"), ("service_prefix", "", "read")}
    assert _rules(policies["server-agent"]) == {("node_prefix", f"{SERVER}-", "write"), ("service_prefix", "", "read")}


def test_policies_follow_the_values():
    """Five replicas get five node and session rules; another service name and election key
    change the rules; agentless nodes hold sessions on the servers' nodes."""
    values = {"node": {"replicas": 5, "serviceName": "logs", "electionKey": "apps/logs/lock"}}
    policies = _policies(parse(render(values)))
    node = _rules(policies["node"])
    assert {("session", f"{FULLNAME}-{i}", "write") for i in range(5)} <= node
    assert ("service", "logs", "write") in node and ("key_prefix", "apps/logs/lock", "write") in node
    assert _rules(policies["producer"]) == {("key", "apps/logs/lock", "read")}
    agentless = _rules(_policies(parse(render({"consul": {"agent": {"enabled": False}}})))["node"])
    assert ("session_prefix", f"{SERVER}-", "write") in agentless
    assert not [r for r in agentless if r[0] == "session"]


def test_bootstrap_job_runs_per_revision_without_rbac():
    """The Job runs the ConfigMap's script against the server Service with the management
    token, has no ServiceAccount token (it writes nothing back to Kubernetes), and is named
    after the revision (at most 63 characters), so each upgrade runs it again."""
    objects = parse(render(None))
    job = _job(objects)
    assert job["metadata"]["name"] == f"{SERVER}-acl-bootstrap-1"[:63]
    spec = job["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False and spec["restartPolicy"] == "Never"
    assert "helm.sh/hook" not in job["metadata"].get("annotations", {})
    c = container(spec, "acl-bootstrap")
    env = env_of(c)
    assert env["CONSUL_HTTP_ADDR"]["value"] == f"https://{SERVER}.{NAMESPACE}.svc:8501"
    assert env["CONSUL_CACERT"]["value"] == "/consul/tls/ca.crt"
    assert env["CONSUL_HTTP_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": ACL_SECRET, "key": "management-token"}
    assert env["ROLES"]["value"].split() == ROLES
    with helm.Chart.load(CHART) as chart:
        upgraded = parse(chart.render(values=None, name="a" * 53, namespace=NAMESPACE, revision=123456, is_upgrade=True))
    name = _job(upgraded)["metadata"]["name"]
    assert len(name) <= 63 and name.endswith("-acl-bootstrap-123456")


# --- the bootstrap script against a fake consul ---------------------------------------------------

SCRIPT_TOOLS = ["sh", "cat", "date", "env"]


def _bootstrap_files(tmp_path: Path, objects) -> tuple[Path, Path, Path]:
    (cm,) = [c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"] == f"{SERVER}-acl-bootstrap"]
    rules, ids = tmp_path / "rules", tmp_path / "ids"
    rules.mkdir()
    ids.mkdir()
    for k, v in cm["data"].items():
        (rules / k).write_text(v)
    for k, v in _secret_data(objects, ACL_SECRET).items():
        if not k.endswith(".json") and k != "management-token":
            (ids / k).write_text(v)
    return rules / "bootstrap.sh", rules, ids


def _run_bootstrap(tmp_path: Path, rules_: list[dict], timeout_s: str = "60"):
    objects = parse(render(None))
    script, rules, ids = _bootstrap_files(tmp_path, objects)
    h = Harness(tmp_path, fakes=["consul", "sleep"], system_tools=SCRIPT_TOOLS)
    env = {"CONSUL_HTTP_ADDR": f"https://{SERVER}.{NAMESPACE}.svc:8501", "ROLES": " ".join(ROLES),
           "POLICY_PREFIX": FULLNAME, "RELEASE": RELEASE, "RULES_DIR": str(rules), "ACL_IDS_DIR": str(ids),
           "TIMEOUT_SECONDS": timeout_s}
    (h.dir / "scenario.json").write_text(json.dumps({"rules": rules_}))
    for leftover in ("state.json", "calls.jsonl"):
        (h.dir / leftover).unlink(missing_ok=True)
    proc = subprocess.run([str(h.bin / "sh"), str(script)], env={"PATH": str(h.bin), "FAKE_DIR": str(h.dir), **env},
                          capture_output=True, text=True, timeout=120)
    calls_path = h.dir / "calls.jsonl"
    calls = [json.loads(line) for line in calls_path.read_text().splitlines()] if calls_path.exists() else []
    return proc, calls, _secret_data(objects, ACL_SECRET), rules


# `consul acl token read -self` before the servers have a leader, then once they do.
NO_LEADER = err('Error reading token: Unexpected response code: 500 (No cluster leader)\n')
SELF = out("AccessorID:       7b8d1b5e-1c0a-4c44-9f0f-3f3b7a0a9c11\nSecretID:         <hidden>\n"
           "Description:      Initial Management Token\nLocal:            false\nPolicies:\n"
           "   00000000-0000-0000-0000-000000000001 - global-management\n")
POLICY_MISSING = err('Failed to find policy with name demo-simpleloggers-node: Unexpected response code: 403 (ACL not found)\n')
TOKEN_MISSING = err('Error reading token "x": Unexpected response code: 403 (ACL not found)\n')


def test_bootstrap_creates_every_policy_and_token_after_the_leader(tmp_path):
    """A fresh cluster: the script waits out 'No cluster leader', then creates each role's
    policy from its rules file and its token with exactly the pre-generated accessor and secret
    IDs, linked to that policy."""
    proc, calls, ids, rules = _run_bootstrap(tmp_path, [
        rule("consul", "^acl token read -self$", NO_LEADER, NO_LEADER, SELF),
        rule("consul", "^acl policy read -name ", POLICY_MISSING),
        rule("consul", "^acl policy create ", out("ID: 1\n")),
        rule("consul", "^acl token read -id ", TOKEN_MISSING),
        rule("consul", "^acl token create ", out("AccessorID: x\n")),
        rule("sleep"),
    ])
    assert proc.returncode == 0, proc.stderr
    args = [c["args"] for c in calls if c["tool"] == "consul"]
    assert args[:3] == [["acl", "token", "read", "-self"]] * 3
    creates = [a for a in args if a[:3] == ["acl", "policy", "create"]]
    tokens = [a for a in args if a[:3] == ["acl", "token", "create"]]
    assert [a[a.index("-name") + 1] for a in creates] == [f"{FULLNAME}-{r}" for r in ROLES]
    for role, a in zip(ROLES, creates):
        assert a[a.index("-rules") + 1] == f"@{rules}/{role}.hcl"
    for role, a in zip(ROLES, tokens):
        assert a[a.index("-accessor") + 1] == ids[f"{role}-accessor"]
        assert a[a.index("-secret") + 1] == ids[f"{role}-token"]
        assert a[a.index("-policy-name") + 1] == f"{FULLNAME}-{role}"
    assert [c["tool"] for c in calls].count("sleep") == 2
    assert proc.stdout.splitlines()[-1] == "acl-bootstrap: done"


def test_bootstrap_updates_what_exists(tmp_path):
    """Run again (every upgrade): existing policies get the current rules and existing tokens
    their policy; nothing is created twice."""
    proc, calls, ids, rules = _run_bootstrap(tmp_path, [
        rule("consul", "^acl token read -self$", SELF),
        rule("consul", "^acl policy read -name ", out("ID: 1\nName: x\n")),
        rule("consul", "^acl policy update ", out("ID: 1\n")),
        rule("consul", "^acl token read -id ", out("AccessorID: x\n")),
        rule("consul", "^acl token update ", out("AccessorID: x\n")),
    ])
    assert proc.returncode == 0, proc.stderr
    args = [c["args"] for c in calls]
    assert not [a for a in args if "create" in a]
    updates = [a for a in args if a[:3] == ["acl", "token", "update"]]
    assert [a[a.index("-id") + 1] for a in updates] == [ids[f"{r}-accessor"] for r in ROLES]
    assert len([a for a in args if a[:3] == ["acl", "policy", "update"]]) == 4


def test_bootstrap_gives_up_without_a_leader(tmp_path):
    """No leader within TIMEOUT_SECONDS: the script fails (the Job retries), saying why and
    showing Consul's own error; it creates nothing."""
    proc, calls, _, _ = _run_bootstrap(tmp_path, [rule("consul", "^acl token read -self$", NO_LEADER), rule("sleep")],
                                       timeout_s="0")
    assert proc.returncode == 1
    assert f"no Consul leader at https://{SERVER}.{NAMESPACE}.svc:8501 accepted the initial management token within 0s" in proc.stderr
    assert "No cluster leader" in proc.stderr
    assert not [c for c in calls if c["args"][:2] == ["acl", "policy"]]


def test_bootstrap_stops_on_a_failed_create(tmp_path):
    """A create Consul refuses (e.g. a policy with invalid rules) fails the run at once."""
    proc, calls, _, _ = _run_bootstrap(tmp_path, [
        rule("consul", "^acl token read -self$", SELF),
        rule("consul", "^acl policy read -name ", POLICY_MISSING),
        rule("consul", "^acl policy create ", err("Failed to create new policy: Unexpected response code: 400 (Invalid Policy)\n")),
    ])
    assert proc.returncode != 0 and "Invalid Policy" in proc.stderr
    assert "acl-bootstrap: done" not in proc.stdout


# --- upgrades, modes -------------------------------------------------------------------------------

def test_acl_ids_kept_across_upgrades(tmp_path):
    """An upgrade keeps every ID the cluster's Secret holds, and the configs built from them."""
    from test_access import _chart_whose_cluster_holds

    held = {"management-token": str(uuid.uuid4()), "node-token": str(uuid.uuid4()), "client-agent-token": str(uuid.uuid4())}
    chart = _chart_whose_cluster_holds(tmp_path, {ACL_SECRET: {k: base64.b64encode(v.encode()).decode() for k, v in held.items()}})
    with helm.Chart.load(chart) as loaded:
        objects = parse(loaded.render(values=None, name=RELEASE, namespace=NAMESPACE, revision=2, is_upgrade=True))
    data = _secret_data(objects, ACL_SECRET)
    for k, v in held.items():
        assert data[k] == v
    assert json.loads(data["server-acl.json"])["acl"]["tokens"]["initial_management"] == held["management-token"]
    assert json.loads(data["client-acl.json"])["acl"]["tokens"]["agent"] == held["client-agent-token"]
    assert uuid.UUID(data["producer-token"]).version == 4


def test_acl_off_or_external_renders_no_acl_objects():
    """consul.acl.enabled=false, or an external Consul: no ACL Secret, ConfigMap, Job or token
    variables from it; external keeps its tokenSecret."""
    for values in ({"consul": {"acl": {"enabled": False}}},
                   {"consul": {"server": {"enabled": False}, "agent": {"enabled": False},
                               "external": {"address": "https://c:8501", "tokenSecret": {"name": "ext", "key": "t"}}}}):
        objects = parse(render(values))
        assert not of_kind(objects, "Job") and not of_kind(objects, "ConfigMap")
        assert ACL_SECRET not in {s["metadata"]["name"] for s in of_kind(objects, "Secret")}
        assert not any(_token_refs(objects).values())
    node = container(find(objects, "StatefulSet", FULLNAME)["spec"]["template"]["spec"], "node")
    assert env_of(node)["CONSUL_HTTP_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "ext", "key": "t"}


# --- gossip encryption -----------------------------------------------------------------------------

def _gossip_users(objects):
    return [(n, c) for n, _, c in _consul_containers(objects) if not c.get("command")]


def test_gossip_key_generated_and_given_to_every_agent():
    """By default a 32-byte key (base64, as `consul keygen` prints) is generated, and every
    server and agent sidecar gets it as -encrypt from the Secret; a new install draws anew."""
    objects = parse(render(None))
    key = _secret_data(objects, GOSSIP_SECRET)["gossip-key"]
    assert len(base64.b64decode(key, validate=True)) == 32
    users = _gossip_users(objects)
    assert len(users) == 3
    for name, c in users:
        assert "-encrypt=$(CONSUL_GOSSIP_KEY)" in c["args"], name
        assert env_of(c)["CONSUL_GOSSIP_KEY"]["valueFrom"]["secretKeyRef"] == {"name": GOSSIP_SECRET, "key": "gossip-key"}
    assert _secret_data(parse(render(None)), GOSSIP_SECRET)["gossip-key"] != key


@pytest.mark.parametrize("values, secret, agents", [
    ({"consul": {"gossipEncryption": {"existingSecret": "ops-gossip", "key": "k"}}}, "ops-gossip", 3),
    ({"consul": {"server": {"enabled": False}, "external": {"retryJoin": ["c.consul.svc"]},
                 "gossipEncryption": {"existingSecret": "ext-gossip"}}}, "ext-gossip", 2),
    ({"consul": {"server": {"enabled": False}, "external": {"retryJoin": ["c.consul.svc"]}}}, None, 2),
    ({"consul": {"gossipEncryption": {"enabled": False}}}, None, 3),
], ids=["existing", "external-with-key", "external-without-key", "off"])
def test_gossip_key_sources(values, secret, agents):
    """An existingSecret is used and nothing generated; an external Consul gets a key only from
    an existingSecret (the chart cannot know the external servers' key); off means no -encrypt."""
    objects = parse(render(values))
    assert GOSSIP_SECRET not in {s["metadata"]["name"] for s in of_kind(objects, "Secret")}
    users = _gossip_users(objects)
    assert len(users) == agents
    for name, c in users:
        if secret:
            assert "-encrypt=$(CONSUL_GOSSIP_KEY)" in c["args"], name
            assert env_of(c)["CONSUL_GOSSIP_KEY"]["valueFrom"]["secretKeyRef"]["name"] == secret
        else:
            assert not [a for a in c["args"] if a.startswith("-encrypt")] and "CONSUL_GOSSIP_KEY" not in env_of(c)


# --- TLS -------------------------------------------------------------------------------------------

TLS_SECRET = f"{SERVER}-tls"
HEADLESS = f"{SERVER}-headless"


def _handshake(tmp_path: Path, data: dict[str, str], hostname: str) -> None:
    """A TLS handshake in memory: a server presenting tls.crt/tls.key, a client trusting only
    ca.crt and checking `hostname`, as Consul's verify_server_hostname and the API clients do.
    Raises ssl.SSLError (e.g. a hostname mismatch) when the certificate does not do."""
    import ssl

    for k in ("ca.crt", "tls.crt", "tls.key"):
        (tmp_path / k).write_text(data[k])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=hostname)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for side, obj in (("c", client), ("s", server)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_tls_material_is_a_ca_and_a_server_certificate_it_signs(tmp_path):
    """The TLS Secret holds a CA and a server certificate that a client trusting only that CA
    accepts for server.<dc>.consul (verify_server_hostname), each server's headless name, the
    client Service and localhost; and refuses for any other name."""
    import ssl

    data = _secret_data(parse(render(None)), TLS_SECRET)
    assert set(data) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    for host in ("server.dc1.consul", f"{SERVER}-0.{HEADLESS}.{NAMESPACE}.svc", f"{SERVER}-4.{HEADLESS}.{NAMESPACE}.svc",
                 f"{SERVER}.{NAMESPACE}.svc", "localhost"):
        _handshake(tmp_path, data, host)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tmp_path, data, "server.dc2.consul")
    other = _secret_data(parse(render(None)), TLS_SECRET)
    assert other["ca.crt"] != data["ca.crt"], "a new install draws a new CA"


def test_tls_material_kept_across_upgrades(tmp_path):
    """An upgrade renders back the CA and certificate the cluster holds, byte for byte."""
    from test_access import _chart_whose_cluster_holds

    held = {k: base64.b64encode(v.encode()).decode() for k, v in _secret_data(parse(render(None)), TLS_SECRET).items()}
    chart = _chart_whose_cluster_holds(tmp_path, {TLS_SECRET: held})
    with helm.Chart.load(chart) as loaded:
        objects = parse(loaded.render(values={"consul": {"server": {"replicas": 5}}}, name=RELEASE, namespace=NAMESPACE,
                                      revision=2, is_upgrade=True))
    assert find(objects, "Secret", TLS_SECRET)["data"] == held


def _unquote(value):
    """python-hcl2 keeps string literals' quotes and marks blocks: drop both, everywhere."""
    if isinstance(value, dict):
        return {k: _unquote(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _hcl_args(c) -> dict:
    """The merged -hcl fragments of a Consul container, parsed."""
    out = {}
    for a in c["args"]:
        if a.startswith("-hcl="):
            out.update(_unquote(hcl2.loads(a[len("-hcl="):])))
    return out


def test_servers_and_agents_verify_each_other(objects_of):
    """Servers: the CA and their certificate, verify_outgoing, verify_incoming on internal RPC
    (not HTTPS), verify_server_hostname, auto_encrypt for the agents, HTTPS on 8501 and plain
    HTTP on loopback only. Agents: the CA, verify_outgoing, verify_server_hostname and their own
    certificate through auto_encrypt; their HTTP API stays on loopback (-client=127.0.0.1), which
    is how the app in the same pod reaches them. Servers mount ca.crt, tls.crt and tls.key, the
    others only ca.crt; ca.key is mounted nowhere."""
    objects = objects_of("default")
    for name, spec, c in _consul_containers(objects):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounted = {i["key"] for m in c.get("volumeMounts", []) for i in
                   volumes.get(m["name"], {}).get("secret", {}).get("items", [])
                   if volumes[m["name"]]["secret"]["secretName"] == TLS_SECRET}
        if c.get("command"):  # the ACL Job
            assert mounted == {"ca.crt"}, name
            continue
        hcl = _hcl_args(c)
        tls = hcl["tls"][0]
        defaults = tls["defaults"][0]
        assert defaults["ca_file"] == "/consul/tls/ca.crt" and defaults["verify_outgoing"] is True, name
        assert tls["internal_rpc"][0]["verify_server_hostname"] is True, name
        if "consul-server" in name:
            assert mounted == {"ca.crt", "tls.crt", "tls.key"}
            assert defaults["cert_file"] == "/consul/tls/tls.crt" and defaults["key_file"] == "/consul/tls/tls.key"
            assert tls["internal_rpc"][0]["verify_incoming"] is True and tls["https"][0]["verify_incoming"] is False
            assert hcl["auto_encrypt"][0] == {"allow_tls": True}
            assert hcl["ports"][0] == {"https": 8501}
            assert hcl["addresses"][0] == {"http": "127.0.0.1", "https": "0.0.0.0"}
            assert {p["containerPort"] for p in c["ports"]} >= {8500, 8501}
        else:
            assert mounted == {"ca.crt"}, name
            assert hcl["auto_encrypt"][0] == {"tls": True} and "cert_file" not in defaults
            assert "-client=127.0.0.1" in c["args"]
    app = container(find(objects, "StatefulSet", FULLNAME)["spec"]["template"]["spec"], "node")
    assert env_of(app)["CONSUL_HTTP_ADDR"]["value"] == "http://127.0.0.1:8500"


def test_tls_off_renders_no_tls():
    """consul.tls.enabled=false: no TLS Secret, no TLS configuration, no 8501."""
    objects = parse(render({"consul": {"tls": {"enabled": False}}}))
    assert TLS_SECRET not in {s["metadata"]["name"] for s in of_kind(objects, "Secret")}
    for name, _, c in _consul_containers(objects):
        assert "tls" not in _hcl_args(c) if not c.get("command") else True, name
    assert [p["port"] for p in find(objects, "Service", SERVER)["spec"]["ports"]] == [8500]


@pytest.mark.parametrize("ca, volume", [
    ({"caSecret": {"name": "consul-ca", "key": "ca.pem"}}, {"secret": {"secretName": "consul-ca", "items": [{"key": "ca.pem", "path": "ca.pem"}]}}),
    ({"caConfigMap": {"name": "consul-ca-bundle", "key": "ca.pem"}}, {"configMap": {"name": "consul-ca-bundle", "items": [{"key": "ca.pem", "path": "ca.pem"}]}}),
], ids=["secret", "configmap"])
def test_external_tls_ca_from_a_file(ca, volume):
    """An external Consul over TLS: the CA from a Secret or a ConfigMap is mounted as a file,
    and the app gets CONSUL_HTTP_SSL=true and CONSUL_CACERT=<that file>."""
    values = {"consul": {"server": {"enabled": False}, "agent": {"enabled": False},
                         "external": {"address": "https://consul.example:8501", **ca}}}
    objects = parse(render(values))
    spec = find(objects, "StatefulSet", FULLNAME)["spec"]["template"]["spec"]
    env = env_of(container(spec, "node"))
    assert env["CONSUL_HTTP_SSL"]["value"] == "true" and env["CONSUL_CACERT"]["value"] == "/etc/consul-ca/ca.pem"
    (vol,) = [v for v in spec["volumes"] if v["name"] == "consul-ca"]
    assert {k: v for k, v in vol.items() if k != "name"} == volume
    assert {"name": "consul-ca", "mountPath": "/etc/consul-ca", "readOnly": True} in container(spec, "node")["volumeMounts"]


def test_notes_tell_how_to_read_the_management_token():
    """With ACLs, NOTES.txt shows how to read the management token; without, it says nothing."""
    def notes(values):
        return next(v for k, v in render(values).items() if k.endswith("NOTES.txt"))

    line = f"kubectl -n {NAMESPACE} get secret {ACL_SECRET} -o jsonpath='{{.data.management-token}}' | base64 -d"
    assert line in notes(None)
    assert "management-token" not in notes({"consul": {"acl": {"enabled": False}}})
