"""The NetworkPolicies (on by default), evaluated with the Kubernetes rules (netpol.py) on the
rendered pods: only the release's nodes, producer and test pods, labelled clients and scrapers
reach the node port (which also carries the replication path: only a secret tells peers apart
there); only the release's Consul agents and servers gossip; only node pods (and the servers and
the ACL Job) reach the Consul servers' HTTP API; a producer accepts nothing but gossip. With
egress on, pods reach DNS, each other as above, Consul and the API server, and nothing else."""

from __future__ import annotations

import re

import helm_python as helm
import pytest

from conftest import FULLNAME, NAMESPACE, find, load_values, of_kind, parse, pod_specs, render
from netpol import Pod, allows, ingress_allows, selects

PROMETHEUS = Pod({"app.kubernetes.io/name": "prometheus"}, "monitoring")
CLIENT = Pod({"simpleloggers.io/client": "true", "app": "billing"}, NAMESPACE)
CLIENT_ELSEWHERE = Pod({"simpleloggers.io/client": "true"}, "billing")
STRANGER = Pod({"app": "curl"}, NAMESPACE)
STRANGER_ELSEWHERE = Pod({"app": "curl"}, "default")
DNS = Pod({"k8s-app": "kube-dns"}, "kube-system")
API_SERVER = Pod({}, "default", ip="172.18.0.2")
INTERNET = Pod({}, "default", ip="93.184.215.14")


def _pods(objects) -> dict[str, Pod]:
    """The release's pods by component, with their rendered template labels."""
    out = {}
    for _, meta, spec in pod_specs(objects):
        named = {p["name"]: p["containerPort"] for c in spec["containers"] + spec.get("initContainers", [])
                 for p in c.get("ports", [])}
        out[meta["labels"]["app.kubernetes.io/component"]] = Pod(meta["labels"], NAMESPACE, named_ports=named)
    return out


def _policies(objects):
    return of_kind(objects, "NetworkPolicy")


def _open(value_set: str, objects) -> bool:
    """Whether the value set turns the policies off (then none may render, which is checked)."""
    values = load_values(value_set) or {}
    if values.get("networkPolicy", {}).get("enabled", True):
        return False
    assert _policies(objects) == []
    return True


