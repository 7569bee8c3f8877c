"""Kernel modules: modprobe and rmmod, and the files that show them.

docs/kernel-facts.md K21:

- /proc/modules lists loaded loadable modules, newest first, as "NAME SIZE REFS USERS, Live
  ADDRESS"; a module's reference count includes the modules that use it.
- /sys/module/NAME exists for a loaded loadable module (with ``initstate``, ``refcnt``,
  ``holders``) and for a built-in one only when it has parameters or drivers.
- /lib/modules/REL/modules.dep lists each module's dependencies in load order,
  modules.builtin the built-in ones, modules.alias the ``alias`` lines of their ID tables
  (``vfio_pci:`` for vfio variant drivers, rule 5: K12).
- modprobe loads dependencies first, then the module, then its post soft-dependencies;
  module names take ``-`` or ``_``. Loading registers the module's drivers, which (with
  drivers_autoprobe on, K6) probe the unbound functions they match, so an override naming
  vfio-pci binds on ``modprobe vfio-pci``. Loading ``vfio`` makes /dev/vfio/vfio.
- rmmod refuses a module that other loaded modules use; else it unbinds and unregisters
  its drivers.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Sequence
from typing import Optional

from tests.harness.kernel import drivers, matching
from tests.harness.kernel.model import (
    VFIO_FAMILY,
    Driver,
    DriverSpec,
    Module,
    ModuleInUseError,
    UnknownModuleError,
)
from tests.harness.kernel.state import KernelState
from tests.harness.kernel.tree import const, line
from tests.harness.pci import alias_pattern, normalize_module


# ---------------------------------------------------------------------- what the files show
def loaded_newest_first(s: KernelState) -> list[Module]:
    loaded = [m for m in s.module_table.values() if m.loaded and not m.builtin]
    return sorted(loaded, key=lambda m: -m.load_seq)


def holders(s: KernelState, name: str) -> list[str]:
    """The loaded modules that use ``name`` (newest first)."""
    return [m.name for m in loaded_newest_first(s) if name in m.deps]


def render_proc_modules(s: KernelState) -> bytes:
    lines = []
    for mod in loaded_newest_first(s):
        users = holders(s, mod.name)
        used = ",".join(users) + "," if users else "-"
        refs = mod.base_refs + len(users)
        lines.append(f"{mod.name} {mod.size} {refs} {used} Live 0x{mod.address:016x}")
    return ("\n".join(lines) + "\n").encode() if lines else b""


def _alias_lines(mod: Module) -> list[str]:
    lines = []
    for spec in mod.drivers:
        prefix = "vfio_pci" if spec.vfio else "pci"
        for vendor, device in spec.ids:
            lines.append(alias_pattern(prefix, vendor=vendor, device=device))
        for cls, mask in spec.classes:
            lines.append(alias_pattern(prefix, pci_class=cls, class_mask=mask))
        if spec.vfio and not spec.ids and not spec.classes:
            lines.append(alias_pattern(prefix))  # vfio_pci: matches any device
    return [f"alias {pattern} {mod.name}" for pattern in lines]


def render_alias(s: KernelState, builtin: bool) -> bytes:
    """modules.alias (``builtin=False``) or modules.builtin.alias."""
    lines = ["# Aliases extracted from modules themselves."] if not builtin else []
    for mod in sorted(s.module_table.values(), key=lambda m: m.name):
        if mod.builtin == builtin:
            lines.extend(_alias_lines(mod))
    return ("\n".join(lines) + "\n").encode()


def render_builtin(s: KernelState) -> bytes:
    paths = sorted(m.path for m in s.module_table.values() if m.builtin)
    return "".join(p + "\n" for p in paths).encode()


def _closure(s: KernelState, name: str) -> list[str]:
    """Transitive dependencies in modprobe order (modules.dep lists them this way)."""
    out: list[str] = []

    def visit(current: str) -> None:
        mod = s.module_table.get(current)
        for dep in mod.deps if mod else []:
            if dep not in out:
                out.append(dep)
                visit(dep)

    visit(name)
    return out


def render_dep(s: KernelState) -> bytes:
    lines = []
    for mod in sorted(s.module_table.values(), key=lambda m: m.path):
        if mod.builtin:
            continue
        deps = [s.module_table[d].path for d in _closure(s, mod.name) if d in s.module_table]
        lines.append(f"{mod.path}: {' '.join(deps)}".rstrip())
    return ("\n".join(lines) + "\n").encode()


def module_sysfs(s: KernelState, mod: Module) -> None:
    """/sys/module/NAME of a loaded (or built-in) module."""
    base = s.sys_path(f"module/{mod.name}")
    if mod.builtin and not mod.params and not mod.drivers:
        return  # a built-in without parameters or drivers has no /sys/module entry
    s.tree.mkdir(base)
    if not mod.builtin:
        s.tree.file(f"{base}/initstate", const("live\n"))
        s.tree.file(f"{base}/refcnt", lambda: line(str(mod.base_refs + len(holders(s, mod.name)))))
        s.tree.mkdir(f"{base}/holders")
    for param, value in mod.params.items():
        s.tree.file(f"{base}/parameters/{param}", const(value + "\n"))


# ---------------------------------------------------------------------- setup
def declare(
    s: KernelState,
    name: str,
    *,
    driver: Optional[str],
    ids: Iterable[tuple[int, int]],
    classes: Iterable[tuple[int, int]],
    vfio: bool,
    dma_safe: bool,
    deps: Sequence[str],
    softdep_post: Sequence[str],
    params: Optional[dict[str, str]],
    path: Optional[str],
    builtin: bool,
    size: int,
) -> None:
    """A module on disk (modules.dep, modules.alias), not loaded; a built-in one counts as
    loaded (its driver is registered at once)."""
    mod_name = normalize_module(name)
    with s.lock:
        if mod_name in s.module_table:
            raise ValueError(f"module {mod_name} already declared")
        specs = []
        if driver is not None:
            specs.append(DriverSpec(driver, tuple(ids), tuple(classes), vfio, dma_safe))
        s.module_table[mod_name] = Module(
            mod_name,
            path or f"kernel/drivers/misc/{mod_name}.ko",
            builtin=builtin,
            deps=[normalize_module(d) for d in deps],
            softdep_post=[normalize_module(d) for d in softdep_post],
            drivers=specs,
            params=dict(params or {}),
            size=size,
        )
        if builtin:
            _loaded(s, s.module_table[mod_name])


def add_vfio_family(s: KernelState, *, loaded: bool) -> None:
    """Declare Debian 6.1's vfio stack (and load it, as ``modprobe vfio-pci`` would)."""
    with s.lock:
        for template in VFIO_FAMILY:
            if template.name not in s.module_table:
                s.module_table[template.name] = Module(
                    template.name,
                    template.path,
                    deps=list(template.deps),
                    softdep_post=list(template.softdep_post),
                    drivers=list(template.drivers),
                    params=dict(template.params),
                    size=template.size,
                )
        if loaded:
            load(s, "vfio_pci")


