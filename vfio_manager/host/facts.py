"""What the preflight reads, read once into :class:`HostFacts`: the checks of
:mod:`vfio_manager.host.preflight` are pure functions of it, tested on facts alone."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Optional

from vfio_manager.host.driver_choice import DriverResolver
from vfio_manager.host.dynamic_ids import DynamicId, configured_ids, dynamic_ids
from vfio_manager.host.files import HostFiles
from vfio_manager.host.modalias import AliasTable
from vfio_manager.host.modules import MODULE_CONFIG, ModuleInfo, ModuleInventory
from vfio_manager.host.summary import HostSummary
from vfio_manager.kernel.model import PciFunction
from vfio_manager.kernel.sysfs import Sysfs

# config options that explain the IOMMU and vfio state; the rest of the config is dropped
_CONFIG_KEYS = re.compile(r"^CONFIG_\w*(IOMMU|VFIO|DMAR)\w*$")
# a run of non-blanks and double-quoted text (an unclosed quote runs to the end)
_TOKEN = re.compile(r'(?:[^\s"]|"[^"]*"?)+')


def parse_cmdline(cmdline: Optional[str]) -> dict[str, list[str]]:
    """Argument name -> every value given, in order (``-`` and ``_`` are equal in names).
    Split like the kernel: on blanks, except inside double quotes (which are dropped)."""
    args: dict[str, list[str]] = {}
    for token in (t.replace('"', "") for t in _TOKEN.findall(cmdline or "")):
        if token == "--":  # noqa: S105 (the end of kernel arguments, not a password)
            break  # the rest goes to init
        if token:
            key, _, value = token.partition("=")
            args.setdefault(key.replace("-", "_"), []).append(value)
    return args


def last_flag(args: Mapping[str, Sequence[str]], key: str, flags: Sequence[str]) -> Optional[str]:
    """The last of ``flags`` named in any value of ``key`` (``intel_iommu=on,sm_on`` -> on)."""
    found: Optional[str] = None
    for value in args.get(key, ()):
        for part in value.split(","):
            if part in flags:
                found = part
    return found


@dataclass(frozen=True)
class FunctionFacts:
    """What the checks need about one selected function."""

    bdf: str
    ids: str
    iommu_group: Optional[int]
    variant_module: Optional[str] = None
    variant: Optional[ModuleInfo] = None
    variant_driver: Optional[str] = None  # the registered PCI driver of the variant module


@dataclass(frozen=True)
class HostFacts:
    """Everything the checks read, read once."""

    sysfs_root: str
    dev_root: str
    host_root: str
    release: str
    iommu_groups: int
    iommu_units: tuple[str, ...]
    acpi_tables: Optional[frozenset[str]]  # of DMAR/IVRS; None when the table dir is not visible
    cmdline: Optional[str]
    config_source: Optional[str]
    config: Mapping[str, str]
    cpu_vendor: Optional[str]
    noiommu_param: Optional[str]
    noiommu_nodes: tuple[str, ...]
    noiommu_options: tuple[str, ...]
    modules: Mapping[str, ModuleInfo]
    modules_dir: str
    vfio_pci_registered: bool
    dev_vfio_dir: bool
    vfio_container: bool
    iommufd_node: bool
    functions: tuple[FunctionFacts, ...] = ()
    selection: str = "the selection"
    dynamic_ids: tuple[DynamicId, ...] = ()  # selected functions vfio holds by a dynamic ID
    vfio_ids_config: tuple[str, ...] = ()  # vfio-pci.ids= naming a selected function's ID

    @property
    def args(self) -> dict[str, list[str]]:
        return parse_cmdline(self.cmdline)

    @property
    def kernel_version(self) -> tuple[int, int]:
        match = re.match(r"(\d+)\.(\d+)", self.release)
        return (int(match.group(1)), int(match.group(2))) if match else (0, 0)

    def path(self, root: str, *parts: str) -> str:
        return "/".join([root.rstrip("/"), *parts]) if root != "/" else "/" + "/".join(parts)


def gather(
    sysfs: Sysfs,
    host: HostFiles,
    functions: Sequence[PciFunction],
    aliases: Optional[AliasTable],
    driver_modules: Mapping[str, Optional[str]],
    selection: str,
) -> HostFacts:
    """Read everything the checks use, each file once. Reads only."""
    cmdline = host.cmdline()
    args = parse_cmdline(cmdline)
    inventory = ModuleInventory(sysfs, host, cmdline_args=args)
    summary = HostSummary.read(sysfs)
    vfio_module = sysfs.module_dir("vfio")
    noiommu_options = tuple(
        f"{path}:{number}: {line}"
        for path, number, line in inventory.modprobe_config
        if line.split()[:2] == ["options", "vfio"] and "enable_unsafe_noiommu_mode" in line
    )
    # the same answer bind gets (``aliases`` is None only when no function is selected)
    resolver = DriverResolver(driver_modules, aliases or AliasTable(b""), sysfs)
    variants: dict[str, tuple[ModuleInfo, Optional[str]]] = {}
    selected: list[FunctionFacts] = []
    for f in functions:
        variant = resolver.variant_module(f)
        if variant is not None and variant not in variants:
            variants[variant] = (inventory.info(variant), resolver.driver_for_module(variant))
        info, driver = variants.get(variant or "", (None, None))
        ids = f"{f.vendor:04x}:{f.device:04x}"
        selected.append(FunctionFacts(f.bdf, ids, f.iommu_group, variant, info, driver))
    selected_ids = {s.ids for s in selected}
    return HostFacts(
        sysfs_root=sysfs.root,
        dev_root=sysfs.dev_root,
        host_root=host.root,
        release=host.release,
        iommu_groups=summary.iommu_groups,
        iommu_units=summary.iommu_units,
        acpi_tables=sysfs.acpi_tables("DMAR", "IVRS"),
        cmdline=cmdline,
        config_source=inventory.config_source,
        config={k: v for k, v in inventory.config.items() if _CONFIG_KEYS.match(k)},
        cpu_vendor=host.cpu_vendor(),
        noiommu_param=sysfs.read_text(f"{vfio_module}/parameters/enable_unsafe_noiommu_mode"),
        noiommu_nodes=summary.noiommu_nodes,
        noiommu_options=noiommu_options,
        modules={n: inventory.info(n) for n in MODULE_CONFIG},
        modules_dir=host.modules_dir(),
        vfio_pci_registered=summary.vfio_pci_registered,
        dev_vfio_dir=os.path.isdir(sysfs.dev_path("vfio")),
        vfio_container=os.path.exists(sysfs.dev_path("vfio/vfio")),
        iommufd_node=os.path.exists(sysfs.dev_path("iommu")),
        functions=tuple(selected),
        selection=selection,
        dynamic_ids=tuple(dynamic_ids(functions)),
        vfio_ids_config=tuple(configured_ids(args, inventory.modprobe_config, selected_ids)),
    )
