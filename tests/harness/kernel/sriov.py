"""bus/pci/devices/BDF/sriov_numvfs and .../sriov_drivers_autoprobe (drivers/pci/iov.c).

docs/kernel-facts.md K17: ``sriov_numvfs`` takes a number (kstrtoul: EINVAL else); more
than ``sriov_totalvfs`` is ERANGE; the current number again is a no-op; a PF whose driver
cannot configure SR-IOV (none bound, or vfio-pci without enable_sriov) gives ENOENT; going
from some VFs to another non-zero number is EBUSY (write 0 first); 0 removes every VF.
New VFs sit at the PF's routing ID + offset + i * stride, each in an IOMMU group of its
own (K14), with a ``physfn`` link back and a ``virtfnI`` link from the PF; they are probed
when ``sriov_drivers_autoprobe`` (and drivers_autoprobe, K6) is on. vfio-pci refuses a PF
that has VFs (K13).
"""

from __future__ import annotations

import errno
import posixpath
from typing import Optional

from tests.harness.kernel import binding, hotplug, iommu_groups, layout, matching
from tests.harness.kernel.buffers import kstrtoul, oserror
from tests.harness.kernel.model import Function
from tests.harness.kernel.state import KernelState
from tests.harness.pci import format_bdf, parse_bdf


def numvfs_store(s: KernelState, bdf: str, data: bytes) -> None:
    """sriov_numvfs_store."""
    num = kstrtoul(data)
    if num > 0xFFFF:
        raise oserror(errno.ERANGE)
    with s.lock:
        pf = s.function_table[bdf]
        if num > (pf.sriov_totalvfs or 0):
            raise oserror(errno.ERANGE)
        if num == len(pf.vfs):
            return
        drv = s.driver_table.get(pf.driver) if pf.driver else None
        if drv is None or not drv.sriov_configure:
            raise oserror(errno.ENOENT)
        if num == 0:
            for vf in list(pf.vfs):
                hotplug.remove_function(s, vf)
            return
        if pf.vfs:
            raise oserror(errno.EBUSY)
        for vf in create_vfs(s, pf, num, None):
            if s.drivers_autoprobe and pf.sriov_autoprobe:
                matching.attach_best(s, s.function_table[vf])


def autoprobe_store(s: KernelState, bdf: str, data: bytes) -> None:
    value = kstrtoul(data)
    with s.lock:
        s.function_table[bdf].sriov_autoprobe = bool(value)


def add_vfs(
    s: KernelState,
    pf_bdf: str,
    count: int,
    *,
    device: Optional[int],
    first_bdf: Optional[str],
    driver: Optional[str],
) -> list[str]:
    """Setup: ``count`` VFs of ``pf_bdf``, bound to ``driver`` if given (no probe)."""
    with s.lock:
        pf = s.function_table[pf_bdf]
        if pf.sriov_totalvfs is None:
            pf.sriov_totalvfs = count  # it becomes a PF
            layout.sriov_files(s, pf, static=True)
        if device is not None:
            pf.sriov_vf_device = device
        bdfs = create_vfs(s, pf, count, first_bdf)
        if driver is not None:
            for bdf in bdfs:
                binding.setup_bind(s, s.function_table[bdf], driver)
        return bdfs


def create_vfs(s: KernelState, pf: Function, count: int, first_bdf: Optional[str]) -> list[str]:
    if pf.vfs:
        raise ValueError(f"{pf.bdf} already has VFs")
    if pf.sriov_totalvfs is not None and count > pf.sriov_totalvfs:
        raise ValueError(f"{pf.bdf}: {count} VFs > sriov_totalvfs {pf.sriov_totalvfs}")
    domain, bus, devfn = parse_bdf(first_bdf if first_bdf else pf.bdf)
    rid = (bus << 8) | devfn
    start = rid if first_bdf else rid + pf.sriov_offset
    bdfs = []
    for index in range(count):
        vf_rid = start + index * (1 if first_bdf else pf.sriov_stride)
        bdf = format_bdf(domain, vf_rid >> 8, vf_rid & 0xFF)
        parent_dir = posixpath.dirname(pf.path)
        layout.new_function(
            s,
            bdf,
            vendor=pf.vendor,
            device=pf.sriov_vf_device,
            pci_class=pf.pci_class,
            subsystem_vendor=pf.subsystem_vendor,
            subsystem_device=pf.subsystem_device,
            iommu_group=iommu_groups.next_group(s),
            parent=pf.parent,
            numa_node=pf.numa_node,
            revision=pf.revision,
            path=f"{parent_dir}/{bdf}",
            physfn=pf.bdf,
        )
        pf.vfs.append(bdf)
        s.tree.link(s.sys_path(f"{pf.path}/virtfn{index}"), f"../{bdf}")
        bdfs.append(bdf)
    return bdfs
