"""A fake Linux PCI/VFIO kernel on pyfakefs, for the product's tests: the facade.

:class:`FakeKernel` is what tests use (tests/harness/README.md lists its API). The kernel's
behaviour lives in tests/harness/kernel/, one module per kernel file, each citing the facts
of docs/kernel-facts.md it encodes; routes.py there says which rule a write to which file
reaches, layout.py builds the pyfakefs tree. This class builds a machine, offers the
events and faults a test can cause, and the views it can assert on.

Places where the model simplifies, or where the real kernel is uncertain, are marked
``DOUBT:`` in the rule modules (and listed in README.md) so the QEMU tier can check them.
"""

from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Optional, Union

from pyfakefs.fake_filesystem import FakeFilesystem

from tests.harness.kernel import (
    binding,
    hotplug,
    iommu_groups,
    layout,
    modules,
    routes,
    sriov,
)
from tests.harness.kernel.model import (
    DRIVER_CHILD_RE,
    VFIO_FAMILY,
    Driver,
    DriverSpec,
    DynId,
    Function,
    Module,
    ModuleInUseError,
    UnbindGate,
    UnknownModuleError,
    Write,
)
from tests.harness.kernel.state import KernelState
from tests.harness.sysfsfile import KernelFile

__all__ = [
    "DRIVER_CHILD_RE",
    "VFIO_FAMILY",
    "Driver",
    "DriverSpec",
    "DynId",
    "FakeKernel",
    "Function",
    "Module",
    "ModuleInUseError",
    "UnbindGate",
    "UnknownModuleError",
    "Write",
]


