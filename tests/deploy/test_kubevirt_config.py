"""kubevirt-config: the pure entries and text (golden files), and the command on a fake node.

Golden files live in tests/deploy/golden/kubevirt-config; after an intended change of the
output, rewrite them with ``VFIO_MANAGER_UPDATE_GOLDEN=1 pytest tests/deploy`` and review the
diff. Beyond the bytes, every case is also checked for what makes it usable: the YAML is
valid YAML equal to the JSON, and every resource name is a valid Kubernetes extended
resource name.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml
from click.testing import CliRunner

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import root_args
from vfio_manager.cli import kubevirt
from vfio_manager.cli.main import cli
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.catalogue import catalogue_entries
from vfio_manager.kernel.model import PciFunction

GOLDEN = Path(__file__).parent / "golden" / "kubevirt-config"
UPDATE = os.environ.get("VFIO_MANAGER_UPDATE_GOLDEN") == "1"
# Kubernetes extended resource: a DNS subdomain prefix, "/", a qualified name of <= 63 chars
QUALIFIED_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def _function(
    bdf: str, vendor: int, device: int, physfn: Optional[str] = None, numvfs: int = 0
) -> PciFunction:
    return PciFunction(
        address=PciAddress.parse(bdf),
        vendor=vendor,
        device=device,
        pci_class=0x120000 if vendor == 0x1EFF else 0x020000,
        physfn=PciAddress.parse(physfn) if physfn else None,
        sriov_numvfs=numvfs,
    )


# A mixed node: two CA22 PFs, a CA25 PF with two VFs, a CR03, an uncatalogued PF and VF,
# and a NIC that is not Rebellions'. Listed out of address order on purpose.
MIXED_NODE = [
    _function("0000:5e:00.0", 0x1EFF, 0x1220),
    _function("0000:3b:00.0", 0x1EFF, 0x1220),
    _function("0000:86:00.0", 0x1EFF, 0x1250, numvfs=2),
    _function("0000:86:00.1", 0x1EFF, 0x1251, physfn="0000:86:00.0"),
    _function("0000:86:00.2", 0x1EFF, 0x1251, physfn="0000:86:00.0"),
    _function("0000:af:00.0", 0x1EFF, 0x2030),
    _function("0000:d8:00.0", 0x1EFF, 0x1FF0),
    _function("0000:d8:00.1", 0x1EFF, 0x1FF1, physfn="0000:d8:00.0"),
    _function("0000:00:19.0", 0x8086, 0x10D3),
]

CASES: dict[str, tuple[list[kubevirt.PciHostDevice], str, str]] = {
    "all-products-atom.yaml": (kubevirt.for_catalogue("atom"), "yaml", "atom"),
    "all-products-atom.json": (kubevirt.for_catalogue("atom"), "json", "atom"),
    "all-products-pf.yaml": (kubevirt.for_catalogue("pf"), "yaml", "pf"),
    "all-products-pf.json": (kubevirt.for_catalogue("pf"), "json", "pf"),
    "mixed-node-atom.yaml": (kubevirt.for_functions(MIXED_NODE, "atom"), "yaml", "atom"),
    "mixed-node-pf.yaml": (kubevirt.for_functions(MIXED_NODE, "pf"), "yaml", "pf"),
    "mixed-node-pf.json": (kubevirt.for_functions(MIXED_NODE, "pf"), "json", "pf"),
    "empty.yaml": ([], "yaml", "atom"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_matches_its_golden_file(name: str) -> None:
    entries, output_format, naming = CASES[name]
    text = kubevirt.render(entries, output_format, naming=naming)
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text, encoding="utf-8")
    assert path.read_text(encoding="utf-8") == text, f"VFIO_MANAGER_UPDATE_GOLDEN=1 rewrites {path}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_yaml_is_valid_yaml_equal_to_the_json(name: str) -> None:
    entries, _, naming = CASES[name]
    from_yaml = yaml.safe_load(kubevirt.render(entries, "yaml", naming=naming))
    from_json = json.loads(kubevirt.render(entries, "json", naming=naming))
    assert from_yaml == from_json == kubevirt.document(entries)


@pytest.mark.parametrize("naming", kubevirt.NAMINGS)
def test_every_name_is_a_valid_extended_resource_name(naming: str) -> None:
    entries = kubevirt.for_catalogue(naming) + kubevirt.for_functions(MIXED_NODE, naming)
    for entry in entries:
        prefix, _, name = entry.resource_name.partition("/")
        assert prefix == "rebellions.ai"
        assert QUALIFIED_NAME.match(name), entry.resource_name
        assert len(name) <= 63, entry.resource_name
        assert re.fullmatch(r"[0-9A-F]{4}:[0-9A-F]{4}", entry.pci_vendor_selector)


def test_names_the_sandbox_device_plugin_advertises() -> None:
    # rebellions-and-peers.md: ATOM_CA22_PT (card lists), RBLN-CA25_PF / _VF (newer plugin)
    assert kubevirt.resource_name(0x1220, "atom") == "rebellions.ai/ATOM_CA22_PT"
    assert kubevirt.resource_name(0x1221, "atom") == "rebellions.ai/ATOM_CA22_PT"
    assert kubevirt.resource_name(0x2030, "atom") == "rebellions.ai/REBEL_CR03_PT"
    assert kubevirt.resource_name(0x1250, "pf") == "rebellions.ai/RBLN-CA25_PF"
    assert kubevirt.resource_name(0x1251, "pf") == "rebellions.ai/RBLN-CA25_VF"


def test_catalogue_gives_one_entry_per_device_id_and_pf_vf_split_by_naming() -> None:
    ids = [e.device for e in catalogue_entries()]
    for naming in kubevirt.NAMINGS:
        assert [e.device for e in kubevirt.for_catalogue(naming)] == ids
        assert all(
            e.catalogued and e.to_kubevirt()["externalResourceProvider"]
            for e in kubevirt.for_catalogue(naming)
        )
    atom = {e.resource_name for e in kubevirt.for_catalogue("atom")}
    pf = {e.resource_name for e in kubevirt.for_catalogue("pf")}
    products = {e.product for e in catalogue_entries()}
    assert len(atom) == len(products)  # a card's PF and VF share its name
    assert len(pf) == len(ids)  # one name per product and kind


def test_present_functions_are_deduplicated_sorted_and_rebellions_only() -> None:
    entries = kubevirt.for_functions(MIXED_NODE, "pf")
    assert [e.device for e in entries] == [0x1220, 0x1250, 0x1251, 0x1FF0, 0x1FF1, 0x2030]
    by_id = {e.device: e for e in entries}
    assert not by_id[0x1FF0].catalogued
    assert by_id[0x1FF0].resource_name == "rebellions.ai/RBLN-1FF0_PF"
    assert by_id[0x1FF1].resource_name == "rebellions.ai/RBLN-1FF1_VF"  # told by physfn
    assert by_id[0x1220].catalogued


def test_unknown_naming_or_format_is_refused() -> None:
    with pytest.raises(ValueError, match="naming"):
        kubevirt.for_catalogue("gpu")
    with pytest.raises(ValueError, match="format"):
        kubevirt.render([], "toml", naming="atom")


# -- the command, on the fake kernel --------------------------------------------------------
@pytest.fixture
def kubevirt_cli() -> Any:
    """The real ``cli`` group, which has ``kubevirt-config``."""
    return cli


def _invoke(group: Any, kernel: FakeKernel, *args: str) -> Any:
    return CliRunner().invoke(
        group, [*root_args(kernel), "kubevirt-config", *args], catch_exceptions=False
    )


def test_command_lists_the_npus_present(kernel: FakeKernel, kubevirt_cli: Any) -> None:
    npu_node(kernel, count=2, device=0x1220)
    result = _invoke(kubevirt_cli, kernel)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == kubevirt.render(
        [kubevirt.PciHostDevice(0x1EFF, 0x1220, "rebellions.ai/ATOM_CA22_PT", True)],
        "yaml",
        naming="atom",
    )
    as_json = _invoke(kubevirt_cli, kernel, "--naming", "pf", "--format", "json")
    assert as_json.exit_code == 0
    assert json.loads(as_json.stdout)["permittedHostDevices"]["pciHostDevices"] == [
        {
            "pciVendorSelector": "1EFF:1220",
            "resourceName": "rebellions.ai/RBLN-CA22_PF",
            "externalResourceProvider": True,
        }
    ]


def test_command_warns_about_uncatalogued_ids(kernel: FakeKernel, kubevirt_cli: Any) -> None:
    npu_node(kernel, count=1, device=0x1FF0)
    result = _invoke(kubevirt_cli, kernel, "--format", "json")
    assert result.exit_code == 0
    assert "1EFF:1FF0 is not a catalogued product" in result.stderr
    assert "RBLN_1FF0_PT" in result.stdout


def test_command_without_npus_fails_instead_of_printing_an_empty_list(
    kernel: FakeKernel, kubevirt_cli: Any
) -> None:
    npu_node(kernel, count=0)
    result = _invoke(kubevirt_cli, kernel)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "--all-products" in result.stderr
    everything = _invoke(kubevirt_cli, kernel, "--all-products", "--format", "json")
    assert everything.exit_code == 0
    assert json.loads(everything.stdout) == kubevirt.document(kubevirt.for_catalogue("atom"))


def test_command_honours_the_selection(kernel: FakeKernel, kubevirt_cli: Any) -> None:
    npu_node(kernel, count=1, device=0x1220)
    result = _invoke(kubevirt_cli, kernel, "--device-id", "0x1250")
    assert result.exit_code == 1
    assert "device 0x1250" in result.stderr
    bad = _invoke(kubevirt_cli, kernel, "--naming", "gpu")
    assert bad.exit_code == 2
