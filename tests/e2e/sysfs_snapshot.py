"""In-process, read-only snapshot of the PCI/IOMMU/VFIO state of the running kernel.

Same JSON format as shared/snapshots/sysfs-snapshot.py (documented in docs/testing.md), so
the recordings of tests/e2e can be loaded by the same fake-sysfs builder as the snapshots of
real machines. Everything is read from /sys, /proc, /dev and /lib/modules in this process;
only ``lspci`` runs as a child (the snapshot's human-readable part). Nothing is written.
"""

from __future__ import annotations

import errno
import os
import platform
import re
import subprocess
from typing import Any, Optional

ATTRS = [
    "vendor", "device", "class", "subsystem_vendor", "subsystem_device", "revision",
    "driver_override", "numa_node", "enable", "boot_vga", "sriov_totalvfs", "sriov_numvfs",
    "sriov_drivers_autoprobe", "sriov_offset", "sriov_stride", "sriov_vf_device",
    "reset_method", "modalias", "irq", "local_cpulist", "current_link_speed",
    "current_link_width", "max_link_speed", "max_link_width", "d3cold_allowed",
    "power_state", "msi_bus", "broken_parity_status", "ari_enabled", "label", "index",
]  # fmt: skip
LINKS = ["driver", "iommu_group", "physfn", "subsystem", "firmware_node", "iommu"]
_IOMMU_LOG = re.compile(r"iommu|dmar|vfio|AMD-Vi", re.IGNORECASE)


def _read(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            return f.read(4096).decode("utf-8", "replace").rstrip("\n")
    except OSError as e:
        return {"error": e.strerror}


def _link(path: str) -> Optional[str]:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _listdir(path: str) -> Optional[list[str]]:
    return sorted(os.listdir(path)) if os.path.isdir(path) else None


def _lspci(*args: str) -> str:
    try:
        return subprocess.run(
            ["lspci", *args], capture_output=True, text=True, timeout=20, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        return f"error: {e}"


def _kernel_log_iommu(limit: int = 200) -> str:
    """``dmesg | grep -iE 'iommu|dmar|vfio|AMD-Vi'`` read from /dev/kmsg, without a child."""
    lines: list[str] = []
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        return f"error: {e}"
    try:
        while True:
            try:
                record = os.read(fd, 8192).decode("utf-8", "replace")
            except OSError as e:
                if e.errno == errno.EPIPE:  # overwritten record: go on with the next
                    continue
                break  # EAGAIN: end of the buffer
            prefix, _, text = record.partition(";")
            fields = prefix.split(",")
            usec = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else 0
            text = text.split("\n", 1)[0]
            if _IOMMU_LOG.search(text):
                lines.append(f"[{usec // 1000000:5d}.{usec % 1000000:06d}] {text}")
    finally:
        os.close(fd)
    return "".join(line + "\n" for line in lines[:limit])


def _modules_lines(pattern: str, relpath: str, limit: int = 50) -> str:
    path = f"/lib/modules/{platform.release()}/{relpath}"
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            hits = [line for line in f if re.search(pattern, line)]
    except OSError as e:
        return f"grep: {path}: {e.strerror}\n"
    return "".join(hits[:limit])


def _vfio_ko(limit: int = 50) -> str:
    base = f"/lib/modules/{platform.release()}"
    found = []
    for d, dirs, files in os.walk(base):
        dirs.sort()
        found += [f"{d}/{n}" for n in dirs + sorted(files) if "vfio" in n]
    return "".join(p + "\n" for p in found[:limit])


def snapshot(with_lspci: bool = True) -> dict[str, Any]:
    """The state of this kernel, as sysfs-snapshot.py would print it (a dict, not JSON)."""
    snap: dict[str, Any] = {
        "uname": platform.uname()._asdict(),
        "cmdline": _read("/proc/cmdline"),
        "os_release": _read("/etc/os-release"),
        "proc_modules": _read("/proc/modules"),
        "sys_module_vfio": {},
        "dev_vfio": _listdir("/dev/vfio"),
        "class_iommu": _listdir("/sys/class/iommu"),
        "pci_bus_files": _listdir("/sys/bus/pci"),
        "drivers_autoprobe": _read("/sys/bus/pci/drivers_autoprobe"),
        "drivers": {},
        "devices": {},
        "iommu_groups": {},
        "lspci": _lspci("-nnk") if with_lspci else "",
        "lspci_tree": _lspci("-tv") if with_lspci else "",
        "dmesg_iommu": _kernel_log_iommu(),
        "modules_builtin_vfio": _modules_lines("vfio|iommu", "modules.builtin"),
        "modules_vfio_ko": _vfio_ko(),
        "virt": "qemu\n",
    }
    for m in _listdir("/sys/module") or []:
        if "vfio" in m or "iommu" in m:
            p = f"/sys/module/{m}/parameters"
            names = _listdir(p)
            snap["sys_module_vfio"][m] = {n: _read(f"{p}/{n}") for n in names} if names else {}
    base = "/sys/bus/pci/drivers"
    for d in _listdir(base) or []:
        entries = sorted(os.listdir(f"{base}/{d}"))
        snap["drivers"][d] = {
            "files": [e for e in entries if not e[:4].isdigit()],
            "devices": [e for e in entries if e[:4].isdigit()],
            "module": _link(f"{base}/{d}/module"),
        }
    base = "/sys/bus/pci/devices"
    for bdf in _listdir(base) or []:
        p = f"{base}/{bdf}"
        entries = sorted(os.listdir(p))
        virtfns = [e for e in entries if e.startswith("virtfn")]
        snap["devices"][bdf] = {
            "realpath": os.path.realpath(p),
            "entries": entries,
            "attrs": {a: _read(f"{p}/{a}") for a in ATTRS if a in entries},
            "links": {n: _link(f"{p}/{n}") for n in LINKS + virtfns if n in entries},
            "consumers": [e for e in entries if e.startswith(("consumer:", "supplier:"))],
        }
    base = "/sys/kernel/iommu_groups"
    groups = _listdir(base) or []
    for g in sorted(groups, key=lambda s: (0, int(s), "") if s.isdigit() else (1, 0, s)):
        snap["iommu_groups"][g] = {
            "type": _read(f"{base}/{g}/type"),
            "devices": sorted(os.listdir(f"{base}/{g}/devices")),
        }
    return snap
