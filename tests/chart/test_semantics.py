"""Semantic checks on the rendered objects: the leader-only routing, the probes, the StatefulSet
policies that leader-only readiness requires, the Consul wiring (sidecar, agentless, external),
the RBAC the node's code uses, and the restricted security context."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from conftest import (
    FULLNAME,
    NAMESPACE,
    ROOT,
    container,
    env_of,
    find,
    node_sts,
    of_kind,
    parse,
    pod_specs,
    render,
    selects,
)

CONSUL_SERVER = f"{FULLNAME}-consul-server"
AGENT_ADDR = "http://127.0.0.1:8500"

# What src/k8s/ calls, and so exactly what the Role grants: (apiGroup, resource, verb).
EXPECTED_RBAC = {
    *(("", "pods", v) for v in ("list", "patch", "delete")),
    *(("events.k8s.io", "events", v) for v in ("create", "patch")),
    ("apps", "statefulsets", "get"),
    ("simpleloggers.io", "logclusters/status", "patch"),
}


def EXPECTED_RESOURCE_NAMES(replicas: int) -> dict:
    """The verbs that name one object, narrowed to this release's objects (list and create
    cannot be narrowed by name; events get generated names)."""
    pods = [f"{FULLNAME}-{i}" for i in range(replicas)]
    return {
        ("", "pods", "patch"): pods,
        ("", "pods", "delete"): pods,
        ("apps", "statefulsets", "get"): [FULLNAME],
        ("simpleloggers.io", "logclusters/status", "patch"): [FULLNAME],
    }


def _node_pod(objects):
    t = node_sts(objects)["spec"]["template"]
    return t["metadata"], t["spec"]


def _agent(pod_spec):
    return [c for c in pod_spec.get("initContainers", []) if c["name"] == "consul-agent"]


def test_main_service_selects_the_node_pods_and_nothing_else(value_set, objects_of):
    """The main Service's selector matches the node pods' labels, and no producer, Consul or
    test pod: traffic can only reach a node, and only the Ready one, the leader."""
    objects = objects_of(value_set)
    svc = find(objects, "Service", FULLNAME)
    selector = svc["spec"]["selector"]
    assert "publishNotReadyAddresses" not in svc["spec"] or svc["spec"]["publishNotReadyAddresses"] is False
    node_labels, _ = _node_pod(objects)
    assert selects(selector, node_labels["labels"])
    assert selects(node_sts(objects)["spec"]["selector"]["matchLabels"], node_labels["labels"])
    others = [(n, m) for n, m, _ in pod_specs(objects) if n != f"StatefulSet/{FULLNAME}"]
    assert others, "expected Consul/producer/test pods to compare with"
    for name, meta in others:
        assert not selects(selector, meta.get("labels", {})), f"main Service selects {name}"
    assert svc["spec"]["ports"][0]["targetPort"] == "http"


def test_peers_service_is_headless_and_publishes_not_ready(value_set, objects_of):
    """The -peers Service is headless, publishes not-ready addresses (followers are never Ready)
    and is the StatefulSet's serviceName."""
    objects = objects_of(value_set)
    peers = find(objects, "Service", f"{FULLNAME}-peers")
    assert peers["spec"]["clusterIP"] == "None"
    assert peers["spec"]["publishNotReadyAddresses"] is True
    node_labels, _ = _node_pod(objects)
    assert selects(peers["spec"]["selector"], node_labels["labels"])
    assert node_sts(objects)["spec"]["serviceName"] == f"{FULLNAME}-peers"


def test_probes(value_set, objects_of):
    """Readiness GET /readyz on the API port every 1 s with failureThreshold 1; liveness and
    startup on /healthz (never /readyz: followers are alive)."""
    _, spec = _node_pod(objects_of(value_set))
    node = container(spec, "node")
    ports = {p["name"]: p["containerPort"] for p in node["ports"]}
    listen = env_of(node)["SIMPLELOGGERS_LISTEN"]["value"]
    r = node["readinessProbe"]
    assert r["httpGet"]["path"] == "/readyz"
    assert ports[r["httpGet"]["port"]] == int(listen.rsplit(":", 1)[1])
    assert r["periodSeconds"] == 1 and r["failureThreshold"] == 1
    assert node["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert node["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert node["livenessProbe"]["httpGet"]["port"] == "http"



# Where the docs and comments may say which endpoint Consul checks: the chart and the README.
CONSUL_CHECK_DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "charts").rglob("*") if p.is_file())]


