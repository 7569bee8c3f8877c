"""Real machines' sysfs snapshots (tests/fixtures/snapshots) in and out of the fake kernel.

:func:`load_snapshot` builds a :class:`FakeKernel` from a snapshot JSON. :func:`take_snapshot`
reads a fake (through the patched ``os``, exactly as the snapshot script reads a real /sys)
and returns the same JSON shape, so :func:`diff_snapshots` can compare a fake against a real
machine: after loading (fidelity of the loader) and after the same operations the real kernel
went through (q35-vfio-loaded + two safe-order binds == q35-two-bound).

What the loader derives (the snapshot does not say it directly):

- driver ID tables: the vendor:device of every device bound to the driver, plus every device
  whose lspci "Kernel modules:" line names the driver's module (so e1000e still matches
  03:00.0 in q35-two-bound, where vfio-pci holds it); ``pcieport`` also matches class 0x0604xx.
  Drivers with no such device have empty tables.
- a driver named vfio-pci or with vfio_pci in its name or module is a vfio driver; drivers
  without a ``module`` link are built in.
- the vfio stack is declared (not loaded) when modules_vfio_ko lists vfio-pci.ko, so
  ``load_module("vfio_pci")`` works on q35-boot.
- a device has a PM capability (vfio-pci idles it in D3hot) when its reset_method says ``pm``.
- directory entries the model does not know become empty read-only files or empty folders.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from typing import Any, Optional, Union

from pyfakefs.fake_filesystem import FakeFilesystem
from pyfakefs.fake_filesystem_unittest import Pause

from tests.harness.fakekernel import FakeKernel
from tests.harness.kernel import binding, drivers, layout, modules
from tests.harness.kernel.model import DRIVER_CHILD_RE, Driver, DriverSpec, Module
from tests.harness.pci import normalize_module

Snapshot = dict[str, Any]

# the keys the fake models; the rest (lspci, dmesg, uname, ...) is context
MODELLED_KEYS = (
    "devices",
    "drivers",
    "iommu_groups",
    "dev_vfio",
    "class_iommu",
    "pci_bus_files",
    "drivers_autoprobe",
    "cmdline",
    "proc_modules",
    "sys_module_vfio",
)

_ATTRS = [
    "vendor",
    "device",
    "class",
    "subsystem_vendor",
    "subsystem_device",
    "revision",
    "driver_override",
    "numa_node",
    "enable",
    "boot_vga",
    "sriov_totalvfs",
    "sriov_numvfs",
    "sriov_drivers_autoprobe",
    "sriov_offset",
    "sriov_stride",
    "sriov_vf_device",
    "reset_method",
    "modalias",
    "irq",
    "local_cpulist",
    "current_link_speed",
    "current_link_width",
    "max_link_speed",
    "max_link_width",
    "d3cold_allowed",
    "power_state",
    "msi_bus",
    "broken_parity_status",
    "ari_enabled",
    "label",
    "index",
]
_LINKS = ["driver", "iommu_group", "physfn", "subsystem", "firmware_node", "iommu"]
_BDF_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def read_snapshot(fs: Optional[FakeFilesystem], path: Union[str, os.PathLike[str]]) -> Snapshot:
    """Read a snapshot JSON from the real disk, also while pyfakefs is active."""
    if fs is not None and fs.has_patcher:
        with Pause(fs), open(path, encoding="utf-8") as handle:
            data: Snapshot = json.load(handle)
        return data
    with open(path, encoding="utf-8") as handle:
        loaded: Snapshot = json.load(handle)
    return loaded


def _is_error(value: object) -> bool:
    return not isinstance(value, str) or value.startswith(("grep:", "find:", "error:"))


def _basename(link: Optional[str]) -> Optional[str]:
    return posixpath.basename(link) if link else None


def _lspci_modules(text: object) -> dict[str, list[str]]:
    """``{BDF: [module, ...]}`` from ``lspci -nnk`` "Kernel modules:" lines."""
    found: dict[str, list[str]] = {}
    if not isinstance(text, str):
        return found
    current: Optional[str] = None
    for line in text.splitlines():
        match = re.match(r"^(?:([0-9a-f]{4}):)?([0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) ", line)
        if match:
            current = f"{match.group(1) or '0000'}:{match.group(2)}"
        elif current and line.strip().startswith("Kernel modules:"):
            names = line.split(":", 1)[1].split(",")
            found[current] = [normalize_module(n.strip()) for n in names if n.strip()]
    return found


def _parse_proc_modules(text: str) -> list[tuple[str, int, int, list[str], int]]:
    """``(name, size, refcnt, used_by, address)`` per line, newest first as in the file."""
    parsed = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6:
            continue
        used = [u for u in parts[3].split(",") if u and u != "-"]
        address = int(parts[5], 16) if parts[5].startswith("0x") else 0
        parsed.append((parts[0], int(parts[1]), int(parts[2]), used, address))
    return parsed


def load_snapshot(
    fs: FakeFilesystem,
    path_or_dict: Union[str, os.PathLike[str], Snapshot],
    *,
    host_root: str = "/node",
) -> FakeKernel:
    data = path_or_dict if isinstance(path_or_dict, dict) else read_snapshot(fs, path_or_dict)
    groups: dict[str, Any] = data.get("iommu_groups") or {}
    class_iommu: list[str] = data.get("class_iommu") or []
    proc_modules = data.get("proc_modules")
    k = FakeKernel(
        fs,
        release=data.get("uname", {}).get("release", "6.1.0-test"),
        iommu=bool(groups),
        host_root=host_root,
        iommu_unit=class_iommu[0] if class_iommu else "dmar0",
        cmdline=data.get("cmdline", ""),
        modules_supported=isinstance(proc_modules, str),
        lib_modules=not (
            _is_error(data.get("modules_builtin_vfio")) and _is_error(data.get("modules_vfio_ko"))
        ),
    )
    with k.lock:
        _load_modules(k, data)
        _load_devices_and_drivers(k, data)
        for name, info in groups.items():
            if isinstance(info, dict) and isinstance(info.get("type"), str):
                k.set_group_type(int(name), info["type"])
        for unit in class_iommu[1:]:
            k.tree.link(k.sys_path(f"class/iommu/{unit}"), f"../../devices/virtual/iommu/{unit}")
            k.tree.mkdir(k.sys_path(f"devices/virtual/iommu/{unit}"))
        _reconcile_dev_vfio(k, data.get("dev_vfio"))
        k.drivers_autoprobe = data.get("drivers_autoprobe", "1") != "0"
        if isinstance(data.get("os_release"), str):
            fs.create_file(
                posixpath.join(k.host_root, "etc/os-release"), contents=data["os_release"] + "\n"
            )
    return k


def _load_modules(k: FakeKernel, data: Snapshot) -> None:
    proc = data.get("proc_modules")
    parsed = _parse_proc_modules(proc) if isinstance(proc, str) else []
    _declare_modules_on_disk(k, data, vfio_loaded=any("vfio" in p[0] for p in parsed))
    _mark_loaded(k, parsed)


def _declare_modules_on_disk(k: FakeKernel, data: Snapshot, *, vfio_loaded: bool) -> None:
    table = k.module_table
    ko_text = data.get("modules_vfio_ko")
    prefix = f"/lib/modules/{k.release}/"
    ko_paths = []
    if not _is_error(ko_text):
        ko_paths = [
            line[len(prefix) :]
            for line in str(ko_text).splitlines()
            if line.startswith(prefix) and re.search(r"\.ko(\.\w+)?$", line)
        ]
    if ko_paths or vfio_loaded:
        k.add_vfio_modules(loaded=False)
    for rel in ko_paths:
        name = normalize_module(re.sub(r"\.ko(\.\w+)?$", "", posixpath.basename(rel)))
        if name in table:
            table[name].path = rel
        else:
            table[name] = Module(name, rel)
    builtin_text = data.get("modules_builtin_vfio")
    if not _is_error(builtin_text):
        for rel in str(builtin_text).splitlines():
            name = normalize_module(re.sub(r"\.ko$", "", posixpath.basename(rel.strip())))
            if rel.strip() and name not in table:
                k.declare_module(name, path=rel.strip(), builtin=True)
    for name, params in (data.get("sys_module_vfio") or {}).items():
        if name in table:
            table[name].params = dict(params)
        else:  # in /sys/module but not loadable: built in (with parameters)
            table[name] = Module(
                name, f"kernel/drivers/vfio/{name}.ko", builtin=True, params=dict(params)
            )


def _mark_loaded(k: FakeKernel, parsed: list[tuple[str, int, int, list[str], int]]) -> None:
    table = k.module_table
    for name, size, refcnt, used_by, address in reversed(parsed):  # oldest first
        mod = table.get(name)
        if mod is None:
            mod = table[name] = Module(name, f"kernel/drivers/misc/{name}.ko")
        mod.size, mod.address, mod.base_refs = size, address, refcnt - len(used_by)
        for holder in used_by:
            holder_mod = table.setdefault(
                holder, Module(holder, f"kernel/drivers/misc/{holder}.ko")
            )
            if name not in holder_mod.deps:
                holder_mod.deps.append(name)
    for name, *_rest in reversed(parsed):
        modules.loaded_without_probe(k, table[name])
    for mod in list(table.values()):
        if mod.builtin and mod.params and not mod.loaded:
            modules.loaded_without_probe(k, mod)


def _load_devices_and_drivers(k: FakeKernel, data: Snapshot) -> None:
    devices: dict[str, Any] = data.get("devices") or {}
    bound, virtfns = _load_devices(k, devices)
    _load_drivers(k, data, devices)
    for bdf, driver in bound.items():
        binding.setup_bind(k, k.function(bdf), driver)
    for pf_bdf, links in virtfns.items():
        pf = k.function(pf_bdf)
        for index in sorted(links):
            pf.vfs.append(links[index])
            k.tree.link(k.sys_path(f"{pf.path}/virtfn{index}"), f"../{links[index]}")


def _load_devices(
    k: FakeKernel, devices: dict[str, Any]
) -> tuple[dict[str, str], dict[str, dict[int, str]]]:
    """Create every function (parents first); return ``(bound drivers, virtfn links)``."""
    order = sorted(devices, key=lambda b: (devices[b]["realpath"].count("/"), b))
    bound: dict[str, str] = {}
    virtfns: dict[str, dict[int, str]] = {}
    for bdf in order:
        dv = devices[bdf]
        attrs = {a: v for a, v in dv.get("attrs", {}).items() if isinstance(v, str)}
        links: dict[str, str] = {n: t for n, t in dv.get("links", {}).items() if t}
        entries = set(dv.get("entries", []))
        path = dv["realpath"][len("/sys/") :]
        parts = path.split("/")
        parent = parts[-2] if len(parts) > 2 and _BDF_RE.match(parts[-2]) else None
        group = _basename(links.get("iommu_group"))
        override = attrs.get("driver_override", "(null)")
        fn = layout.new_function(
            k,
            bdf,
            vendor=int(attrs["vendor"], 16),
            device=int(attrs["device"], 16),
            pci_class=int(attrs["class"], 16),
            subsystem_vendor=int(attrs.get("subsystem_vendor", "0x0"), 16),
            subsystem_device=int(attrs.get("subsystem_device", "0x0"), 16),
            revision=int(attrs.get("revision", "0x0"), 16),
            numa_node=int(attrs.get("numa_node", "-1")),
            iommu_group=int(group) if group is not None else None,
            parent=parent,
            sriov_totalvfs=int(attrs["sriov_totalvfs"]) if "sriov_totalvfs" in attrs else None,
            sriov_vf_device=(
                int(attrs["sriov_vf_device"], 16) if "sriov_vf_device" in attrs else None
            ),
            driver_override=None if override == "(null)" else override,
            path=path,
            attrs=attrs,
            entries=entries,
            links=links,
            physfn=_basename(links.get("physfn")),
        )
        fn.pm = "pm" in attrs.get("reset_method", "").split()
        fn.power_state = attrs.get("power_state", "D0")
        driver = _basename(links.get("driver"))
        if driver is not None:
            bound[bdf] = driver
            fn.driver_children[driver] = sorted(e for e in entries if DRIVER_CHILD_RE.match(e))
        for name, target in links.items():
            if name.startswith("virtfn") and name[6:].isdigit():
                virtfns.setdefault(bdf, {})[int(name[6:])] = posixpath.basename(target)
    return bound, virtfns


def _load_drivers(k: FakeKernel, data: Snapshot, devices: dict[str, Any]) -> None:
    lspci = _lspci_modules(data.get("lspci"))
    for name, info in (data.get("drivers") or {}).items():
        module = _basename(info.get("module"))
        mod_name = normalize_module(module) if module else None
        vfio = (
            name == "vfio-pci"
            or "vfio_pci" in name
            or "vfio-pci" in name
            or (mod_name is not None and "vfio_pci" in mod_name)
        )
        ids: list[tuple[int, int]] = []
        if not vfio:
            members = list(info.get("devices", []))
            members += [b for b, mods in lspci.items() if mod_name is not None and mod_name in mods]
            for bdf in members:
                if bdf in devices:
                    fn = k.function(bdf)
                    if (fn.vendor, fn.device) not in ids:
                        ids.append((fn.vendor, fn.device))
        classes = [(0x060400, 0xFFFF00)] if name == "pcieport" else []
        if mod_name is not None:
            mod = k.module_table.get(mod_name)
            if mod is None:  # has a module link but is not in /proc/modules: built in
                mod = k.module_table[mod_name] = Module(
                    mod_name, f"kernel/drivers/misc/{mod_name}.ko", builtin=True
                )
                modules.loaded_without_probe(k, mod)
            mod.drivers = [s for s in mod.drivers if s.name != name] + [
                DriverSpec(name, tuple(ids), tuple(classes), vfio)
            ]
        drivers.register(
            k, Driver(name, mod_name, ids, classes, vfio, dma_safe=vfio or name == "pcieport")
        )


def _reconcile_dev_vfio(k: FakeKernel, wanted: object) -> None:
    folder = posixpath.join(k.dev_root, "vfio")
    if not isinstance(wanted, list):
        k.tree.remove(folder)
        return
    k.tree.mkdir(folder)
    for name in wanted:
        k.tree.chardev(posixpath.join(folder, str(name)))
    for name in k.fs.listdir(folder):
        if name not in wanted:
            k.tree.remove(posixpath.join(folder, name))


# ---------------------------------------------------------------------- taking a snapshot
def _read(path: str) -> Union[str, dict[str, str]]:
    try:
        with open(path, "rb") as handle:
            return handle.read(4096).decode("utf-8", "replace").rstrip("\n")
    except OSError as exc:
        return {"error": exc.strerror or str(exc)}


def _readlink(path: str) -> Optional[str]:
    try:
        return os.readlink(path)
    except OSError:
        return None


def take_snapshot(k: FakeKernel) -> Snapshot:
    """The modelled keys of sysfs-snapshot.py's output, read from the fake through ``os``."""
    sys_root, root = k.sys_root, k.host_root
    dev_vfio = posixpath.join(k.dev_root, "vfio")
    snap: Snapshot = {
        "cmdline": _read(posixpath.join(k.proc_root, "cmdline")),
        "proc_modules": _read(posixpath.join(k.proc_root, "modules")),
        "sys_module_vfio": {},
        "dev_vfio": sorted(os.listdir(dev_vfio)) if os.path.isdir(dev_vfio) else None,
        "class_iommu": sorted(os.listdir(f"{sys_root}/class/iommu"))
        if os.path.isdir(f"{sys_root}/class/iommu")
        else None,
        "pci_bus_files": sorted(os.listdir(f"{sys_root}/bus/pci")),
        "drivers_autoprobe": _read(f"{sys_root}/bus/pci/drivers_autoprobe"),
        "drivers": {},
        "devices": {},
        "iommu_groups": {},
    }
    for mod in sorted(os.listdir(f"{sys_root}/module")):
        if "vfio" in mod or "iommu" in mod:
            params = f"{sys_root}/module/{mod}/parameters"
            snap["sys_module_vfio"][mod] = (
                {n: _read(f"{params}/{n}") for n in sorted(os.listdir(params))}
                if os.path.isdir(params)
                else {}
            )
    base = f"{sys_root}/bus/pci/drivers"
    for name in sorted(os.listdir(base)):
        entries = sorted(os.listdir(f"{base}/{name}"))
        snap["drivers"][name] = {
            "files": [e for e in entries if not e[:4].isdigit()],
            "devices": [e for e in entries if e[:4].isdigit()],
            "module": _readlink(f"{base}/{name}/module"),
        }
    base = f"{sys_root}/bus/pci/devices"
    for bdf in sorted(os.listdir(base)):
        p = f"{base}/{bdf}"
        entries = sorted(os.listdir(p))
        links = _LINKS + [e for e in entries if e.startswith("virtfn")]
        realpath = os.path.realpath(p)
        snap["devices"][bdf] = {
            "realpath": realpath[len(root) :] if realpath.startswith(root + "/") else realpath,
            "entries": entries,
            "attrs": {a: _read(f"{p}/{a}") for a in _ATTRS if a in entries},
            "links": {n: _readlink(f"{p}/{n}") for n in links if n in entries},
            "consumers": [e for e in entries if e.startswith(("consumer:", "supplier:"))],
        }
    base = f"{sys_root}/kernel/iommu_groups"
    for group in sorted(os.listdir(base), key=lambda s: int(s) if s.isdigit() else -1):
        snap["iommu_groups"][group] = {
            "type": _read(f"{base}/{group}/type"),
            "devices": sorted(os.listdir(f"{base}/{group}/devices")),
        }
    return snap


