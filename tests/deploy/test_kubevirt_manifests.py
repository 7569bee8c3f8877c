"""deploy/kubernetes/kubevirt: the KubeVirt CR patch and the sample VM, checked structurally.

kubernetes-validate has schemas for Kubernetes' own kinds only (kubevirt.io is a CRD), and
KubeVirt's OpenAPI document is not packaged on PyPI or in Debian; so these are checked here
for what KubeVirt acts on: the field names and shapes it reads, the feature gate, and that
every device the VM asks for is one the CR permits under the name kubevirt-config prints.
"""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest

from tests.deploy import kustomize
from tests.deploy.manifests import KUBERNETES_VERSIONS, KUBEVIRT_DIR
from vfio_manager.cli import kubevirt

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
RUN_STRATEGIES = {"Always", "RerunOnFailure", "Manual", "Halted", "Once", "WaitAsReceiver"}
VOLUME_SOURCES = {
    "containerDisk",
    "cloudInitNoCloud",
    "cloudInitConfigDrive",
    "persistentVolumeClaim",
    "dataVolume",
    "emptyDisk",
    "ephemeral",
    "hostDisk",
    "configMap",
    "secret",
    "serviceAccount",
    "sysprep",
    "downwardAPI",
    "downwardMetrics",
    "memoryDump",
}
PCI_ENTRY_KEYS = {"pciVendorSelector", "resourceName", "externalResourceProvider"}


def _load(name: str) -> dict[str, Any]:
    (doc,) = kustomize.load_documents(KUBEVIRT_DIR / name)
    return doc


PATCH = _load("kubevirt-cr-patch.yaml")
VM = _load("virtualmachine-sample.yaml")


def _permitted() -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = PATCH["spec"]["configuration"]["permittedHostDevices"][
        "pciHostDevices"
    ]
    return entries


def test_every_kubevirt_file_is_checked_here() -> None:
    files = {p.name for p in KUBEVIRT_DIR.iterdir() if p.suffix in {".yaml", ".yml"}}
    assert files == {"kubevirt-cr-patch.yaml", "virtualmachine-sample.yaml"}


def test_kubernetes_validate_has_no_schema_for_them() -> None:
    """The reason they are checked structurally here (if this fails, validate them there)."""
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(VM, KUBERNETES_VERSIONS[-1], strict=True)


def test_patch_enables_host_devices_and_touches_nothing_else() -> None:
    assert set(PATCH) == {"spec"}
    assert set(PATCH["spec"]) == {"configuration"}
    configuration = PATCH["spec"]["configuration"]
    assert set(configuration) == {"developerConfiguration", "permittedHostDevices"}
    assert configuration["developerConfiguration"] == {"featureGates": ["HostDevices"]}
    assert set(configuration["permittedHostDevices"]) == {"pciHostDevices"}


def test_patch_lists_what_kubevirt_config_prints_for_every_product() -> None:
    expected = kubevirt.document(kubevirt.for_catalogue("atom"))["permittedHostDevices"]
    assert _permitted() == expected["pciHostDevices"]
    for entry in _permitted():
        assert set(entry) == PCI_ENTRY_KEYS
        assert re.fullmatch(r"[0-9A-F]{4}:[0-9A-F]{4}", entry["pciVendorSelector"])
        assert entry["externalResourceProvider"] is True


def test_sample_vm_is_a_well_formed_kubevirt_virtual_machine() -> None:
    assert VM["apiVersion"] == "kubevirt.io/v1"
    assert VM["kind"] == "VirtualMachine"
    assert DNS_LABEL.match(VM["metadata"]["name"])
    spec = VM["spec"]
    assert set(spec) <= {
        "runStrategy",
        "template",
        "dataVolumeTemplates",
        "instancetype",
        "preference",
    }
    assert spec["runStrategy"] in RUN_STRATEGIES
    template = spec["template"]["spec"]
    domain = template["domain"]
    assert "guest" in domain.get("memory", {}) or "memory" in domain.get("resources", {}).get(
        "requests", {}
    )
    disks = domain["devices"]["disks"]
    volumes = {v["name"]: v for v in template["volumes"]}
    assert {d["name"] for d in disks} == set(volumes)
    for volume in volumes.values():
        sources = set(volume) - {"name"}
        assert len(sources) == 1
        assert sources <= VOLUME_SOURCES


def test_sample_vm_asks_for_a_device_the_patch_permits() -> None:
    devices = VM["spec"]["template"]["spec"]["domain"]["devices"]["hostDevices"]
    permitted = {e["resourceName"] for e in _permitted()}
    assert [d["deviceName"] for d in devices] == ["rebellions.ai/ATOM_CA22_PT"]
    names = [d["name"] for d in devices]
    assert len(set(names)) == len(names)
    for device in devices:
        assert set(device) <= {"name", "deviceName", "tag"}
        assert DNS_LABEL.match(device["name"])
        assert device["deviceName"] in permitted