def test_evaluator_follows_the_kubernetes_rules():
    """The evaluator the tests rely on can say no: an unselected pod accepts everyone, a
    selected one only what a rule allows, a podSelector alone means the policy's namespace, a
    namespaceSelector with it pods there, ipBlock an address range."""
    policy = {"metadata": {"namespace": "a"}, "spec": {"podSelector": {"matchLabels": {"role": "db"}},
              "policyTypes": ["Ingress"], "ingress": [{"ports": [{"port": 5432}], "from": [
                  {"podSelector": {"matchLabels": {"role": "app"}}},
                  {"namespaceSelector": {"matchLabels": {"team": "ops"}}, "podSelector": {}},
                  {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}]}}
    db = Pod({"role": "db"}, "a", ip="192.168.0.1")
    assert ingress_allows([policy], Pod({"role": "app"}, "a", ip="192.168.0.2"), db, 5432)
    assert not ingress_allows([policy], Pod({"role": "app"}, "a", ip="192.168.0.2"), db, 5433)
    assert not ingress_allows([policy], Pod({"role": "app"}, "b", ip="192.168.0.2"), db, 5432)
    assert ingress_allows([policy], Pod({}, "b", {"team": "ops"}, ip="192.168.0.2"), db, 5432)
    assert ingress_allows([policy], Pod({}, "c", ip="10.2.0.1"), db, 5432)
    assert not ingress_allows([policy], Pod({}, "c", ip="10.1.0.1"), db, 5432)
    assert not ingress_allows([policy], Pod({"role": "app"}, "a"), db, 5432, "UDP")
    assert ingress_allows([policy], Pod({}, "c", ip="1.2.3.4"), Pod({"role": "web"}, "a"), 80)
    assert selects({"matchExpressions": [{"key": "x", "operator": "In", "values": ["1"]}]}, {"x": "1"})
    assert not selects({"matchExpressions": [{"key": "x", "operator": "NotIn", "values": ["1"]}]}, {"x": "1"})


def test_policies_on_by_default_one_per_component(value_set, objects_of):
    """Every value set renders a NetworkPolicy for each component it runs (node, producer,
    in-chart Consul servers), selecting exactly that component's pods."""
    objects = objects_of(value_set)
    if _open(value_set, objects):
        return
    policies = _policies(objects)
    pods = _pods(objects)
    expected = {"node"} | ({"producer"} & set(pods)) | ({"consul-server"} & set(pods))
    selected = set()
    for p in policies:
        hits = {c for c, pod in pods.items() if selects(p["spec"]["podSelector"], pod.labels)}
        assert len(hits) == 1, f"{p['metadata']['name']} selects {hits}"
        selected |= hits
    assert selected == expected and len(policies) == len(expected)


def test_node_port_reached_only_by_the_release_clients_and_scrapers(value_set, objects_of):
    """The node port: the release's nodes (replication, forwarded writes), producer and helm
    test pods, labelled clients of the release namespace and Prometheus reach it; any other pod,
    a labelled client in another namespace included, does not."""
    objects = objects_of(value_set)
    if _open(value_set, objects):
        return
    policies, pods = _policies(objects), _pods(objects)
    node, port = pods["node"], find(objects, "Service", FULLNAME)["spec"]["ports"][0]["targetPort"]
    port = node.named_ports[port] if isinstance(port, str) else port
    for who in ("node", "producer", "test"):
        if who in pods:
            assert allows(policies, pods[who], node, port), who
    assert allows(policies, CLIENT, node, port) and allows(policies, PROMETHEUS, node, port)
    for stranger in (STRANGER, STRANGER_ELSEWHERE, CLIENT_ELSEWHERE):
        assert not allows(policies, stranger, node, port), stranger
    assert not allows(policies, STRANGER, node, 8500)


def test_replication_port_reached_only_by_the_release_nodes(value_set, objects_of):
    """The replication port (node.replicationPort, --replication-listen): the release's nodes
    reach it; its producer, helm test pod, labelled clients, scrapers and strangers do not."""
    objects = objects_of(value_set)
    if _open(value_set, objects):
        return
    policies, pods = _policies(objects), _pods(objects)
    node = pods["node"]
    port = node.named_ports["replication"]
    assert port != node.named_ports["http"]
    assert allows(policies, node, node, port)
    for who in ("producer", "test"):
        if who in pods:
            assert not allows(policies, pods[who], node, port), who
    for outsider in (CLIENT, PROMETHEUS, STRANGER, STRANGER_ELSEWHERE, CLIENT_ELSEWHERE):
        assert not allows(policies, outsider, node, port), outsider


def test_consul_check_reaches_the_node_only_where_it_runs(objects_of):
    """Consul's HTTP check on /consul-check runs where the node registered: its own agent
    sidecar (same pod) by default, so servers do not reach the node port; agentless, the
    servers run it and do."""
    default, agentless = objects_of("default"), objects_of("agentless")
    assert not allows(_policies(default), _pods(default)["consul-server"], _pods(default)["node"], 3000)
    assert allows(_policies(agentless), _pods(agentless)["consul-server"], _pods(agentless)["node"], 3000)


def test_gossip_only_among_the_release_agents(value_set, objects_of):
    """Serf LAN gossip (8301, TCP and UDP) on every pod with a Consul agent is open to the
    release's other agents and servers only."""
    objects = objects_of(value_set)
    if _open(value_set, objects):
        return
    policies, pods = _policies(objects), _pods(objects)
    members = [pods[c] for c in ("node", "producer", "consul-server") if c in pods and 8301 in pods[c].named_ports.values()]
    for dst in members:
        for src in members:
            assert allows(policies, src, dst, 8301, "TCP") and allows(policies, src, dst, 8301, "UDP")
        assert not allows(policies, STRANGER, dst, 8301, "UDP")
        if "test" in pods:
            assert not allows(policies, pods["test"], dst, 8301)


def test_consul_servers_reached_by_node_pods_and_servers(objects_of):
    """The servers' HTTPS API (8501; with TLS plain 8500 is loopback only, and closed to the
    network too): node pods, other servers and the ACL bootstrap Job (and the producer only
    while agentless); RPC (8300): the release's agents and servers; nobody else, the helm test
    pod and a Prometheus included."""
    for value_set, producer_http in (("default", False), ("agentless", True), ("ha-consul", False)):
        objects = objects_of(value_set)
        policies, pods = _policies(objects), _pods(objects)
        server = pods["consul-server"]
        assert allows(policies, pods["node"], server, 8501) and allows(policies, server, server, 8501)
        assert allows(policies, pods["consul-acl-bootstrap"], server, 8501)
        assert allows(policies, pods["producer"], server, 8501) is producer_http, value_set
        for outsider in (STRANGER, PROMETHEUS, CLIENT, pods["test"]):
            assert not allows(policies, outsider, server, 8501) and not allows(policies, outsider, server, 8300)
        assert not allows(policies, pods["node"], server, 8500)
        assert allows(policies, pods["node"], server, 8300) is (not producer_http)
    plain = parse(render({"consul": {"tls": {"enabled": False}}}))
    policies, pods = _policies(plain), _pods(plain)
    assert allows(policies, pods["node"], pods["consul-server"], 8500)
    assert not allows(policies, STRANGER, pods["consul-server"], 8500)


def test_producer_accepts_only_gossip(objects_of):
    """A producer serves nothing: only its agent's gossip port is open, to the release's agents."""
    objects = objects_of("default")
    policies, pods = _policies(objects), _pods(objects)
    producer = pods["producer"]
    for port in (3000, 8500, 8080):
        assert not allows(policies, pods["node"], producer, port)
    agentless = objects_of("agentless")
    (policy,) = [p for p in _policies(agentless) if p["metadata"]["name"] == f"{FULLNAME}-producer"]
    assert policy["spec"]["ingress"] == []


def test_clients_and_scrapers_are_configurable():
    """networkPolicy.clients picks other labels and namespaces (a list, so it replaces the
    default rather than merging with it), scrapers and extraFrom add peers (an ipBlock for a
    NodePort), and [] takes a default away."""
    values = {"networkPolicy": {
        "clients": [{"podSelector": {"matchLabels": {"team": "payments"}},
                     "namespaceSelector": {"matchLabels": {"env": "prod"}}}],
        "scrapers": [], "extraFrom": [{"ipBlock": {"cidr": "172.18.0.0/16"}}]}}
    objects = parse(render(values))
    policies, node = _policies(objects), _pods(objects)["node"]
    assert allows(policies, Pod({"team": "payments"}, "shop", {"env": "prod"}), node, 3000)
    assert not allows(policies, Pod({"team": "payments"}, "shop", {"env": "dev"}), node, 3000)
    assert not allows(policies, CLIENT, node, 3000) and not allows(policies, PROMETHEUS, node, 3000)
    assert allows(policies, Pod({}, "default", ip="172.18.0.3"), node, 3000)
    objects = parse(render({"networkPolicy": {"clients": []}}))
    assert not allows(_policies(objects), CLIENT, _pods(objects)["node"], 3000)


def test_consul_extra_peers_reach_gossip_and_servers():
    """consulExtraFrom (e.g. an external Consul's servers joined by the sidecars) reaches gossip
    on the agents and, in-chart, the servers' RPC and HTTP."""
    external = Pod({"app": "consul"}, "consul")
    values = {"networkPolicy": {"consulExtraFrom": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "consul"}}, "podSelector": {"matchLabels": {"app": "consul"}}}]}}
    objects = parse(render(values))
    policies, pods = _policies(objects), _pods(objects)
    assert allows(policies, external, pods["node"], 8301, "UDP") and allows(policies, external, pods["producer"], 8301)
    assert allows(policies, external, pods["consul-server"], 8300)
    assert not allows(policies, external, pods["node"], 3000)


