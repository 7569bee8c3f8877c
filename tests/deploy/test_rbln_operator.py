"""deploy/kubernetes/rbln-operator: the operator's Helm values and RBLNClusterPolicy patch.

Neither is a Kubernetes kind kubernetes-validate knows, so each is checked for what it must
achieve, against facts of the operator (rebellions-and-peers.md and its source: the chart's
value names, its card-to-device-ID table, its DaemonSet's node selector).
"""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.deploy import kustomize
from tests.deploy.manifests import DEPLOY, KUBERNETES_VERSIONS, KUBEVIRT_DIR
from vfio_manager.cli import kubevirt

OPERATOR_DIR = DEPLOY / "rbln-operator"
# the operator's product cards and the device IDs each covers (its DeviceMapping)
OPERATOR_CARDS = {
    "RBLN-CA12": (0x1120, 0x1121),
    "RBLN-CA22": (0x1220, 0x1221),
    "RBLN-CA25": (0x1250, 0x1251),
    "RBLN-CR03": (0x2030, 0x2031),
}
# the node selector of the operator's vfio-manager DaemonSet (and of ours)
OPERATOR_NODE_SELECTOR = {"rebellions.ai/npu.deploy.vfio-manager": "true"}

(VALUES,) = kustomize.load_documents(OPERATOR_DIR / "values-vfio-manager.yaml")
(POLICY_PATCH,) = kustomize.load_documents(OPERATOR_DIR / "clusterpolicy-patch.yaml")


def test_every_file_here_is_checked() -> None:
    files = {p.name for p in OPERATOR_DIR.iterdir()}
    assert files == {"values-vfio-manager.yaml", "clusterpolicy-patch.yaml"}


def test_values_keep_the_configmap_and_use_one_image_for_both_slots() -> None:
    assert VALUES["vfioManager"]["enabled"] is True
    assert VALUES["sandboxDevicePlugin"]["enabled"] is True
    manager = VALUES["vfioManager"]["image"]
    checker = VALUES["sandboxDevicePlugin"]["vfioChecker"]["image"]
    assert set(manager) == set(checker) == {"registry", "repository", "tag"}
    assert manager == checker
    assert isinstance(manager["tag"], str)


def test_resource_list_names_match_kubevirt_config_and_the_kubevirt_patch() -> None:
    (patch,) = kustomize.load_documents(KUBEVIRT_DIR / "kubevirt-cr-patch.yaml")
    permitted = {
        e["resourceName"]
        for e in patch["spec"]["configuration"]["permittedHostDevices"]["pciHostDevices"]
    }
    cards_seen = set()
    for resource in VALUES["sandboxDevicePlugin"]["resourceList"]:
        assert set(resource) == {"productCardNames", "resourceName", "resourcePrefix"}
        name = f"{resource['resourcePrefix']}/{resource['resourceName']}"
        assert name in permitted
        for card in resource["productCardNames"]:
            assert card in OPERATOR_CARDS, f"the operator does not know {card}"
            cards_seen.add(card)
            for device in OPERATOR_CARDS[card]:
                assert kubevirt.resource_name(device, "atom") == name
    assert cards_seen == set(OPERATOR_CARDS)


def _term_matches(term: dict[str, Any], labels: dict[str, str]) -> bool:
    for expression in term["matchExpressions"]:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not ok:
            return False
    return True


def _schedulable(affinity: dict[str, Any], labels: dict[str, str]) -> bool:
    """nodeSelector AND any required nodeSelectorTerm, as the DaemonSet controller decides."""
    if any(labels.get(k) != v for k, v in OPERATOR_NODE_SELECTOR.items()):
        return False
    required = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    return any(_term_matches(t, labels) for t in required["nodeSelectorTerms"])


@pytest.mark.parametrize(
    "labels",
    [
        {"rebellions.ai/npu.deploy.vfio-manager": "true"},
        {"rebellions.ai/npu.deploy.vfio-manager": "true", "rebellions.ai/npu.present": "true"},
        {"rebellions.ai/npu.deploy.vfio-manager": "false"},
        {},
    ],
)
def test_policy_patch_keeps_the_operators_daemonset_off_every_node(labels: dict[str, str]) -> None:
    affinity = POLICY_PATCH["spec"]["vfioManager"]["affinity"]
    assert not _schedulable(affinity, labels)


def test_evaluator_would_schedule_without_the_patch() -> None:
    """The selector test above can fail: an affinity that allows the node is seen to."""
    allow = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "rebellions.ai/npu.deploy.vfio-manager", "operator": "Exists"}
                        ]
                    }
                ]
            }
        }
    }
    assert _schedulable(allow, {"rebellions.ai/npu.deploy.vfio-manager": "true"})


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_policy_patch_affinity_is_a_valid_core_affinity(version: str) -> None:
    """Embedded in a Pod, the affinity passes the core/v1 schema (the CRD reuses the type)."""
    assert set(POLICY_PATCH) == {"spec"}
    assert set(POLICY_PATCH["spec"]) == {"vfioManager"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "affinity-probe"},
        "spec": {
            "containers": [{"name": "c", "image": "x"}],
            "affinity": POLICY_PATCH["spec"]["vfioManager"]["affinity"],
        },
    }
    kubernetes_validate.validate(pod, version, strict=True)
