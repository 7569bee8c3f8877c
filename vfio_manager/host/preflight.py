"""Is this host ready to give PCI functions to VMs? The checks behind ``check`` and the bind
gate: pure functions of :class:`HostFacts`, where live evidence decides and kernel arguments
and config only explain why. :func:`run` also loads missing loadable modules."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from vfio_manager.errors import HostNotReadyError
from vfio_manager.host.dynamic_ids import remove_id_remedy
from vfio_manager.host.facts import HostFacts, gather, last_flag
from vfio_manager.host.files import HostFiles
from vfio_manager.host.modules import (
    MODULE_CONFIG,
    LoadAttempt,
    ModuleInfo,
    ModuleState,
    load_modules,
)
from vfio_manager.kernel.drivers import VFIO_PCI
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.log import get_logger

if TYPE_CHECKING:
    from vfio_manager.host.modalias import AliasTable
    from vfio_manager.host.modules import Runner
    from vfio_manager.kernel.model import PciFunction, Topology

# remedies, asserted verbatim in tests
GRUB_STEPS = (
    "GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub (Debian/Ubuntu) or "
    "grub2-mkconfig -o /boot/grub2/grub.cfg (RHEL/Fedora), and reboot"
)
INTEL_REMEDY = (
    f"add intel_iommu=on to {GRUB_STEPS}; if it stays off, enable VT-d (Intel Virtualization "
    "Technology for Directed I/O) in the firmware (BIOS/UEFI) setup"
)
AMD_REMEDY = (
    "enable AMD-Vi/IOMMU (often labelled 'IOMMU' or 'AMD-Vi') in the firmware (BIOS/UEFI) "
    "setup and reboot; the AMD IOMMU is on by default, so no kernel argument is needed "
    "(amd_iommu=on is not a valid value)"
)
VM_HINT = "In a VM, give the guest a virtual IOMMU (QEMU: -machine q35 -device intel-iommu)"
CONTAINER_HOST_ROOT = (
    "mount the host's / into the container and pass --host-root (env HOST_ROOT), e.g. "
    "-v /:/host -e HOST_ROOT=/host, so the host's /lib/modules and modprobe are used"
)
CONTAINER_DEV = (
    "in a container, mount the host's /dev (e.g. -v /dev:/dev) or point --dev-root "
    "(env VFIO_MANAGER_DEV_ROOT) at it"
)
LOAD_REMEDY = (
    "run `vfio-manager check --load-modules` or `modprobe vfio-pci` on the host (bind and "
    "bind-all load them unless --no-load-modules); to load them at every boot, put vfio-pci "
    "in /etc/modules-load.d/vfio.conf"
)
NOIOMMU_REMEDY = (
    "no-IOMMU mode gives no DMA isolation and QEMU/libvirt cannot pass its groups to a VM: "
    "remove vfio.enable_unsafe_noiommu_mode from the kernel command line and any "
    "`options vfio enable_unsafe_noiommu_mode=1` from /etc/modprobe.d, enable the IOMMU, "
    "and reboot"
)
_INTEL_ALREADY_ON = (
    "intel_iommu=on is already set: enable VT-d (Intel Virtualization Technology for Directed "
    "I/O) in the firmware (BIOS/UEFI) setup and reboot; `dmesg | grep -e DMAR -e IOMMU` tells "
    "why the kernel left it off"
)
MODPROBE_MISSING_REMEDY = (
    "install kmod on the host (it provides modprobe), or " + CONTAINER_HOST_ROOT
)

_NOIOMMU_ARG = "vfio.enable_unsafe_noiommu_mode"
_TRUE = frozenset({"1", "y", "Y", "yes", "true", "on"})
INTEL, AMD = "intel", "amd"
_VENDOR_LABEL = {INTEL: "Intel VT-d", AMD: "AMD-Vi"}


@dataclass(frozen=True)
class Check:
    """One item of the checklist. ``load`` names modules whose loading would make it pass."""

    name: str
    title: str
    ok: bool
    detail: str
    remedy: Optional[str] = None
    evidence: tuple[str, ...] = ()
    load: tuple[str, ...] = ()
    advisory: bool = False  # a failure is a warning: the host is ready, binding goes ahead

    def to_json(self) -> dict[str, Any]:
        remedy = None if self.ok else self.remedy
        shown = {k: getattr(self, k) for k in ("name", "title", "ok", "advisory", "detail")}
        return {**shown, "remedy": remedy, "evidence": list(self.evidence)}


def _check(name: str, title: str) -> Callable[..., Check]:
    return functools.partial(Check, name, title)


def _load(*infos: ModuleInfo) -> tuple[str, ...]:
    """The modules to load for a check to pass: all of ``infos`` when all are loadable."""
    loadable = all(i.state is ModuleState.LOADABLE for i in infos)
    return tuple(i.name for i in infos) if loadable else ()


def iommu_vendor(facts: HostFacts) -> tuple[Optional[str], str]:
    """Intel or AMD, and how we know: ACPI tables, IOMMU units, the CPU, then the arguments."""
    tables, cpu = facts.acpi_tables or frozenset(), facts.cpu_vendor or ""
    clues = [
        ("DMAR" in tables, INTEL, "ACPI DMAR table"),
        ("IVRS" in tables, AMD, "ACPI IVRS table"),
    ]
    for unit in facts.iommu_units:
        where = facts.path(facts.sysfs_root, "class", "iommu", unit)
        clues += [(unit.startswith("dmar"), INTEL, where), (unit.startswith("ivhd"), AMD, where)]
    clues += [
        (cpu == "GenuineIntel", INTEL, f"CPU vendor {cpu}"),
        (cpu in ("AuthenticAMD", "HygonGenuine"), AMD, f"CPU vendor {cpu}"),
        ("intel_iommu" in facts.args, INTEL, "intel_iommu= on the kernel command line"),
        ("amd_iommu" in facts.args, AMD, "amd_iommu= on the kernel command line"),
    ]
    unknown = (None, "no ACPI DMAR/IVRS table, IOMMU unit or CPU vendor seen")
    return next(((vendor, source) for seen, vendor, source in clues if seen), unknown)


def _config_value(facts: HostFacts, key: str) -> Optional[str]:
    return None if facts.config_source is None else facts.config.get(key, "n")


def _built_without(facts: HostFacts, vendor: Optional[str]) -> Optional[str]:
    """``CONFIG_INTEL_IOMMU`` or ``CONFIG_AMD_IOMMU`` when the kernel config says it is not set."""
    option = f"CONFIG_{(vendor or '').upper()}_IOMMU"
    return option if vendor is not None and _config_value(facts, option) == "n" else None


def _intel_reasons(facts: HostFacts, vendor: Optional[str], on: bool) -> list[str]:
    intel = last_flag(facts.args, "intel_iommu", ("on", "off"))
    default_on = _config_value(facts, "CONFIG_INTEL_IOMMU_DEFAULT_ON")
    if intel == "on":
        return ["intel_iommu=on is on the kernel command line"]
    if intel == "off":
        return ["intel_iommu=off on the kernel command line disables it"]
    if default_on == "y":
        return [
            "the kernel enables it by default (CONFIG_INTEL_IOMMU_DEFAULT_ON=y in "
            f"{facts.config_source}), no intel_iommu= argument needed"
        ]
    if vendor == INTEL and default_on is not None:
        return [
            "intel_iommu=on is not on the kernel command line and the kernel does not enable "
            f"it by default (CONFIG_INTEL_IOMMU_DEFAULT_ON is not set in {facts.config_source})"
        ]
    if vendor == INTEL and not on:
        return [
            "intel_iommu=on is not on the kernel command line (kernel config not readable: "
            f"no /boot/config-{facts.release} or /proc/config.gz under {facts.host_root})"
        ]
    return []


def _iommu_reasons(facts: HostFacts, vendor: Optional[str], on: bool) -> list[str]:
    """Why the IOMMU is on or off, from the arguments and the kernel configuration."""
    args = facts.args
    generic = last_flag(args, "iommu", ("off", "pt", "nopt"))
    reasons = ["iommu=off on the kernel command line disables it"] if generic == "off" else []
    if vendor in (INTEL, None):
        reasons += _intel_reasons(facts, vendor, on)
    if vendor in (AMD, None):
        amd = last_flag(args, "amd_iommu", ("on", "off"))
        if amd == "off":
            reasons.append("amd_iommu=off on the kernel command line disables it")
        elif amd == "on":
            reasons.append("amd_iommu=on is not a valid value (harmless: AMD-Vi is on by default)")
        elif vendor == AMD and on:
            reasons.append("AMD-Vi is on by default")
    unbuilt = _built_without(facts, vendor)
    if unbuilt:
        reasons.append(f"the kernel is built without {unbuilt} ({facts.config_source})")
    if generic == "pt" or any(v in _TRUE for v in args.get("iommu.passthrough", [])):
        reasons.append("iommu=pt (passthrough for the host's own DMA) is fine for VFIO")
    if not on and facts.acpi_tables is not None and not facts.acpi_tables:
        reasons.append(
            "the firmware exposes no ACPI DMAR or IVRS table: the IOMMU is disabled in the "
            "firmware setup or the machine (or VM) has none"
        )
    return reasons


def _iommu_remedy(facts: HostFacts, vendor: Optional[str]) -> str:
    remove = " and ".join(
        f"{key}=off"
        for key in ("intel_iommu", "amd_iommu", "iommu")
        if last_flag(facts.args, key, ("on", "off", "pt")) == "off"
        and (key == "iommu" or vendor is None or key.startswith(vendor))
    )
    unbuilt = _built_without(facts, vendor)
    if vendor == INTEL:
        if unbuilt:
            return f"boot a kernel built with {unbuilt}=y, then {INTEL_REMEDY}"
        if remove:
            return f"remove {remove} from the kernel command line, then {INTEL_REMEDY}"
        already = last_flag(facts.args, "intel_iommu", ("on", "off")) == "on"
        return _INTEL_ALREADY_ON if already else INTEL_REMEDY
    if vendor == AMD:
        if unbuilt:
            return f"boot a kernel built with {unbuilt}=y; {AMD_REMEDY}"
        return f"remove {remove} from {GRUB_STEPS}; {AMD_REMEDY}" if remove else AMD_REMEDY
    prefix = f"remove {remove} from the kernel command line. " if remove else ""
    return f"{prefix}Intel: {INTEL_REMEDY}. AMD: {AMD_REMEDY}. {VM_HINT}"


def check_iommu(facts: HostFacts) -> Check:
    check = _check("iommu", "IOMMU active")
    vendor, vendor_source = iommu_vendor(facts)
    on = facts.iommu_groups > 0
    label = _VENDOR_LABEL.get(vendor or "", "vendor unknown")
    groups_dir = facts.path(facts.sysfs_root, "kernel", "iommu_groups")
    units_dir = facts.path(facts.sysfs_root, "class", "iommu")
    acpi, units = facts.acpi_tables, ", ".join(facts.iommu_units)
    tables = "not visible" if acpi is None else ", ".join(sorted(acpi)) or "no DMAR, no IVRS"
    evidence = [
        f"{groups_dir}: {facts.iommu_groups} group(s)",
        f"{units_dir}: {units or 'empty'}",
        f"ACPI tables: {tables}",
        f"vendor: {label} ({vendor_source})",
    ]
    if facts.config_source is not None:
        shown = ("CONFIG_INTEL_IOMMU", "CONFIG_INTEL_IOMMU_DEFAULT_ON", "CONFIG_AMD_IOMMU")
        values = ", ".join(f"{k}={facts.config.get(k, 'n')}" for k in shown)
        evidence.append(f"{facts.config_source}: {values}")
    if on:
        more = f", units {units}" if units else ""
        detail = f"on ({label}): {facts.iommu_groups} IOMMU group(s){more}"
    else:
        more = "" if units else f" and {units_dir} has no dmar*/ivhd* unit"
        detail = f"off: {groups_dir} is empty{more}"
    reasons = _iommu_reasons(facts, vendor, on)
    remedy = None if on else _iommu_remedy(facts, vendor)
    return check(on, "; ".join([detail, *reasons]), remedy, tuple(evidence))


def check_cmdline(facts: HostFacts) -> Check:
    """The arguments that matter, explained; informational (evidence decides elsewhere)."""
    check = _check("kernel-cmdline", "kernel command line")
    where = facts.path(facts.host_root, "proc", "cmdline")
    if facts.cmdline is None:
        detail = f"not readable at {where}; the other checks use live evidence"
        return check(True, detail, evidence=(f"{where}: not readable",))
    args = facts.args
    notes: list[str] = []
    for key in ("intel_iommu", "amd_iommu", "iommu", "iommu.passthrough"):
        for value in args.get(key, ()):
            note = f"{key}={value}"
            if key == "amd_iommu" and "on" in value.split(","):
                note += " (not a valid value; harmless)"
            if (key, value) == ("iommu", "pt") or (key == "iommu.passthrough" and value in _TRUE):
                note += " (fine for VFIO)"
            if "off" in value.split(","):
                note += " (disables it)"
            notes.append(note)
    for value in args.get("vfio_pci.ids", ()):
        notes.append(
            f"vfio-pci.ids={value}: vfio-pci claims every function with "
            f"{'these IDs' if ',' in value else 'this ID'} at boot, selected or not"
        )
    for key in (_NOIOMMU_ARG, "module_blacklist", "modprobe.blacklist"):
        notes.extend(f"{key}={value}" for value in args.get(key, ()))
    detail = "; ".join(notes) if notes else "no IOMMU or vfio arguments"
    return check(True, detail, evidence=(f"{where}: {facts.cmdline}",))


def check_noiommu(facts: HostFacts) -> Check:
    check = _check("noiommu", "no-IOMMU mode off")
    param, nodes = facts.noiommu_param, ", ".join(facts.noiommu_nodes)
    cmdline = [f"{_NOIOMMU_ARG}={v}" for v in facts.args.get(_NOIOMMU_ARG, ())]
    parameters = facts.path(facts.sysfs_root, "module", "vfio", "parameters")
    evidence = (
        f"{parameters}/enable_unsafe_noiommu_mode: {'absent' if param is None else param}",
        f"{facts.path(facts.dev_root, 'vfio')}: {nodes or 'no noiommu-N node'}",
        *cmdline,
        *facts.noiommu_options,
    )
    causes: list[str] = []
    if param in _TRUE:
        causes.append("vfio's enable_unsafe_noiommu_mode is Y")
    if nodes:
        causes.append(f"no-IOMMU groups exist ({nodes})")
    if param is None and any(c.partition("=")[2] in _TRUE for c in cmdline):
        causes.append("the kernel command line enables it when vfio loads")
    if param is None and any(o.split("=")[-1].strip() in _TRUE for o in facts.noiommu_options):
        causes.append("modprobe.d enables it when vfio loads")
    if causes:
        detail = "no-IOMMU mode is on (" + "; ".join(causes) + "): unusable for VM passthrough"
        return check(False, detail, NOIOMMU_REMEDY, evidence)
    return check(True, "not enabled", evidence=evidence)


def _backend(facts: HostFacts) -> str:
    """The IOMMU backend to require: vfio_iommu_type1 (libvirt's and QEMU's default, through
    /dev/vfio/vfio) unless only iommufd is there."""
    only_iommufd = not facts.modules["vfio_iommu_type1"].exists and facts.modules["iommufd"].exists
    return "iommufd" if only_iommufd else "vfio_iommu_type1"


def required_modules(facts: HostFacts) -> tuple[str, ...]:
    """vfio, an IOMMU backend, vfio_pci_core (5.16+, or wherever it exists), and vfio_pci."""
    names = ("vfio", _backend(facts), "vfio_pci_core", "vfio_pci")
    if facts.modules["vfio_pci_core"].exists or facts.kernel_version >= (5, 16):
        return names
    return tuple(n for n in names if n != "vfio_pci_core")


def _module_remedy(facts: HostFacts, *infos: ModuleInfo) -> str:
    """One remedy for the modules that are not in the kernel, grouped by why."""
    clauses: list[str] = []
    for b in (i.blacklisting for i in infos if i.state is ModuleState.BLACKLISTED):
        if b is not None and b.where == "the kernel command line":
            clauses.append(f"remove {b.line} from {GRUB_STEPS}")
        elif b is not None:
            path, _, number = b.where.rpartition(":")
            clauses.append(f"remove `{b.line}` from {path} (line {number}), then load it")
    missing = [i for i in infos if i.state is ModuleState.MISSING]
    unbuilt, absent = [i for i in missing if i.note], [i for i in missing if not i.note]
    if unbuilt:
        options = ", ".join(MODULE_CONFIG.get(i.name, i.name) for i in unbuilt)
        clauses.append(
            f"kernel {facts.release} is built without {options}: boot a kernel built with "
            "them as modules (=m; distribution kernels are)"
        )
    if any(not i.tree_visible for i in absent):
        clauses.append(f"{facts.modules_dir} is not visible: {CONTAINER_HOST_ROOT}")
    elif absent:
        names = ", ".join(i.name for i in absent)
        options = ", ".join(f"{MODULE_CONFIG.get(i.name, i.name)}=m" for i in absent)
        clauses.append(
            f"kernel {facts.release} ships no {names} module: install the kernel's extra "
            f"modules (Ubuntu: linux-modules-extra-{facts.release}) or boot a kernel built "
            f"with {options}"
        )
    if any(i.state is ModuleState.LOADABLE for i in infos):
        clauses.append(LOAD_REMEDY)
    return "; ".join(clauses)


def check_modules(facts: HostFacts) -> Check:
    check = _check("vfio-modules", "vfio modules")
    infos = [facts.modules[n] for n in required_modules(facts)]
    evidence = tuple(dict.fromkeys(e for i in infos for e in i.evidence))
    detail = ", ".join(f"{i.name} {i.describe()}" for i in infos)
    bad = [i for i in infos if not i.ok]
    remedy = _module_remedy(facts, *bad) if bad else None
    return check(not bad, detail, remedy, evidence, _load(*bad))


def _seen(path: str, present: bool) -> str:
    return f"{path}: {'present' if present else 'absent'}"


def check_vfio_pci_driver(facts: HostFacts) -> Check:
    check = _check("vfio-pci-driver", "vfio-pci driver registered")
    path = facts.path(facts.sysfs_root, "bus", "pci", "drivers", VFIO_PCI)
    evidence = (_seen(path, facts.vfio_pci_registered),)
    if facts.vfio_pci_registered:
        return check(True, path, evidence=evidence)
    info = facts.modules["vfio_pci"]
    remedy = (
        f"vfio_pci is {info.state.value} but did not register: see `dmesg | grep vfio`; "
        "is --sysfs-root the host's sysfs?"
        if info.ok
        else _module_remedy(facts, info)
    )
    detail = f"{path} is absent: vfio_pci is {info.describe()}"
    return check(False, detail, remedy, evidence, _load(info))


def check_dev_vfio(facts: HostFacts) -> Check:
    check = _check("dev-vfio", "/dev/vfio/vfio present")
    node = facts.path(facts.dev_root, "vfio", "vfio")
    iommu_node = facts.path(facts.dev_root, "iommu")
    evidence = (_seen(node, facts.vfio_container), _seen(iommu_node, facts.iommufd_node))
    if facts.vfio_container:
        return check(True, node, evidence=evidence)
    if _backend(facts) == "iommufd" and facts.iommufd_node:
        return check(True, f"{iommu_node} (iommufd replaces the container)", evidence=evidence)
    vfio = facts.modules["vfio"]
    if not vfio.ok:
        detail = f"{node} is absent: vfio is {vfio.describe()} (loading vfio creates it)"
        return check(False, detail, _module_remedy(facts, vfio), evidence, _load(vfio))
    where = "the node is missing" if facts.dev_vfio_dir else "its /dev/vfio directory is missing"
    detail = f"{node} is absent although vfio is {vfio.state.value}: {where} under {facts.dev_root}"
    return check(False, detail, CONTAINER_DEV, evidence)


def _few(items: Sequence[str], shown: int) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _group_summary(pairs: Sequence[tuple[str, str]]) -> str:
    """``"a, b: x; c: y"`` from (bdf, value) pairs, keeping long lists short."""
    grouped: dict[str, list[str]] = {}
    for bdf, value in pairs:
        grouped.setdefault(value, []).append(bdf)
    return "; ".join(f"{_few(bdfs, 4)}: {value}" for value, bdfs in grouped.items())


def check_groups(facts: HostFacts) -> Check:
    check = _check("iommu-groups", "IOMMU group for each selected function")
    if not facts.functions:
        return check(True, f"no PCI function matches {facts.selection}")
    numbers = (n[len("noiommu-") :] for n in facts.noiommu_nodes)  # groups vfio made up
    noiommu = {int(n) for n in numbers if n.isascii() and n.isdigit()}
    evidence = tuple(
        f"{f.bdf}/iommu_group: "
        + ("absent" if f.iommu_group is None else str(f.iommu_group))
        + (" (a no-IOMMU group)" if f.iommu_group in noiommu else "")
        for f in facts.functions
    )
    missing = [f.bdf for f in facts.functions if f.iommu_group is None or f.iommu_group in noiommu]
    if not missing:
        detail = _group_summary([(f.bdf, f"group {f.iommu_group}") for f in facts.functions])
        return check(True, detail, evidence=evidence)
    if facts.iommu_groups == 0:
        remedy = "enable the IOMMU (see 'IOMMU active'); every function then gets a group"
    else:
        remedy = (
            "the IOMMU does not cover these functions: `dmesg | grep -i iommu` shows whether "
            "they were added to a group (some platforms leave devices behind non-translating "
            "bridges out)"
        )
    return check(False, f"no IOMMU group: {_few(missing, 8)}", remedy, evidence)


def check_vfio_driver(facts: HostFacts) -> Check:
    """Which vfio driver each function will get: a registered variant, else vfio-pci."""
    check = _check("vfio-driver", "vfio driver for each selected function")
    if not facts.functions:
        return check(True, f"no PCI function matches {facts.selection}")
    pairs: list[tuple[str, str]] = []
    evidence: list[str] = []
    for f in facts.functions:
        alias = f"alias vfio_pci:... -> {f.variant_module}" if f.variant_module else None
        evidence.append(f"{f.bdf} ({f.ids}): {alias or 'no vfio_pci variant alias'}")
        if f.variant_driver:
            pairs.append((f.bdf, f"{f.variant_driver} (variant {f.variant_module})"))
        elif f.variant is not None:
            described = f"variant {f.variant_module} is {f.variant.describe()}"
            pairs.append((f.bdf, f"{VFIO_PCI} ({described})"))
        else:
            pairs.append((f.bdf, VFIO_PCI))
    detail = _group_summary(pairs)
    if not facts.vfio_pci_registered and any(not f.variant_driver for f in facts.functions):
        info = facts.modules["vfio_pci"]
        remedy = _module_remedy(facts, info) if not info.ok else "see 'vfio-pci driver registered'"
        detail = f"{detail}; {VFIO_PCI} is not registered"
        return check(False, detail, remedy, tuple(evidence), _load(info))
    return check(True, detail, evidence=tuple(evidence))


def check_dynamic_ids(facts: HostFacts) -> Check:
    """A warning: with a dynamic ID, drivers_probe may hand a function back to vfio-pci."""
    check = _check("dynamic-ids", "no dynamic ID on vfio-pci for the selected functions")
    if not facts.functions:
        return check(True, f"no PCI function matches {facts.selection}", advisory=True)
    found = facts.dynamic_ids
    if not found and not facts.vfio_ids_config:
        detail = "none seen (no selected function is on vfio-pci without its override)"
        return check(True, detail, advisory=True)
    configured = [
        (VFIO_PCI, int(f.ids[:4], 16), int(f.ids[5:], 16))
        for f in facts.functions
        if any(f.ids in line for line in facts.vfio_ids_config)
    ]
    ids = dict.fromkeys([(d.driver, d.vendor, d.device) for d in found] + configured)
    remedy = "; ".join(remove_id_remedy(*i) for i in ids)
    if facts.vfio_ids_config:
        remedy += (
            "; and remove vfio-pci.ids= from the kernel command line or modprobe.d (see the "
            "evidence), or it comes back at the next boot"
        )
    detail = (
        ", ".join(sorted({d.bdf for d in found})) + " held by a dynamic ID"
        if found
        else "vfio-pci.ids= names a selected function's ID"
    )
    evidence = tuple(d.message for d in found) + facts.vfio_ids_config
    return check(False, detail, remedy, evidence, advisory=True)


def check_loading(facts: HostFacts, attempts: Sequence[LoadAttempt]) -> Check:
    check = _check("module-loading", "loading modules")
    evidence = tuple(" ".join(a.argv) or a.module for a in attempts)
    detail = "; ".join(a.describe() for a in attempts)
    failed = [a for a in attempts if not a.ok]
    if not failed:
        return check(True, detail, evidence=evidence)
    if any(not a.argv for a in failed):
        return check(False, detail, MODPROBE_MISSING_REMEDY, evidence)
    remedy = (
        "read modprobe's message above; `dmesg | tail` shows the kernel's side "
        f"(modules of kernel {facts.release} are looked up in {facts.modules_dir})"
    )
    return check(False, detail, remedy, evidence)


_CHECKS = (
    check_iommu,
    check_cmdline,
    check_noiommu,
    check_groups,
    check_modules,
    check_vfio_pci_driver,
    check_dev_vfio,
    check_vfio_driver,
    check_dynamic_ids,
)


def evaluate(facts: HostFacts, attempts: Sequence[LoadAttempt] = ()) -> list[Check]:
    """Every check, in the order the checklist shows them. Pure."""
    checks = [check(facts) for check in _CHECKS]
    return [*checks, check_loading(facts, attempts)] if attempts else checks


def modules_to_load(facts: HostFacts) -> list[str]:
    """Loadable modules the host needs, vfio_pci first (modprobe pulls in vfio, vfio_pci_core
    and, by vfio's soft dependency, vfio_iommu_type1), then the rest, then the variants."""
    order = sorted(required_modules(facts), key=lambda n: n != "vfio_pci")
    wanted = [n for n in order if facts.modules[n].state is ModuleState.LOADABLE]
    for f in facts.functions:
        if f.variant_module and f.variant is not None and f.variant.state is ModuleState.LOADABLE:
            wanted.append(f.variant_module)
    return list(dict.fromkeys(wanted))


@dataclass(frozen=True)
class Preflight:
    checks: tuple[Check, ...]
    attempts: tuple[LoadAttempt, ...] = ()
    pending: tuple[str, ...] = ()  # loadable modules a load would add

    @property
    def ok(self) -> bool:
        return not self.failed

    @property
    def failed(self) -> tuple[Check, ...]:
        """Failures that make the host not ready (advisory checks only warn)."""
        return tuple(c for c in self.checks if not c.ok and not c.advisory)

    @property
    def warnings(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.ok and c.advisory)

    def blocking(self, *, assume_loaded: bool = False) -> tuple[Check, ...]:
        """Failures left if the pending modules were loaded (``assume_loaded``) or as they are."""
        return tuple(c for c in self.failed if not (assume_loaded and c.load))

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.to_json() for c in self.checks]}

    def lines(self, mark: Optional[Callable[[bool], str]] = None) -> list[str]:
        return checklist_lines(self.checks, mark)