def test_disabled_renders_none():
    """networkPolicy.enabled=false: no policy at all."""
    assert _policies(parse(render({"networkPolicy": {"enabled": False}}))) == []


EGRESS = {"networkPolicy": {"egress": {"enabled": True, "kubeApi": [{"ipBlock": {"cidr": "172.18.0.2/32"}}]}}}


def test_egress_allows_what_each_component_calls_and_nothing_else():
    """With egress on: every component resolves names; nodes reach each other's port, the
    Consul servers and the API server; the producer reaches the nodes and Consul; servers reach
    each other; nothing reaches an address outside."""
    objects = parse(render(EGRESS))
    policies, pods = _policies(objects), _pods(objects)
    node, producer, server = pods["node"], pods["producer"], pods["consul-server"]
    for pod in (node, producer, server):
        assert allows(policies, pod, DNS, 53, "UDP") and allows(policies, pod, DNS, 53, "TCP")
        assert not allows(policies, pod, INTERNET, 443)
    assert allows(policies, node, node, 3000) and allows(policies, producer, node, 3000)
    assert allows(policies, node, node, 3001) and not allows(policies, producer, node, 3001)
    assert allows(policies, node, API_SERVER, 6443) and not allows(policies, producer, API_SERVER, 6443)
    for pod in (node, producer):
        assert allows(policies, pod, server, 8300) and allows(policies, pod, server, 8301, "UDP")
    assert allows(policies, node, server, 8501) and allows(policies, server, server, 8300)
    assert allows(policies, server, node, 8301, "UDP") and not allows(policies, server, node, 3000)


def test_egress_without_the_api_server_fails_clearly():
    """Egress on without networkPolicy.egress.kubeApi would cut the nodes off the API server:
    the install fails naming the value."""
    with pytest.raises(helm.HelmRenderError, match=re.escape("networkPolicy.egress.kubeApi")):
        render({"networkPolicy": {"egress": {"enabled": True}}})


def test_kind_nodeport_reaches_the_leader_but_pods_do_not(objects_of):
    """kind: the host's requests arrive at the leader from a kind node's address (NodePort
    traffic is masqueraded), which the kind values admit; other pods of the cluster still do not
    reach the node port."""
    objects = objects_of("kind")
    policies, node = _policies(objects), _pods(objects)["node"]
    kind_node = Pod({}, "default", ip="172.18.0.3")
    assert allows(policies, kind_node, node, 3000)
    assert not allows(policies, Pod({"app": "curl"}, NAMESPACE, ip="10.244.2.9"), node, 3000)
