"""kernel/inventory: one ``modalias`` read gives a function's IDs and class.

``modalias`` (``pci:vVVVVVVVVdDDDDDDDDsvSSSSSSSSsdSSSSSSSSbcBBscSSiII``) is formatted by the
kernel from the same ``pci_dev`` fields as ``vendor``, ``device``, ``class`` and
``subsystem_*``, without taking the device lock. Reading it instead of five files is what
lets ``status --json`` list 4,096 functions within budget; these tests pin that the result
is the same, that odd content falls back to the separate files, never to a wrong ID, and
that where a write may follow the separate files stay the authority.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.inventory import parse_modalias, read_function, read_topology
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.pipeline.selection import Selector


def _counting(sysfs: Sysfs) -> list[str]:
    """Record the path of every file ``sysfs`` opens for reading."""
    opened: list[str] = []
    plain: Callable[[str], Optional[str]] = Sysfs.read_text

    def read_text(path: str) -> Optional[str]:
        opened.append(path)
        return plain(path)

    sysfs.read_text = read_text  # type: ignore[method-assign]
    return opened


def _rewrite(fs: FakeFilesystem, kernel: FakeKernel, bdf: str, name: str, text: str) -> None:
    path = kernel.sys_path(f"{kernel.function(bdf).path}/{name}")
    fs.remove_object(path)
    fs.create_file(path, contents=text + "\n")


def test_parse_modalias_reads_every_field() -> None:
    ids = parse_modalias("pci:v00001EFFd00001220sv00001EFFsd00000001bc12sc00i00")
    assert ids == (0x1EFF, 0x1220, 0x1EFF, 0x0001, 0x120000)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "usb:v1D6Bp0002d0606dc09dsc00dp03ic09isc00ip00in00",
        "pci:v00001EFFd00001220sv00001EFFsd00000001bc12sc00",  # truncated
        "pci:v0000XYZWd00001220sv00001EFFsd00000001bc12sc00i00",  # not hex
        "pci:v00001EFFd00001220sv00001EFFsd00000001bc12sc00i00extra",
        "pci:v0001EFFFd00001220sv00001EFFsd00000001bc12sc00i00",  # vendor beyond 16 bits
    ],
)
def test_parse_modalias_refuses_what_is_not_a_pci_modalias(text: Optional[str]) -> None:
    assert parse_modalias(text) is None


def test_a_function_read_from_modalias_matches_the_separate_files(kernel: FakeKernel) -> None:
    bdfs = npu_node(kernel, count=2)
    sysfs = Sysfs(kernel.sys_root, kernel.dev_root)
    for bdf in [*bdfs, *kernel.functions()]:
        fn = read_function(sysfs, PciAddress.parse(bdf))
        assert fn is not None
        model = kernel.function(bdf)
        assert (fn.vendor, fn.device, fn.pci_class) == (model.vendor, model.device, model.pci_class)
        assert (fn.subsystem_vendor, fn.subsystem_device) == (
            model.subsystem_vendor,
            model.subsystem_device,
        )
        assert fn.modalias == model.modalias


def test_a_function_not_selected_costs_one_file_read(kernel: FakeKernel) -> None:
    npu_node(kernel, count=2)
    sysfs = Sysfs(kernel.sys_root, kernel.dev_root)
    opened = _counting(sysfs)
    topology = read_topology(
        sysfs, wanted=Selector().matches, driver_ids=False, ids_from_modalias=True
    )
    others = [f.bdf for f in topology.functions.values() if not Selector().matches(f)]
    assert others, "the node has functions that are not NPUs"
    for bdf in others:
        assert [p.rsplit("/", 1)[-1] for p in opened if f"/{bdf}/" in p] == ["modalias"]
    assert not [p for p in opened if p.endswith(("/vendor", "/device", "/class"))]


@pytest.mark.parametrize(
    "garbage", ["", "pci:", "pci:vZZZZZZZZd00001220sv00001EFFsd00000001bc12sc00i00", "(null)"]
)
@pytest.mark.parametrize("ids_from_modalias", [True, False])
def test_odd_modalias_falls_back_to_the_id_files(
    fs: FakeFilesystem, kernel: FakeKernel, garbage: str, ids_from_modalias: bool
) -> None:
    bdf = npu_node(kernel, count=1)[0]
    _rewrite(fs, kernel, bdf, "modalias", garbage)
    sysfs = Sysfs(kernel.sys_root, kernel.dev_root)
    fn = read_function(sysfs, PciAddress.parse(bdf), ids_from_modalias=ids_from_modalias)
    model = kernel.function(bdf)
    assert fn is not None
    assert (fn.vendor, fn.device, fn.pci_class) == (model.vendor, model.device, model.pci_class)
    assert (fn.subsystem_vendor, fn.subsystem_device) == (
        model.subsystem_vendor,
        model.subsystem_device,
    )
    assert Selector().matches(fn)


def test_files_that_disagree_with_modalias_win_where_a_write_may_follow(
    fs: FakeFilesystem, kernel: FakeKernel
) -> None:
    """A real kernel never shows both; a corrupted or faked sysfs may. The write pipeline
    must not select a function on the modalias alone (tests/pipeline/test_bad_input.py)."""
    bdf = npu_node(kernel, count=1)[0]
    _rewrite(fs, kernel, bdf, "vendor", "0x8086")
    sysfs = Sysfs(kernel.sys_root, kernel.dev_root)
    written_for = read_function(sysfs, PciAddress.parse(bdf))
    assert written_for is not None
    assert written_for.vendor == 0x8086
    assert not Selector().matches(written_for)
    assert written_for.subsystem_vendor == kernel.function(bdf).subsystem_vendor
    shown = read_function(sysfs, PciAddress.parse(bdf), ids_from_modalias=True)
    assert shown is not None
    assert shown.vendor == 0x1EFF


def test_no_ids_anywhere_means_no_function(fs: FakeFilesystem, kernel: FakeKernel) -> None:
    bdf = npu_node(kernel, count=1)[0]
    _rewrite(fs, kernel, bdf, "modalias", "garbage")
    _rewrite(fs, kernel, bdf, "vendor", "not hex")
    sysfs = Sysfs(kernel.sys_root, kernel.dev_root)
    assert read_function(sysfs, PciAddress.parse(bdf)) is None
