"""bus/pci/devices/BDF/driver_override (driver_set_override, drivers/base/driver.c, 6.x).

docs/kernel-facts.md K3: reads ``(null)`` when unset. A write names the only driver that
may bind the function from now on; it neither unbinds nor binds nor loads a module. The
value ends at the first newline, so ``"\\n"`` alone clears it; the kernel measures it with
strlen, so ``"\\0"`` clears it too (on kernels after 2022, Debian's 6.1 included: QEMU tier);
a write of a page minus one byte or more is EINVAL; a 0-byte write never reaches the kernel
(K1, sysfsfile.py).
"""

from __future__ import annotations

import errno

from tests.harness.kernel.buffers import oserror
from tests.harness.kernel.model import Function
from tests.harness.kernel.state import KernelState
from tests.harness.kernel.tree import line

PAGE_SIZE = 4096


def show(fn: Function) -> bytes:
    return line(fn.override or "(null)")


def store(s: KernelState, bdf: str, data: bytes) -> None:
    if len(data) >= PAGE_SIZE - 1:
        raise oserror(errno.EINVAL)  # "one character less" than a page: 4095 is too long
    text = data.split(b"\0", 1)[0]  # strlen(): Python's "\0" clears (kernels after 2022)
    text = text.split(b"\n", 1)[0]  # cut at the first newline; "\n" alone clears
    with s.lock:
        fn = s.function_table.get(bdf)
        if fn is None:
            raise oserror(errno.ENODEV)
        fn.override = text.decode("utf-8", "replace") if text else None
