"""The metrics port is reachable only as the NetworkPolicy admits: checked by evaluating the
rendered policies with Kubernetes' NetworkPolicy rules (a small model of them, below).

The model: a pod selected by a policy with Ingress (Egress) in its policyTypes is isolated in
that direction; an isolated pod accepts a connection that some selecting policy's rule
admits (any peer matches, any port matches; an absent list matches everything); a peer with
only a namespaceSelector matches pods of the namespaces it selects; traffic from the pod's
own node (kubelet's probes) is always admitted. Without a CNI that enforces policies none of
this holds: docs/kubernetes.md says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import pytest

from tests.deploy.manifests import RENDERED, kustomizations, the


@dataclass(frozen=True)
class Source:
    namespace: str
    labels: dict[str, str]
    node: bool = False  # the destination pod's own node (kubelet)

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {"kubernetes.io/metadata.name": self.namespace}  # set by the API server


def _matches(selector: Optional[dict[str, Any]], labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        ok = {
            "In": key in labels and labels[key] in (values or []),
            "NotIn": key not in labels or labels[key] not in (values or []),
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def _peer_matches(peer: dict[str, Any], source: Source, namespace: str) -> bool:
    if "ipBlock" in peer:
        raise AssertionError("ipBlock peers are not modelled")
    if "namespaceSelector" in peer:
        if not _matches(peer["namespaceSelector"], source.namespace_labels):
            return False
    elif source.namespace != namespace:  # a podSelector alone: the policy's namespace
        return False
    return _matches(peer.get("podSelector"), source.labels)


def _port_matches(rule_port: dict[str, Any], port: int, named: dict[str, int]) -> bool:
    if rule_port.get("protocol", "TCP") != "TCP":
        return False
    value = rule_port.get("port")
    if value is None:
        return True
    return (named.get(value) if isinstance(value, str) else value) == port


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str]
    ports: dict[str, int]  # named container ports


def admits(objects: list[dict[str, Any]], pod: Pod, source: Source, port: int) -> bool:
    """Whether a TCP connection from ``source`` to ``pod``:``port`` is admitted."""
    if source.node:
        return True
    selecting = [
        p for p in objects
        if p["kind"] == "NetworkPolicy"
        and p["metadata"]["namespace"] == pod.namespace
        and _matches(p["spec"]["podSelector"], pod.labels)
        and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
    ]  # fmt: skip
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            peers = rule.get("from")
            ports = rule.get("ports")
            if (peers is None or any(_peer_matches(p, source, pod.namespace) for p in peers)) and (
                ports is None or any(_port_matches(p, port, pod.ports) for p in ports)
            ):
                return True
    return False


def egress_isolated(objects: list[dict[str, Any]], pod: Pod) -> bool:
    """Selected for Egress with no egress rule: no connection out."""
    selecting = [
        p for p in objects
        if p["kind"] == "NetworkPolicy"
        and p["metadata"]["namespace"] == pod.namespace
        and _matches(p["spec"]["podSelector"], pod.labels)
        and "Egress" in p["spec"].get("policyTypes", [])
    ]  # fmt: skip
    return bool(selecting) and not any(p["spec"].get("egress") for p in selecting)


def _daemon_pod(objects: list[dict[str, Any]]) -> Pod:
    daemonset = the(objects, "DaemonSet", "vfio-manager")
    template = daemonset["spec"]["template"]
    (container,) = template["spec"]["containers"]
    return Pod(
        daemonset["metadata"]["namespace"],
        template["metadata"]["labels"],
        {p["name"]: p["containerPort"] for p in container["ports"]},
    )


PROMETHEUS = Source("monitoring", {"app.kubernetes.io/name": "prometheus"})
ELSEWHERE = [
    Source("default", {"app": "anything"}),
    Source("kube-system", {"k8s-app": "kube-dns"}),
    Source("vfio-manager", {"app.kubernetes.io/name": "vfio-manager"}),  # a neighbour pod
    Source("kubevirt", {"kubevirt.io": "virt-launcher"}),  # a VM's pod
]


@pytest.mark.parametrize("directory", kustomizations())
def test_only_the_monitoring_namespace_reaches_the_metrics_port(directory: str) -> None:
    objects = RENDERED[directory]
    pod = _daemon_pod(objects)
    metrics = pod.ports["metrics"]
    assert admits(objects, pod, PROMETHEUS, metrics)
    for source in ELSEWHERE:
        assert not admits(objects, pod, source, metrics), source
    # and no other port of the pod is open to anyone, Prometheus included
    for source in [PROMETHEUS, *ELSEWHERE]:
        assert not admits(objects, pod, source, metrics + 1), source
    assert set(pod.ports) == {"metrics"}


@pytest.mark.parametrize("directory", kustomizations())
def test_kubelet_probes_pass_and_the_pod_opens_no_connection(directory: str) -> None:
    objects = RENDERED[directory]
    pod = _daemon_pod(objects)
    spec = the(objects, "DaemonSet", "vfio-manager")["spec"]["template"]["spec"]
    assert not spec.get("hostNetwork")  # a hostNetwork pod is outside NetworkPolicy
    assert admits(objects, pod, Source("", {}, node=True), pod.ports["metrics"])
    assert egress_isolated(objects, pod)


def test_without_the_policy_the_port_is_open_to_every_pod() -> None:
    """The check can fail: the same evaluation without the policy admits everyone."""
    objects = [o for o in RENDERED["base"] if o["kind"] != "NetworkPolicy"]
    pod = _daemon_pod(objects)
    for source in ELSEWHERE:
        assert admits(objects, pod, source, pod.ports["metrics"])
    assert not egress_isolated(objects, pod)


def test_the_namespace_is_the_one_knob() -> None:
    """Prometheus elsewhere: one value in the policy to change, documented there."""
    policy = the(RENDERED["base"], "NetworkPolicy", "vfio-manager")
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