def checklist_lines(
    checks: Sequence[Check], mark: Optional[Callable[[bool], str]] = None, *, evidence: bool = True
) -> list[str]:
    """The readable checklist: one line per check, its evidence and, when it fails, the remedy."""
    mark = mark or (lambda ok: "✓" if ok else "✗")
    lines: list[str] = []
    for c in checks:
        lines.append(f"{mark(c.ok) if c.ok or not c.advisory else '!'} {c.title}: {c.detail}")
        if evidence and c.evidence:
            lines.append(f"    evidence: {'; '.join(c.evidence)}")
        if not c.ok and c.remedy:
            lines.append(f"    remedy: {c.remedy}")
    return lines


def run(
    sysfs: Sysfs,
    host: HostFiles,
    functions: Sequence[PciFunction] = (),
    *,
    aliases: Optional[AliasTable] = None,
    driver_modules: Mapping[str, Optional[str]],
    selection: str = "the selection",
    load: bool = False,
    runner: Optional[Runner] = None,
) -> Preflight:
    """Gather and check; with ``load``, load what is missing and check again, but only when
    nothing but loadable modules stands in the way (an IOMMU-off host is left as it was)."""
    facts_now = functools.partial(
        gather, sysfs, host, functions, aliases, driver_modules, selection
    )
    facts = facts_now()
    first = Preflight(tuple(evaluate(facts)), pending=tuple(modules_to_load(facts)))
    if not load or not first.pending or first.blocking(assume_loaded=True):
        return first
    log = get_logger("vfio_manager.host.preflight")
    attempts = load_modules(
        host, first.pending, runner=runner, still_needed=lambda m: not sysfs.module_present(m)
    )
    for a in attempts:
        outcome, reason = ("done", None) if a.ok else ("failed", a.message)
        log.info(
            "modprobe",
            step="load-module",
            module=a.module,
            argv=list(a.argv),
            outcome=outcome,
            reason=reason,
        )
    facts = facts_now()
    checks = evaluate(facts, attempts)
    return Preflight(tuple(checks), tuple(attempts), tuple(modules_to_load(facts)))


class PreflightFailed(HostNotReadyError):
    """The gate: the host is not ready, nothing was written. Carries the failing checks and
    the topology the gate saw."""

    def __init__(
        self, preflight: Preflight, failing: Sequence[Check], topology: Optional[Topology] = None
    ) -> None:
        lines = [
            "the host is not ready for VFIO passthrough; nothing was written:",
            *("  " + line for line in checklist_lines(failing, evidence=False)),
        ]
        super().__init__(
            "\n".join(lines),
            remedy="fix the failures above; `vfio-manager check` shows the full checklist",
        )
        self.preflight = preflight
        self.failing = tuple(failing)
        self.topology = topology

    def details(self) -> dict[str, Any]:
        return {**super().details(), "checks": [check.to_json() for check in self.failing]}
