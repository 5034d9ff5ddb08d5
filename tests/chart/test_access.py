"""Access in the chart: the API tokens (node.auth.apiToken on by default, node.auth.readToken
off) reach the containers only through secretKeyRefs to a generated Secret (32 random letters and
digits, kept across upgrades) or an existing one; the producer sends the write token, the
`helm test` pod the read token and checks that a write without the token is refused; NOTES.txt
tells how to read each token; a token turned on without a Secret, a plain token in values or in
extraEnv, and a cluster running replicas without the replication secret (unless allowNone) fail
the install with a message naming the value."""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path

import helm_python as helm
import pytest

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
    pod_specs,
    render,
)

API_SECRET = f"{FULLNAME}-api-token"
READ_SECRET = f"{FULLNAME}-read-token"
CLUSTER_SECRET = f"{FULLNAME}-cluster-secret"
# Every variable that carries a secret, and the only way it may be set.
SECRET_ENV = {"SIMPLELOGGERS_API_TOKEN", "SIMPLELOGGERS_READ_TOKEN", "SIMPLELOGGERS_CLUSTER_SECRET", "CONSUL_HTTP_TOKEN"}


def _auth(**tokens) -> dict:
    return {"node": {"auth": tokens}}


def _node(objects):
    return container(node_sts(objects)["spec"]["template"]["spec"], "node")


def _producer(objects):
    dep = find(objects, "Deployment", f"{FULLNAME}-producer")
    return container(dep["spec"]["template"]["spec"], "producer")


def _test_pod(objects):
    (pod,) = of_kind(objects, "Pod")
    return pod["spec"]["containers"][0]


def _ref(secret: str, key: str) -> dict:
    return {"secretKeyRef": {"name": secret, "key": key}}


def _secret_names(objects) -> set[str]:
    return {s["metadata"]["name"] for s in of_kind(objects, "Secret")}


def _notes(manifests: dict[str, str]) -> str:
    return next(v for k, v in manifests.items() if k.endswith("NOTES.txt"))