def add_driver(
    s: KernelState,
    name: str,
    *,
    module: Optional[str],
    ids: Iterable[tuple[int, int]],
    classes: Iterable[tuple[int, int]],
    vfio: bool,
    dma_safe: bool,
    builtin: bool,
) -> None:
    """Register a PCI driver now, its module loaded (setup: no probe of existing devices)."""
    with s.lock:
        if name in s.driver_table:
            raise ValueError(f"driver {name} already registered")
        mod_name = normalize_module(module) if module is not None else None
        spec = DriverSpec(name, tuple(ids), tuple(classes), vfio, dma_safe)
        if vfio and mod_name is not None and not builtin:
            add_vfio_family(s, loaded=False)  # a vfio driver's module needs the vfio stack
        if mod_name is not None:
            mod = s.module_table.get(mod_name)
            if mod is None:
                deps = ["vfio_pci_core", "vfio"] if vfio and not builtin else []
                mod = Module(
                    mod_name, f"kernel/drivers/misc/{mod_name}.ko", builtin=builtin, deps=deps
                )
                s.module_table[mod_name] = mod
            mod.drivers = [d for d in mod.drivers if d.name != name] + [spec]
            if not mod.loaded:
                for dep in mod.deps:
                    load(s, dep)
                loaded_without_probe(s, mod)
        # vfio drivers leave DMA to their user (driver_managed_dma) by nature: K16
        drv = Driver(name, mod_name, list(spec.ids), list(spec.classes), vfio, dma_safe or vfio)
        drivers.register(s, drv)
        if vfio:
            s.tree.chardev(posixpath.join(s.dev_root, "vfio/vfio"))