def _proc_lines(value: object) -> object:
    """/proc/modules without the load addresses (they differ run to run)."""
    if not isinstance(value, str):
        return value
    return [" ".join(line.split()[:5]) for line in value.splitlines() if line.strip()]


def diff_snapshots(
    expected: Snapshot,
    actual: Snapshot,
    *,
    keys: tuple[str, ...] = MODELLED_KEYS,
    ignore: tuple[str, ...] = (),
) -> list[str]:
    """Human-readable differences (``/devices/0000:03:00.0/attrs/enable: '1' != '0'``).

    ``ignore`` holds path prefixes to skip, e.g. ``"/devices/0000:00:04.0/attrs/power_state"``.
    """
    out: list[str] = []

    def walk(a: object, b: object, where: str) -> None:
        if any(where == p or where.startswith(p + "/") for p in ignore):
            return
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                if key not in a or key not in b:
                    if not any(f"{where}/{key}".startswith(p) for p in ignore):
                        side = "fake" if key not in a else "snapshot"
                        out.append(f"{where}/{key}: only in {side}")
                    continue
                walk(a[key], b[key], f"{where}/{key}")
        elif isinstance(a, list) and isinstance(b, list) and a != b:
            extra, missing = (
                sorted(set(map(str, b)) - set(map(str, a))),
                sorted(set(map(str, a)) - set(map(str, b))),
            )
            out.append(
                f"{where}: fake has extra {extra}, lacks {missing}"
                if extra or missing
                else f"{where}: order {b} != {a}"
            )
        elif a != b:
            out.append(f"{where}: snapshot {a!r} != fake {b!r}")

    for key in keys:
        a, b = expected.get(key), actual.get(key)
        if key == "proc_modules":
            a, b = _proc_lines(a), _proc_lines(b)
        walk(a, b, "/" + key)
    return out
