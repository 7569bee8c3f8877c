"""Which driver may take a function, and whether its probe succeeds.

The matching rules of docs/kernel-facts.md (pci_match_device in drivers/pci/pci-driver.c):

- K8 (rule 1): an override naming another driver keeps every other driver away.
- K9 (rule 2): the driver the override names matches any function, whatever its table.
- K10 (rule 3): vfio-pci and its variants match only when the override names them; their
  ID tables are "override only". IDs added through new_id (K7) are the exception.
- K11 (rule 4): the override holds a *driver* name; a module name matches nothing.

Probing (K13): vfio-pci refuses a function without an IOMMU group (unless vfio's
no-IOMMU mode is on), a bridge, and a PF with VFs enabled; each refusal leaves a dmesg line
and only ``bind`` reports it, ``drivers_probe`` does not (K6).
"""

from __future__ import annotations

import errno
from typing import Optional

from tests.harness.kernel import binding
from tests.harness.kernel.model import Driver, Function
from tests.harness.kernel.state import KernelState


def static_match(drv: Driver, fn: Function) -> Optional[str]:
    """The driver's compiled-in tables: ``id``, ``class`` or ``None``."""
    if (fn.vendor, fn.device) in drv.ids:
        return "id"
    for cls, mask in drv.classes:
        if not (cls ^ fn.pci_class) & mask:
            return "class"
    return None


def match(drv: Driver, fn: Function) -> Optional[str]:
    """pci_match_device: ``None``, or how it matched (``id``, ``class``, ``override``)."""
    if fn.override is not None and fn.override != drv.name:
        return None  # K8, rule 1 (also K11: "vfio_pci" names no driver)
    if any(dyn.matches(fn) for dyn in drv.dyn_ids):
        return "id"  # new_id entries match even on vfio-pci (the old new_id method), K7
    kind = static_match(drv, fn)
    if kind is not None and (not drv.vfio or fn.override is not None):
        return kind  # vfio tables are override_only: K10, rule 3
    if fn.override is not None:
        return "override"  # K9, rule 2: the named driver matches any device
    return None


def probe_error(s: KernelState, drv: Driver, fn: Function) -> Optional[int]:
    """The errno ``drv``'s probe of ``fn`` returns, ``None`` when it succeeds (K13)."""
    forced = s.probe_failures.get((drv.name, fn.bdf))
    if forced is not None:
        return forced
    if drv.vfio:
        if (not s.iommu or fn.group is None) and not s.noiommu:
            return errno.EINVAL  # no IOMMU group: vfio_pci_core_register_device fails
        if fn.header_type != 0:
            return errno.EINVAL  # bridges: vfio_pci_probe refuses non-normal headers
        if fn.vfs:
            return errno.EBUSY  # PF with VFs enabled
    return None


def try_probe(s: KernelState, drv: Driver, fn: Function) -> Optional[int]:
    """really_probe: attach on success, a dmesg line and the errno on failure."""
    err = probe_error(s, drv, fn)
    if err is not None:
        s.dmesg.append(
            f"{drv.name} {fn.bdf}: probe with driver {drv.name} failed with error -{err}"
        )
        return err
    binding.attach(s, fn, drv)
    return None


def attach_best(s: KernelState, fn: Function) -> None:
    """device_attach: the first driver that matches and whose probe succeeds.

    DOUBT: the kernel walks drivers in registration order and relies on probe() refusing
    what a class match caught by mistake (pcieport refuses non-port bridges). The fake
    tries ID matches (and the override) before class matches instead.
    """
    if fn.driver is not None:
        return
    by_id, by_class = [], []
    for drv in s.driver_table.values():
        kind = match(drv, fn)
        if kind == "class":
            by_class.append(drv)
        elif kind is not None:
            by_id.append(drv)
    for drv in by_id + by_class:
        if try_probe(s, drv, fn) is None:
            return


def driver_attach(s: KernelState, drv: Driver) -> None:
    """driver_attach: probe every unbound device that matches (module load, new_id)."""
    for fn in sorted(s.function_table.values(), key=lambda f: f.bdf):
        if fn.driver is None and match(drv, fn) is not None:
            try_probe(s, drv, fn)
