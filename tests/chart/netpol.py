"""A NetworkPolicy evaluator for the chart tests: whether rendered policies let one pod reach
another on a port, following the Kubernetes rules (concepts/services-networking/network-policies):
a pod is isolated in a direction once any policy of its namespace selects it with that policy
type; an isolated pod accepts a connection that some rule of some selecting policy allows; a rule
allows when one of its ports matches (no ports: every port) and one of its peers matches (no
peers: everyone); a peer with only a podSelector means pods of the policy's namespace, with only
a namespaceSelector every pod of those namespaces, with both the pods matching in those
namespaces, and an ipBlock an address range. A connection needs both the source's egress and the
destination's ingress."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]


@dataclass(frozen=True)
class Pod:
    """A pod as the policies see it: its labels, namespace (with the namespace's labels), IP and
    named container ports."""

    labels: dict[str, str]
    namespace: str
    namespace_labels: dict[str, str] = field(default_factory=dict)
    ip: str = "10.244.0.10"
    named_ports: dict[str, int] = field(default_factory=dict)


def _expression(expr: Obj, labels: dict[str, str]) -> bool:
    key, op, values = expr["key"], expr["operator"], expr.get("values", [])
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    raise ValueError(f"unknown operator {op}")


def selects(selector: Obj | None, labels: dict[str, str]) -> bool:
    """A LabelSelector: every matchLabels pair and every matchExpression holds ({} matches all)."""
    selector = selector or {}
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()) and all(
        _expression(e, labels) for e in selector.get("matchExpressions") or [])


def _peer(peer: Obj, policy_ns: str, other: Pod) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        ip = ipaddress.ip_address(other.ip)
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", []))
    if "namespaceSelector" in peer:
        in_ns = selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": other.namespace,
                                                    **other.namespace_labels})
    else:
        in_ns = other.namespace == policy_ns
    return in_ns and selects(peer.get("podSelector"), other.labels)


def _port(ports: list[Obj] | None, target: Pod, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        want = p.get("port")
        if want is None:
            return True
        number = target.named_ports.get(want) if isinstance(want, str) else want
        if number == port or (p.get("endPort") and number <= port <= p["endPort"]):
            return True
    return False


def _selecting(policies: list[Obj], pod: Pod, kind: str) -> list[Obj]:
    out = []
    for p in policies:
        spec = p["spec"]
        types = spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))
        if p["metadata"]["namespace"] == pod.namespace and kind in types and selects(spec["podSelector"], pod.labels):
            out.append(p)
    return out


def ingress_allows(policies: list[Obj], src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    """Whether dst's ingress policies accept src on port/protocol."""
    selecting = _selecting(policies, dst, "Ingress")
    if not selecting:
        return True
    for p in selecting:
        for rule in p["spec"].get("ingress") or []:
            peers = rule.get("from")
            if _port(rule.get("ports"), dst, port, protocol) and (
                    not peers or any(_peer(peer, p["metadata"]["namespace"], src) for peer in peers)):
                return True
    return False


def egress_allows(policies: list[Obj], src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    """Whether src's egress policies let it reach dst on port/protocol."""
    selecting = _selecting(policies, src, "Egress")
    if not selecting:
        return True
    for p in selecting:
        for rule in p["spec"].get("egress") or []:
            peers = rule.get("to")
            if _port(rule.get("ports"), dst, port, protocol) and (
                    not peers or any(_peer(peer, p["metadata"]["namespace"], dst) for peer in peers)):
                return True
    return False


def allows(policies: list[Obj], src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    """Whether a connection from src to dst on port/protocol gets through both ends' policies."""
    return egress_allows(policies, src, dst, port, protocol) and ingress_allows(policies, src, dst, port, protocol)