def loaded_without_probe(s: KernelState, mod: Module) -> None:
    """Mark ``mod`` loaded without registering its drivers (they are registered by hand)."""
    specs, mod.drivers = mod.drivers, []
    _loaded(s, mod)
    mod.drivers = specs


def set_noiommu(s: KernelState, enabled: bool) -> None:
    """vfio's ``enable_unsafe_noiommu_mode`` parameter (K22)."""
    with s.lock:
        s.noiommu = enabled
        s.kernel_config["CONFIG_VFIO_NOIOMMU"] = "y"
        vfio = s.module_table.get("vfio")
        if vfio is not None:
            vfio.params["enable_unsafe_noiommu_mode"] = "Y" if enabled else "N"
            if vfio.loaded:
                module_sysfs(s, vfio)


# ---------------------------------------------------------------------- modprobe and rmmod
def load(s: KernelState, name: str) -> None:
    """``modprobe NAME``: dependencies first, then the module, then its softdeps."""
    mod_name = normalize_module(name)
    with s.lock:
        mod = s.module_table.get(mod_name)
        if mod is None:
            raise UnknownModuleError(
                f"modprobe: FATAL: Module {mod_name} not found in directory "
                f"/lib/modules/{s.release}"
            )
        if mod.loaded:
            return
        if not s.modules_supported and not mod.builtin:
            raise UnknownModuleError(f"{mod_name}: this kernel does not support modules")
        for dep in mod.deps:
            load(s, dep)
        _loaded(s, mod)
        for post in mod.softdep_post:
            if post in s.module_table:
                load(s, post)


def _loaded(s: KernelState, mod: Module) -> None:
    s.load_seq += 1
    mod.loaded = True
    mod.load_seq = s.load_seq
    if not mod.address:
        s.next_address -= 0x10000
        mod.address = s.next_address
    module_sysfs(s, mod)
    if mod.name == "vfio":
        s.tree.chardev(posixpath.join(s.dev_root, "vfio/vfio"))
    for spec in mod.drivers:
        if spec.name not in s.driver_table:
            drv = Driver(
                spec.name,
                mod.name,
                list(spec.ids),
                list(spec.classes),
                spec.vfio,
                spec.dma_safe or spec.vfio,
            )
            drivers.register(s, drv)
            if s.drivers_autoprobe:
                matching.driver_attach(s, drv)


def unload(s: KernelState, name: str) -> None:
    """``rmmod``: unbinds the devices of its drivers, unregisters them, removes its files."""
    mod_name = normalize_module(name)
    with s.lock:
        mod = s.module_table.get(mod_name)
        if mod is None or not mod.loaded or mod.builtin:
            raise UnknownModuleError(f"rmmod: ERROR: Module {mod_name} is not currently loaded")
        users = holders(s, mod_name)
        if users:
            raise ModuleInUseError(
                f"rmmod: ERROR: Module {mod_name} is in use by: {' '.join(users)}"
            )
        for drv in [d for d in s.driver_table.values() if d.module == mod_name]:
            drivers.unregister(s, drv.name)
        mod.loaded = False
        s.tree.remove(s.sys_path(f"module/{mod_name}"))
        if mod_name == "vfio":
            s.tree.remove(posixpath.join(s.dev_root, "vfio/vfio"))


def run_modprobe(s: KernelState, argv: Sequence[str]) -> tuple[int, str, str]:
    """``(returncode, stdout, stderr)`` of ``modprobe [-r] NAME...``, maybe under ``chroot``."""
    args = list(argv)
    s.modprobe_calls.append(tuple(args))
    if args and posixpath.basename(args[0]) == "chroot":
        args = args[2:]
    if not args or posixpath.basename(args[0]) != "modprobe":
        return 127, "", f"{args[0] if args else ''}: command not found"
    names = [a for a in args[1:] if not a.startswith("-")]
    remove = "-r" in args[1:] or "--remove" in args[1:]
    try:
        for module in names:
            if remove:
                unload(s, module)
            else:
                load(s, module)
    except (UnknownModuleError, ModuleInUseError) as exc:
        return 1, "", str(exc) + "\n"
    return 0, "", ""