class FakeKernel(KernelState):
    """The fake kernel. See the module docstring and tests/harness/README.md for the API."""

    def __init__(
        self,
        fs: FakeFilesystem,
        *,
        release: str = "6.1.0-test",
        iommu: bool = True,
        host_root: str = "/node",
        iommu_unit: str = "dmar0",
        cmdline: Optional[str] = None,
        modules_supported: bool = True,
        lib_modules: bool = True,
    ) -> None:
        super().__init__(
            fs,
            release=release,
            iommu=iommu,
            host_root=host_root,
            iommu_unit=iommu_unit,
            cmdline=cmdline
            if cmdline is not None
            else layout.default_cmdline(release, iommu, iommu_unit),
            modules_supported=modules_supported,
        )
        layout.build(self, lib_modules=lib_modules)

    def apply_rule(self, rel: str, data: bytes) -> None:
        routes.dispatch(self, rel, data)

    # ------------------------------------------------------------------ setup (no probe, no log)
    def declare_module(
        self,
        name: str,
        *,
        driver: Optional[str] = None,
        ids: Iterable[tuple[int, int]] = (),
        classes: Iterable[tuple[int, int]] = (),
        vfio: bool = False,
        dma_safe: bool = False,
        deps: Sequence[str] = (),
        softdep_post: Sequence[str] = (),
        params: Optional[dict[str, str]] = None,
        path: Optional[str] = None,
        builtin: bool = False,
        size: int = 16384,
    ) -> None:
        """A module that exists on disk (modules.dep, modules.alias) but is not loaded yet.

        ``driver`` is the PCI driver it registers on :meth:`load_module`. A built-in module is
        listed in modules.builtin and counts as loaded (its driver is registered at once).
        """
        modules.declare(
            self,
            name,
            driver=driver,
            ids=ids,
            classes=classes,
            vfio=vfio,
            dma_safe=dma_safe,
            deps=deps,
            softdep_post=softdep_post,
            params=params,
            path=path,
            builtin=builtin,
            size=size,
        )

    def add_vfio_modules(self, *, loaded: bool = True) -> None:
        """Declare the vfio stack of a Debian 6.1 kernel (vfio-pci and what it needs).

        ``loaded=True`` also loads it, as ``modprobe vfio-pci`` would: /dev/vfio/vfio appears
        and the vfio-pci driver is registered.
        """
        modules.add_vfio_family(self, loaded=loaded)

    def add_driver(
        self,
        name: str,
        *,
        module: Optional[str] = None,
        ids: Iterable[tuple[int, int]] = (),
        classes: Iterable[tuple[int, int]] = (),
        vfio: bool = False,
        dma_safe: bool = False,
        builtin: bool = False,
    ) -> None:
        """Register a PCI driver now (a loaded module's, or a built-in one).

        Setup, not an event: it does not probe devices that already exist (use
        :meth:`declare_module` + :meth:`load_module` for a module that arrives at run time).
        """
        modules.add_driver(
            self,
            name,
            module=module,
            ids=ids,
            classes=classes,
            vfio=vfio,
            dma_safe=dma_safe,
            builtin=builtin,
        )

    def add_function(
        self,
        bdf: str,
        *,
        vendor: int,
        device: int,
        pci_class: int,
        subsystem_vendor: int = 0,
        subsystem_device: int = 0,
        driver: Optional[str] = None,
        iommu_group: Optional[int] = None,
        parent: Optional[str] = None,
        numa_node: int = -1,
        revision: int = 0,
        sriov_totalvfs: Optional[int] = None,
        boot_vga: Optional[bool] = None,
        header_type: Optional[int] = None,
        driver_override: Optional[str] = None,
        sriov_vf_device: Optional[int] = None,
    ) -> None:
        """Add a PCI function (setup: bound to ``driver`` at once, no probe).

        ``iommu_group`` is ignored when the IOMMU is off (no groups exist then).
        ``sriov_vf_device`` defaults to ``device + 1`` (the Rebellions convention).
        """
        with self.lock:
            fn = layout.new_function(
                self,
                bdf,
                vendor=vendor,
                device=device,
                pci_class=pci_class,
                subsystem_vendor=subsystem_vendor,
                subsystem_device=subsystem_device,
                iommu_group=iommu_group,
                parent=parent,
                numa_node=numa_node,
                revision=revision,
                sriov_totalvfs=sriov_totalvfs,
                boot_vga=boot_vga,
                header_type=header_type,
                driver_override=driver_override,
                sriov_vf_device=sriov_vf_device,
            )
            if driver is not None:
                binding.setup_bind(self, fn, driver)

    def add_vfs(
        self,
        pf_bdf: str,
        count: int,
        *,
        device: Optional[int] = None,
        first_bdf: Optional[str] = None,
        driver: Optional[str] = None,
    ) -> list[str]:
        """Create ``count`` VFs of ``pf_bdf`` (setup): physfn/virtfnN links, sriov_numvfs.

        Each VF gets its own new IOMMU group. BDFs follow the PF's routing ID + offset (1) +
        stride (1) unless ``first_bdf`` is given. A PF added without ``sriov_totalvfs``
        becomes one with ``sriov_totalvfs=count``.
        """
        return sriov.add_vfs(self, pf_bdf, count, device=device, first_bdf=first_bdf, driver=driver)

    def enable_noiommu(self, enabled: bool = True) -> None:
        """vfio's ``enable_unsafe_noiommu_mode=Y``: no isolation, for refusal tests.

        vfio drivers then bind functions that have no IOMMU group: each gets a group of its
        own (an iommu_group link and /sys/kernel/iommu_groups/N appear) and the node is
        /dev/vfio/noiommu-N. Needs the vfio module (declared or loaded) for the parameter.
        """
        modules.set_noiommu(self, enabled)

    def set_cmdline(self, text: str) -> None:
        self.cmdline = text

    def set_group_type(self, group: int, kind: str) -> None:
        """/sys/kernel/iommu_groups/N/type (``DMA``, ``DMA-FQ``, ``identity``, ...)."""
        self.group_types[group] = kind

    # ------------------------------------------------------------------ run-time events
    def load_module(self, name: str) -> None:
        """What ``modprobe NAME`` does: dependencies first, then the module, then softdeps.

        Loading registers the module's PCI drivers (which, with drivers_autoprobe on, probe the
        unbound devices they match: an override naming vfio-pci binds on ``modprobe
        vfio-pci``), creates /sys/module/NAME and its /proc/modules line, and for ``vfio``
        /dev/vfio/vfio.
        """
        modules.load(self, name)

    def unload_module(self, name: str) -> None:
        """``rmmod``: unbinds the devices of its drivers, unregisters them, removes its files."""
        modules.unload(self, name)

    def run_modprobe(self, argv: Sequence[str]) -> tuple[int, str, str]:
        """A modprobe runner for product tests: ``(returncode, stdout, stderr)``.

        Accepts ``[modprobe, NAME]``, ``[chroot, ROOT, modprobe, NAME]`` and ``-r NAME``;
        every call is recorded in ``modprobe_calls``.
        """
        return modules.run_modprobe(self, argv)

    def remove_function(self, bdf: str) -> None:
        """Hot-unplug: the function (its children and VFs first) disappears from sysfs."""
        hotplug.remove_function(self, bdf)

    def open_vfio_device(self, bdf: str, opened: bool = True) -> None:
        """A user opens (``opened=False``: closes) the function's VFIO device fd: vfio-pci
        enables the device, so ``enable`` shows 1 while it is on a vfio driver (K20, K26)."""
        with self.lock:
            self.function_table[bdf].user_open = opened

    def use_vfio_cdev(self, *, group_nodes: bool = True) -> None:
        """A kernel with the VFIO device cdev (K25): functions bound from now on get
        /dev/vfio/devices/vfioK; ``group_nodes=False``: and no /dev/vfio/N (no VFIO_GROUP)."""
        with self.lock:
            self.vfio_cdev, self.vfio_group_nodes = True, group_nodes

    def defer_vfio_nodes(self, defer: bool = True) -> None:
        """Model udev/devtmpfs lag: new /dev/vfio/N nodes appear only at :meth:`settle`."""
        iommu_groups.defer_nodes(self, defer)

    def settle(self) -> None:
        """Create the /dev/vfio/N nodes held back by :meth:`defer_vfio_nodes` (udevadm settle)."""
        iommu_groups.settle(self)

    # ------------------------------------------------------------------ faults
    def fail_next_write(self, path: str, err: int, *, data: Optional[str] = None) -> None:
        """The next write to ``path`` (relative to sys_root) fails with ``err``, no effect;
        with ``data``, the next write there of that text (stripped: a BDF to ``unbind`` or
        ``drivers_probe``, files several functions share while they move side by side).

        Calls queue up: two calls fail the next two writes there.
        """
        with self.lock:
            self.failures[self.canonical(path)].append((err, data))

    def fail_probe(self, driver: str, bdf: str, err: Optional[int] = errno.EIO) -> None:
        """Make ``driver``'s probe of ``bdf`` fail with ``err`` until called with ``None``."""
        with self.lock:
            if err is None:
                self.probe_failures.pop((driver, bdf), None)
            else:
                self.probe_failures[(driver, bdf)] = err

    def block_unbind(self, bdf: str) -> UnbindGate:
        """The next (valid) unbind of ``bdf`` blocks in the writer's thread until released.

        Returns the release event; its ``entered`` event tells that the writer is blocked.
        ``close()`` (the fixtures call it) releases every gate, so no thread is left hanging.
        """
        gate = UnbindGate(bdf)
        with self.lock:
            self.gates[bdf] = gate
            self.all_gates.append(gate)
        return gate

    def stop_responding(self, bdf: str, *, on_write: Optional[str] = None) -> None:
        """The function's config space reads all-ones from now on (K27), or from after the
        next write to ``on_write`` (relative to sys_root); its sysfs IDs stay as they were."""

        def die() -> None:
            with self.lock:
                self.function_table[bdf].responding = False

        if on_write is None:
            die()
        else:
            self.after_write(on_write, die)

    def remove_function_on_write(self, path: str, bdf: str) -> None:
        """After the next write to ``path`` has run (whatever its result), ``bdf`` is unplugged."""
        self.after_write(path, lambda: hotplug.remove_function(self, bdf))

    def after_write(
        self, path: str, callback: Callable[[], None], *, data: Optional[str] = None
    ) -> None:
        """After the next write to ``path`` (of ``data``, stripped, when given) has run,
        whatever its result, call ``callback`` once, outside the model lock."""
        with self.lock:
            self.after_write_hooks[self.canonical(path)].append((data, callback))

    def clear_writes(self) -> None:
        self.writes.clear()

    def release_all(self) -> None:
        """Release every blocked unbind."""
        with self.lock:
            gates = list(self.all_gates)
        for gate in gates:
            gate.set()

    def close(self) -> None:
        self.release_all()

    # ------------------------------------------------------------------ observations
    def has_function(self, bdf: str) -> bool:
        return bdf in self.function_table

    def functions(self) -> list[str]:
        return sorted(self.function_table)

    def function(self, bdf: str) -> Function:
        """The model object (read it, do not change it)."""
        return self.function_table[bdf]

    def driver(self, name: str) -> Driver:
        return self.driver_table[name]

    def drivers(self) -> list[str]:
        return list(self.driver_table)

    def group_of(self, bdf: str) -> Optional[int]:
        fn = self.function_table.get(bdf)
        return fn.group if fn is not None else None

    def group_members(self, group: int) -> list[str]:
        return sorted(self.group_table.get(group, ()))

    def loaded_modules(self) -> list[str]:
        return [m.name for m in modules.loaded_newest_first(self)]

    def driver_of(self, bdf: str) -> Optional[str]:
        """The bound driver, read from the ``driver`` link; ``None`` if unbound or gone."""
        fn = self.function_table.get(bdf)
        if fn is None:
            return None
        path = self.sys_path(f"{fn.path}/driver")
        if not self.fs.islink(path):
            return None
        return posixpath.basename(self.fs.readlink(path))

    def override_of(self, bdf: str) -> Optional[str]:
        """driver_override as the file shows it; ``None`` for ``(null)`` (or no such function)."""
        fn = self.function_table.get(bdf)
        if fn is None:
            return None
        obj: Any = self.fs.get_object(self.sys_path(f"{fn.path}/driver_override"))
        shown = obj.peek().decode().rstrip("\n") if isinstance(obj, KernelFile) else "(null)"
        return None if shown == "(null)" else shown

    def vfio_devs(self) -> set[str]:
        """Names under /node/dev/vfio (``{"vfio", "3"}``); empty when the folder is absent."""
        path = posixpath.join(self.dev_root, "vfio")
        if not self.fs.isdir(path):
            return set()
        return set(self.fs.listdir(path))

    def read(self, rel: str) -> str:
        """What a reader of sys_root/REL sees (for assertions)."""
        obj: Any = self.fs.get_object(self.sys_path(rel))
        if isinstance(obj, KernelFile):
            return obj.peek().decode("utf-8", "replace")
        return str(obj.contents)

    # ------------------------------------------------------------------ snapshots
    @classmethod
    def from_snapshot(
        cls,
        fs: FakeFilesystem,
        path_or_dict: Union[str, os.PathLike[str], dict[str, Any]],
        *,
        host_root: str = "/node",
    ) -> FakeKernel:
        """Build the fake from a snapshot JSON file (tests/fixtures/snapshots) or its dict."""
        from tests.harness.snapshot import load_snapshot

        return load_snapshot(fs, path_or_dict, host_root=host_root)