def test_write_token_on_by_default():
    """By default the chart generates the write token's Secret (32 random letters and digits, a
    new one per install), the node checks it and the producer sends it, both through a
    secretKeyRef; the read token is off: no Secret, no variable anywhere."""
    manifests = render(None)
    objects = parse(manifests)
    secret = find(objects, "Secret", API_SECRET)
    assert secret["type"] == "Opaque" and list(secret["data"]) == ["api-token"]
    token = base64.b64decode(secret["data"]["api-token"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", token)
    assert env_of(_node(objects))["SIMPLELOGGERS_API_TOKEN"]["valueFrom"] == _ref(API_SECRET, "api-token")
    assert env_of(_producer(objects))["SIMPLELOGGERS_API_TOKEN"]["valueFrom"] == _ref(API_SECRET, "api-token")
    assert READ_SECRET not in _secret_names(objects)
    for name, _, spec in pod_specs(objects):
        for c in spec.get("initContainers", []) + spec["containers"]:
            assert not {"SIMPLELOGGERS_READ_TOKEN", "READ_TOKEN"} & set(env_of(c)), f"{name}:{c['name']}"
    others = "".join(text for t, text in manifests.items() if not t.endswith("node-api-token-secret.yaml"))
    assert token not in others and secret["data"]["api-token"] not in others
    assert find(parse(render(None)), "Secret", API_SECRET)["data"] != secret["data"]


def test_read_token_reaches_the_node_and_the_test_pod_only():
    """With node.auth.readToken on, its generated Secret reaches the node (which checks it) and
    the `helm test` pod (which reads the status with it), not the producer, which only writes."""
    objects = parse(render(_auth(readToken={"enabled": True})))
    secret = find(objects, "Secret", READ_SECRET)
    assert re.fullmatch(r"[A-Za-z0-9]{32}", base64.b64decode(secret["data"]["read-token"]).decode())
    assert env_of(_node(objects))["SIMPLELOGGERS_READ_TOKEN"]["valueFrom"] == _ref(READ_SECRET, "read-token")
    assert "SIMPLELOGGERS_READ_TOKEN" not in env_of(_producer(objects))
    test = _test_pod(objects)
    assert env_of(test)["READ_TOKEN"]["valueFrom"] == _ref(READ_SECRET, "read-token")
    assert "SIMPLELOGGERS_API_TOKEN" not in env_of(test)
    script = test["command"][-1]
    assert '--header "Authorization: Bearer $READ_TOKEN" "$base/api/v1/status"' in script


def test_existing_secrets_are_used_and_none_created():
    """existingSecret names the Secret (and key) each token is read from; the chart creates none
    for it, whatever `create` says."""
    values = _auth(apiToken={"existingSecret": "ops-api", "key": "w", "create": False},
                   readToken={"enabled": True, "existingSecret": "ops-read", "key": "r"})
    objects = parse(render(values))
    assert not {API_SECRET, READ_SECRET} & _secret_names(objects)
    env = env_of(_node(objects))
    assert env["SIMPLELOGGERS_API_TOKEN"]["valueFrom"] == _ref("ops-api", "w")
    assert env["SIMPLELOGGERS_READ_TOKEN"]["valueFrom"] == _ref("ops-read", "r")
    assert env_of(_producer(objects))["SIMPLELOGGERS_API_TOKEN"]["valueFrom"] == _ref("ops-api", "w")
    assert env_of(_test_pod(objects))["READ_TOKEN"]["valueFrom"] == _ref("ops-read", "r")


def test_tokens_off_set_nothing():
    """Both tokens off: no token Secret, no token variable, and the test pod does not expect a
    401 for an unauthenticated write."""
    objects = parse(render(_auth(apiToken={"enabled": False})))
    assert not {API_SECRET, READ_SECRET} & _secret_names(objects)
    for name, _, spec in pod_specs(objects):
        for c in spec.get("initContainers", []) + spec["containers"]:
            assert not {"SIMPLELOGGERS_API_TOKEN", "SIMPLELOGGERS_READ_TOKEN", "READ_TOKEN"} & set(env_of(c)), f"{name}:{c['name']}"
    assert "401" not in _test_pod(objects)["command"][-1]


def test_helm_test_checks_a_write_without_the_token_is_refused():
    """With the write token on, the test pod POSTs without it and passes only on a 401: an
    accepted write, or any other refusal, fails `helm test`."""
    script = _test_pod(parse(render(None)))["command"][-1]
    assert "--post-data" in script and "$base/api/v1/log" in script and "Authorization" not in script
    assert '*" 401 "*)' in script
    assert "exit 1" in script.split('*" 401 "*)')[0], "an accepted write must fail the test"


@pytest.mark.parametrize("which", ["apiToken", "readToken"])
def test_token_on_without_a_secret_fails_clearly(which):
    """A token turned on with create off and no existingSecret cannot reach the node: the install
    fails, naming the values to set."""
    with pytest.raises(helm.HelmRenderError, match=re.escape(
            f"node.auth.{which}.enabled=true needs a Secret: set node.auth.{which}.existingSecret")):
        render(_auth(**{which: {"enabled": True, "create": False}}))


@pytest.mark.parametrize("which", ["apiToken", "readToken"])
@pytest.mark.parametrize("field", ["token", "value", "secret"])
def test_schema_has_no_place_for_a_plain_token(which, field):
    """There is no value that holds a token itself: the schema refuses one under either token."""
    with pytest.raises(helm.HelmValuesError, match=re.escape(f"/node/auth/{which}")):
        render(_auth(**{which: {field: "s3cr3t-t0ken"}}))


@pytest.mark.parametrize("where", ["node", "producer"])
@pytest.mark.parametrize("name", sorted(SECRET_ENV))
def test_plain_secret_in_extra_env_fails(where, name):
    """An extraEnv entry giving a secret variable a plain value fails the install and names the
    value and the variable; the same variable from a secretKeyRef is accepted."""
    plain = {where: {"extraEnv": [{"name": name, "value": "s3cr3t"}]}}
    with pytest.raises(helm.HelmRenderError, match=re.escape(f"{where}.extraEnv sets {name} as a plain value")):
        render(plain)
    from_secret = {where: {"extraEnv": [{"name": name, "valueFrom": _ref("mine", "k")}]}}
    assert render(from_secret)


def test_secret_variables_come_only_from_secrets(value_set, objects_of):
    """Walking every container of every pod in every value set: each variable that carries a
    secret (by name) is set through a secretKeyRef, never as a plain value."""
    for name, _, spec in pod_specs(objects_of(value_set)):
        for c in spec.get("initContainers", []) + spec["containers"]:
            for var, entry in env_of(c).items():
                # A *_FILE variable holds the path of a mounted Secret, not the secret.
                if var in SECRET_ENV or re.search(r"TOKEN|SECRET|GOSSIP|PASSWORD", var) and not var.endswith("_FILE"):
                    assert "value" not in entry, f"{name}:{c['name']} sets {var} as a plain value"
                    assert set(entry["valueFrom"]) == {"secretKeyRef"}, f"{name}:{c['name']} {var}"


def test_notes_tell_how_to_read_the_tokens():
    """NOTES.txt shows the command reading each enabled token from its Secret and the request
    sending it; with the write token off it says writes are open."""
    notes = _notes(render(_auth(readToken={"enabled": True})))
    assert (f"kubectl -n {NAMESPACE} get secret {API_SECRET} -o jsonpath='{{.data.api-token}}' | base64 -d"
            in notes)
    assert '-H "Authorization: Bearer $TOKEN" --data' in notes
    assert (f"kubectl -n {NAMESPACE} get secret {READ_SECRET} -o jsonpath='{{.data.read-token}}' | base64 -d"
            in notes)
    assert '-H "Authorization: Bearer $READ_TOKEN"' in notes
    open_notes = _notes(render(_auth(apiToken={"enabled": False})))
    assert "Writes need no token" in open_notes and "Bearer" not in open_notes


def _chart_whose_cluster_holds(tmp_path: Path, held: dict[str, dict[str, str]]) -> Path:
    """A copy of the chart whose `lookup` of a Secret in the release namespace answers as a
    cluster holding `held` (Secret name -> data) would; the Go SDK renders offline, where
    `lookup` finds nothing."""
    chart = tmp_path / "simpleloggers"
    shutil.copytree(CHART, chart)
    helpers = chart / "templates" / "_helpers.tpl"
    text = helpers.read_text()
    call = 'lookup "v1" "Secret" .namespace .name'
    assert text.count(call) == 1, "the chart looks every generated Secret up in one place"
    def entries(data: dict[str, str]) -> str:
        return " ".join(f'"{k}" "{v}"' for k, v in data.items())

    secrets = " ".join(f'"{name}" (dict "data" (dict {entries(data)}))' for name, data in held.items())
    fake = f'(ternary (default (dict) (index (dict {secrets}) .name)) (dict) (eq .namespace "{NAMESPACE}"))'
    helpers.write_text(text.replace(call, fake))
    return chart


def test_tokens_kept_across_upgrades(tmp_path):
    """An upgrade re-renders the tokens the cluster's Secrets hold, byte for byte, so producers
    and clients keep working; a Secret the cluster does not hold yet is generated."""
    api = base64.b64encode(b"a" * 32).decode()
    chart = _chart_whose_cluster_holds(tmp_path, {API_SECRET: {"api-token": api}})
    with helm.Chart.load(chart) as loaded:
        objects = parse(loaded.render(values=_auth(readToken={"enabled": True}), name=RELEASE, namespace=NAMESPACE,
                                      revision=2, is_upgrade=True))
    assert find(objects, "Secret", API_SECRET)["data"] == {"api-token": api}
    read = base64.b64decode(find(objects, "Secret", READ_SECRET)["data"]["read-token"]).decode()
    assert re.fullmatch(r"[A-Za-z0-9]{32}", read)


def test_cluster_secret_cannot_be_dropped_with_replicas():
    """With more than one node, turning the replication secret off fails the install (the
    endpoint would serve the log to anyone reaching a pod) and names the way out."""
    with pytest.raises(helm.HelmRenderError, match=re.escape(
            "node.replication.clusterSecret: with node.replicas=3 and neither create nor existingSecret")) as e:
        render({"node": {"replication": {"clusterSecret": {"create": False}}}})
    assert "allowNone=true" in str(e.value)


@pytest.mark.parametrize("values", [
    {"node": {"replication": {"clusterSecret": {"create": False, "allowNone": True}}}},
    {"node": {"replicas": 1, "replication": {"clusterSecret": {"create": False}}}},
], ids=["allowed-explicitly", "single-node"])
def test_cluster_secret_off_when_allowed_or_alone(values):
    """Explicitly allowed, or with a single node (which replicates nothing), the chart renders
    without the replication secret: no Secret and no variable."""
    objects = parse(render(values))
    assert CLUSTER_SECRET not in _secret_names(objects)
    assert "SIMPLELOGGERS_CLUSTER_SECRET" not in env_of(_node(objects))


def test_only_node_pods_mount_a_service_account_token(value_set, objects_of):
    """Only the nodes call the Kubernetes API (src/k8s/); every other pod (producer, Consul
    servers, the ACL Job, the helm test pod) opts out of the ServiceAccount token."""
    for name, _, spec in pod_specs(objects_of(value_set)):
        if name == f"StatefulSet/{FULLNAME}":
            assert spec.get("automountServiceAccountToken", True) is not False
        else:
            assert spec.get("automountServiceAccountToken") is False, name
