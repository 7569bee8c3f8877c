"""bus/pci/drivers_probe and bus/pci/drivers_autoprobe (drivers/base/bus.c).

docs/kernel-facts.md K6: ``drivers_probe`` gives an unbound function the best driver that
matches (K8-K11) and whose probe succeeds; it reports success whether or not anything bound
(a vfio-pci refusal included: K13), does nothing to a bound function, and is ENODEV only
for a name that is no function. ``drivers_autoprobe`` (``1`` by default) decides whether a
driver that registers (a module load, K21) probes the unbound functions it matches;
``drivers_probe`` works either way.
"""

from __future__ import annotations

import errno

from tests.harness.kernel import matching
from tests.harness.kernel.buffers import device_name, oserror
from tests.harness.kernel.state import KernelState
from tests.harness.kernel.tree import line


def probe(s: KernelState, data: bytes) -> None:
    """drivers_probe_store: ENODEV for an unknown device, success for every known one."""
    bdf = device_name(data)
    with s.lock:
        fn = s.function_table.get(bdf)
        if fn is None:
            raise oserror(errno.ENODEV)
        matching.attach_best(s, fn)


def autoprobe_show(s: KernelState) -> bytes:
    return line("1" if s.drivers_autoprobe else "0")


def autoprobe_store(s: KernelState, data: bytes) -> None:
    with s.lock:
        s.drivers_autoprobe = data[:1] != b"0"