def test_docs_name_consul_check_as_the_consul_check():
    """Consul's HTTP check, the one the session is bound to, is /consul-check (failing while the
    log cannot append); /healthz is only the kubelet's liveness and startup probe. No doc or
    comment in the chart or README.md calls /healthz the Consul check, and the values name
    /consul-check where they set the check's interval."""
    wrong = re.compile(r"/healthz`?\s+(HTTP\s+)?check\b|\bcheck\s+(on|against|at|of)\s+`?/healthz", re.I)
    for path in CONSUL_CHECK_DOCS:
        text = " ".join(path.read_text().split())
        found = wrong.search(text)
        assert not found, f"{path.relative_to(ROOT)}: ...{text[max(0, found.start() - 80):found.end() + 40]}..."
    values = (ROOT / "charts/simpleloggers/values.yaml").read_text()
    check_interval = values[:values.index("checkInterval:")].rsplit("renewInterval:", 1)[1]
    assert "/consul-check" in check_interval

def test_statefulset_policies(value_set, objects_of):
    """Parallel pod management (OrderedReady would never start pod 1), OnDelete updates (the
    leader drives the rollout), a PVC per pod, a grace period long enough for the handover and
    the 10 s drain, preferred anti-affinity."""
    sts = node_sts(objects_of(value_set))
    spec = sts["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"] == {"type": "OnDelete"}
    (claim,) = spec["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container(spec["template"]["spec"], "node")["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == env_of(container(spec["template"]["spec"], "node"))["SIMPLELOGGERS_DATA_DIR"]["value"]
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 15
    anti = pod["affinity"]["podAntiAffinity"]
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in anti
    assert anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert "preStop" not in str(pod), "a preStop sleep would only delay the handover"


def test_downward_api_identity(value_set, objects_of):
    """POD_NAME, POD_IP and the namespace come from the downward API; the node is named after its
    pod and told its namespace for the Kubernetes integration."""
    _, spec = _node_pod(objects_of(value_set))
    env = env_of(container(spec, "node"))
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["SIMPLELOGGERS_NAME"]["value"] == "$(POD_NAME)"
    assert env["SIMPLELOGGERS_K8S_NAMESPACE"]["value"] == "$(POD_NAMESPACE)"
    assert env["SIMPLELOGGERS_LISTEN"]["value"].startswith("0.0.0.0:")
    assert "SIMPLELOGGERS_ADVERTISE_ADDR" not in env, "derived from POD_IP by the node"
    names = [e["name"] for e in container(spec, "node")["env"]]
    # $(VAR) references resolve only to variables defined earlier in the list.
    assert names.index("POD_NAME") < names.index("SIMPLELOGGERS_NAME")
    assert names.index("POD_NAMESPACE") < names.index("SIMPLELOGGERS_K8S_NAMESPACE")


def test_agent_sidecar_wires_node_and_producer(objects_of):
    """Default: the Consul agent is a native sidecar (init container, restartPolicy Always) with a
    startup probe, named after the pod, retry-joining the server; node and producer talk to it on
    loopback."""
    objects = objects_of("default")
    headless = f"{CONSUL_SERVER}-headless"
    wired = {f"StatefulSet/{FULLNAME}", f"Deployment/{FULLNAME}-producer"}
    checked = 0
    for name, _, spec in pod_specs(objects):
        if name not in wired:
            continue
        checked += 1
        (agent,) = _agent(spec)
        assert agent["restartPolicy"] == "Always"
        assert "startupProbe" in agent and "readinessProbe" not in agent
        assert agent["args"][:2] == ["consul", "agent"] and "command" not in agent
        assert "-node=$(POD_NAME)" in agent["args"] and "-advertise=$(POD_IP)" in agent["args"]
        assert "-client=127.0.0.1" in agent["args"]
        joins = [a for a in agent["args"] if a.startswith("-retry-join=")]
        assert joins == [f"-retry-join={CONSUL_SERVER}-0.{headless}.{NAMESPACE}.svc"]
        main = spec["containers"][0]
        assert env_of(main)["CONSUL_HTTP_ADDR"]["value"] == AGENT_ADDR
        volumes = {v["name"] for v in spec["volumes"]}
        assert {m["name"] for m in agent["volumeMounts"]} <= volumes
    assert checked == 2
    assert find(objects, "Service", headless)["spec"]["publishNotReadyAddresses"] is True


def test_agentless_talks_to_server_service(objects_of):
    """Agentless: no sidecar anywhere; CONSUL_HTTP_ADDR is the server Service, which exists,
    serves HTTPS on 8501 (TLS, on by default; plain 8500 answers on the servers' loopback only)
    and keeps each client on one server (ClientIP affinity); the app verifies the servers with
    the chart's CA, mounted from the TLS Secret."""
    objects = objects_of("agentless")
    for name, _, spec in pod_specs(objects):
        assert not _agent(spec), name
    svc = find(objects, "Service", CONSUL_SERVER)
    assert svc["spec"]["sessionAffinity"] == "ClientIP"
    assert [p["port"] for p in svc["spec"]["ports"]] == [8500, 8501]
    addr = f"https://{CONSUL_SERVER}.{NAMESPACE}.svc:8501"
    _, spec = _node_pod(objects)
    producer = find(objects, "Deployment", f"{FULLNAME}-producer")["spec"]["template"]["spec"]
    for pod, name in ((spec, "node"), (producer, "producer")):
        env = env_of(container(pod, name))
        assert env["CONSUL_HTTP_ADDR"]["value"] == addr
        assert env["CONSUL_HTTP_SSL"]["value"] == "true"
        assert env["CONSUL_CACERT"]["value"] == "/etc/consul-ca/ca.crt"
        (mount,) = [m for m in container(pod, name)["volumeMounts"] if m["name"] == "consul-ca"]
        assert mount["mountPath"] == "/etc/consul-ca"
        (volume,) = [v for v in pod["volumes"] if v["name"] == "consul-ca"]
        assert volume["secret"] == {"secretName": f"{CONSUL_SERVER}-tls", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    plain = parse(render({"consul": {"agent": {"enabled": False}, "tls": {"enabled": False}}}))
    _, spec = _node_pod(plain)
    env = env_of(container(spec, "node"))
    assert env["CONSUL_HTTP_ADDR"]["value"] == f"http://{CONSUL_SERVER}.{NAMESPACE}.svc:8500"
    assert "CONSUL_CACERT" not in env and "CONSUL_HTTP_SSL" not in env


def test_external_consul(objects_of):
    """External Consul: no server objects; the address, the ACL token (from its Secret) and the
    CA (a mounted Secret) reach node and producer."""
    objects = objects_of("external-consul")
    assert not [o for o in objects if "consul-server" in o["metadata"]["name"]]
    for name, _, spec in pod_specs(objects):
        if name.startswith("Pod/"):
            continue
        main = spec["containers"][0]
        env = env_of(main)
        assert env["CONSUL_HTTP_ADDR"]["value"] == "https://consul.example.internal:8501"
        assert env["CONSUL_HTTP_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "consul-acl", "key": "token"}
        ca_path = Path(env["CONSUL_CACERT"]["value"])
        mount = next(m for m in main["volumeMounts"] if m["name"] == "consul-ca")
        assert ca_path.parent == Path(mount["mountPath"]) and ca_path.name == "ca.crt"
        vol = next(v for v in spec["volumes"] if v["name"] == "consul-ca")
        assert vol["secret"]["secretName"] == "consul-ca"


def test_ha_consul(objects_of):
    """Three servers: bootstrap-expect 3, each retry-joins all three, a PDB keeps quorum."""
    objects = objects_of("ha-consul")
    sts = find(objects, "StatefulSet", CONSUL_SERVER)
    assert sts["spec"]["replicas"] == 3
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "-bootstrap-expect=3" in args and "-server" in args
    assert len([a for a in args if a.startswith("-retry-join=")]) == 3
    pdb = find(objects, "PodDisruptionBudget", CONSUL_SERVER)
    assert pdb["spec"]["maxUnavailable"] == 1
    assert selects(pdb["spec"]["selector"]["matchLabels"], sts["spec"]["template"]["metadata"]["labels"])
    _, spec = _node_pod(objects)
    assert len([a for a in _agent(spec)[0]["args"] if a.startswith("-retry-join=")]) == 3


def test_default_consul_is_one_pinned_server(objects_of):
    """Default: one server from the official image at a pinned version, no PDB for one server."""
    objects = objects_of("default")
    sts = find(objects, "StatefulSet", CONSUL_SERVER)
    assert sts["spec"]["replicas"] == 1
    image = sts["spec"]["template"]["spec"]["containers"][0]["image"]
    repo, tag = image.rsplit(":", 1)
    assert repo == "hashicorp/consul" and tag[0].isdigit() and tag != "latest"
    assert not of_kind(objects, "PodDisruptionBudget")


def test_role_grants_exactly_what_the_node_calls(value_set, objects_of):
    """The Role grants exactly the verbs src/k8s/ uses, nothing more, and is bound to the node
    pods' ServiceAccount."""
    objects = objects_of(value_set)
    role = find(objects, "Role", FULLNAME)
    granted = {
        (g, r, v)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert granted == EXPECTED_RBAC
    replicas = node_sts(objects)["spec"]["replicas"]
    names = {
        (g, r, v): rule.get("resourceNames")
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }
    assert names == {**{k: None for k in EXPECTED_RBAC}, **EXPECTED_RESOURCE_NAMES(replicas)}
    assert not of_kind(objects, "ClusterRole") and not of_kind(objects, "ClusterRoleBinding")
    binding = find(objects, "RoleBinding", FULLNAME)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": FULLNAME}
    sa = node_sts(objects)["spec"]["template"]["spec"]["serviceAccountName"]
    find(objects, "ServiceAccount", sa)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]


def test_restricted_security_context(value_set, objects_of):
    """Every container of every pod meets the Pod Security "restricted" profile and has a
    read-only root filesystem: non-root, no privilege escalation, ALL capabilities dropped,
    RuntimeDefault seccomp."""
    for name, _, spec in pod_specs(objects_of(value_set)):
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, name
        assert pod_sc.get("runAsUser", 1) != 0, name
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault", name
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            where = f"{name}:{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in sc["capabilities"], where
            assert sc.get("privileged", False) is False, where
            assert sc.get("seccompProfile", {"type": "RuntimeDefault"})["type"] == "RuntimeDefault", where
            assert "resources" in c or name.startswith("Pod/"), where


def test_images_pinned(value_set, objects_of):
    """No image floats on latest or an empty tag."""
    for name, _, spec in pod_specs(objects_of(value_set)):
        for c in spec.get("initContainers", []) + spec["containers"]:
            tag = c["image"].rsplit(":", 1)[1] if ":" in c["image"] else ""
            assert tag and tag != "latest", f"{name}:{c['name']} {c['image']}"


def test_producer(objects_of):
    """The producer runs `simpleloggers producer` at the configured rate, is not a node, and is
    absent when disabled."""
    objects = objects_of("default")
    dep = find(objects, "Deployment", f"{FULLNAME}-producer")
    main = dep["spec"]["template"]["spec"]["containers"][0]
    assert main["args"] == ["producer"]
    assert env_of(main)["SIMPLELOGGERS_RATE"]["value"] == "10"
    assert dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "producer"
    assert not of_kind(objects_of("producer-off"), "Deployment")
    assert of_kind(objects_of("producer-off"), "StatefulSet")


def test_five_replicas_pdb_and_monitoring(objects_of):
    """Five nodes: the StatefulSet and LogCluster agree; the optional PDB keeps the (only Ready)
    leader and lets unhealthy followers go; the ServiceMonitor scrapes every node through the
    peers Service only."""
    objects = objects_of("five-replicas")
    assert node_sts(objects)["spec"]["replicas"] == 5
    (lc,) = of_kind(objects, "LogCluster")
    assert lc["spec"]["replicas"] == 5
    pdb = find(objects, "PodDisruptionBudget", FULLNAME)
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    (sm,) = of_kind(objects, "ServiceMonitor")
    services = [s for s in of_kind(objects, "Service") if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in services] == [f"{FULLNAME}-peers"]
    annotations = node_sts(objects)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"


def test_logcluster(objects_of):
    """One LogCluster named like the StatefulSet (so a node derives both from its pod name),
    with the spec the CRD declares."""
    objects = objects_of("default")
    (lc,) = of_kind(objects, "LogCluster")
    assert lc["apiVersion"] == "simpleloggers.io/v1alpha1"
    assert lc["metadata"]["name"] == node_sts(objects)["metadata"]["name"] == FULLNAME
    assert lc["spec"] == {"replicas": 3, "serviceName": "simpleloggers", "electionKey": "service/simpleloggers/leader"}
    env = env_of(container(_node_pod(objects)[1], "node"))
    assert env["SIMPLELOGGERS_SERVICE_NAME"]["value"] == lc["spec"]["serviceName"]
    assert env["SIMPLELOGGERS_ELECTION_KEY"]["value"] == lc["spec"]["electionKey"]
    assert env["SIMPLELOGGERS_LOGCLUSTER"]["value"] == lc["metadata"]["name"]
    assert env["SIMPLELOGGERS_STATEFULSET"]["value"] == FULLNAME
    assert env["SIMPLELOGGERS_K8S_ROLLOUT"]["value"] == "on"


def test_helm_test_pod(value_set, objects_of):
    """`helm test` pod: a hook that asks the main Service for /readyz and checks that the status
    it reaches says leader."""
    objects = objects_of(value_set)
    (pod,) = of_kind(objects, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    script = pod["spec"]["containers"][0]["command"][-1]
    svc = find(objects, "Service", FULLNAME)
    assert f"http://{FULLNAME}.{NAMESPACE}.svc:{svc['spec']['ports'][0]['port']}" in script
    assert "/readyz" in script and "/api/v1/status" in script and '"role":"leader"' in script


def test_kind_values_and_cluster_config(objects_of):
    """kind: the main Service is NodePort 30080, which kind-config.yaml maps to localhost:3000 on
    the control-plane node; one control-plane and three workers."""
    svc = find(objects_of("kind"), "Service", FULLNAME)
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["ports"][0]["nodePort"] == 30080
    cfg = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    roles = [n["role"] for n in cfg["nodes"]]
    assert roles == ["control-plane", "worker", "worker", "worker"]
    (mapping,) = cfg["nodes"][0]["extraPortMappings"]
    assert mapping["containerPort"] == 30080 and mapping["hostPort"] == 3000
    assert mapping.get("listenAddress", "127.0.0.1") in ("127.0.0.1", "localhost")
    image = node_sts(objects_of("kind"))["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "simpleloggers:dev"


def test_kind_nodes_run_a_pinned_supported_kubernetes():
    """Every kind node runs the same kindest/node image, pinned by digest, of a Kubernetes the
    chart supports (kubeVersion >= 1.29) and the chart is validated against (test_render)."""
    from test_render import KUBE_VERSIONS

    cfg = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    images = {n.get("image") for n in cfg["nodes"]}
    assert len(images) == 1 and None not in images, images
    (image,) = images
    m = re.fullmatch(r"kindest/node:v(1)\.(\d+)\.(\d+)@sha256:[0-9a-f]{64}", image)
    assert m, image
    assert int(m.group(2)) >= 29
    assert f"{m.group(1)}.{m.group(2)}.{m.group(3)}" in KUBE_VERSIONS


def test_image_pull_secrets_reach_every_pod():
    """global.imagePullSecrets lands in every pod spec: nodes, producer, Consul servers, the
    ACL bootstrap Job and the `helm test` pod."""
    objects = parse(render({"global": {"imagePullSecrets": [{"name": "regcred"}]}, "consul": {"server": {"replicas": 3}}}))
    pods = pod_specs(objects)
    assert {n.split("/")[0] for n, _, _ in pods} == {"StatefulSet", "Deployment", "Job", "Pod"}
    assert len(pods) == 5
    for name, _, spec in pods:
        assert spec.get("imagePullSecrets") == [{"name": "regcred"}], name


def test_notes_tell_the_right_wait_and_the_port_forward_caveat(value_set, notes_of):
    """NOTES.txt: `helm install --wait` waits for Consul and the producer, not for the nodes;
    then wait for exactly one Ready node; and the port-forward caveat."""
    notes = notes_of(value_set)
    assert "`helm install --wait` waits only for the" in notes
    assert "`kubectl rollout status` refuses an OnDelete StatefulSet" in notes
    assert 'grep -c True)" = 1' in notes
    assert "port-forward svc/" in notes and "stays on it" in notes


# Read by src/k8s/ (the k8s branch); until it merges, these are not in this tree's src/.
K8S_ENV = {"POD_NAME", "SIMPLELOGGERS_K8S_NAMESPACE", "SIMPLELOGGERS_STATEFULSET", "SIMPLELOGGERS_LOGCLUSTER", "SIMPLELOGGERS_K8S_ROLLOUT"}
# Set only to be referenced as $(VAR) by later entries, or read by a library (RUST_LOG).
PLUMBING_ENV = {"POD_NAMESPACE", "RUST_LOG"}


def test_every_env_var_the_chart_sets_is_read_by_the_binary(value_set, objects_of):
    """A typo in an env name would silently fall back to a default: every variable the chart sets
    on the node and producer containers is one the Rust code reads."""
    import re

    read = set()
    for path in (ROOT / "src").rglob("*.rs"):
        read |= set(re.findall(r'"((?:SIMPLELOGGERS|CONSUL|POD)_[A-Z_]+)"', path.read_text()))
    assert {"SIMPLELOGGERS_NAME", "CONSUL_HTTP_ADDR", "POD_IP"} <= read
    objects = objects_of(value_set)
    for name, _, spec in pod_specs(objects):
        if name.startswith("Pod/") or "consul-server" in name:
            continue
        for c in spec["containers"]:
            unknown = set(env_of(c)) - read - K8S_ENV - PLUMBING_ENV
            assert not unknown, f"{name}:{c['name']} sets {unknown}, which no code reads"
