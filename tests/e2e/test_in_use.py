"""A process holding /dev/vfio/N (like a VM) makes unbind refuse, promptly, without hanging.

Without in-use detection the kernel's vfio-pci remove() blocks until the holder lets go, and a
signal then leaves the writer in uninterruptible sleep: so the CLI runs as a separate process
here, with a deadline, and the holder is killed before anything waits on it.
"""

import json
import os
import subprocess
import time

import guest
import pytest
from conftest import Baseline
from guest import E1000E, SEL_E1000E

DEADLINE = 60
# whether vfio-dev stays while an unbind waits for a holder, on the kernels the tier runs
_VFIO_DEV_DURING_THE_WAIT = {"6.1": True, "6.12": False}


def test_unbind_refuses_while_a_process_holds_the_group(baseline: Baseline) -> None:
    guest.move_to_vfio(E1000E)
    holder = guest.start_holder(guest.HOLDER, E1000E, str(guest.group(E1000E)))
    try:
        code, printed = guest.unbind_while_held(holder, E1000E, *SEL_E1000E, deadline=DEADLINE)
        assert code == 1, f"exit {code}\n{printed}"
        assert guest.driver(E1000E) == "vfio-pci", "the held function must stay on vfio-pci"
        assert guest.override(E1000E) == "vfio-pci"
        assert f"PID {holder.pid} (python3) has /dev/vfio/" in printed, printed
        # status --holders names it too, from the guest's real /proc, and writes nothing
        node = f"/dev/vfio/{guest.group(E1000E)}"
        shown = guest.run_cli("status", "--holders", "--json", *SEL_E1000E)
        assert shown.exit_code == 0, shown
        assert shown.writes == [], shown
        (device,) = json.loads(shown.stdout)["devices"]
        group_fd = {"pid": holder.pid, "command": "python3", "holds": node, "via": "fd"}
        assert group_fd in device["holders"], device  # its device fd may be named too (K26)
        assert {h["pid"] for h in device["holders"]} == {holder.pid}, device
    finally:
        holder.kill()
        holder.wait()

    # once the holder is gone the same unbind works
    r = guest.run_cli("unbind", E1000E, *SEL_E1000E)
    assert r.exit_code == 0, r
    assert guest.driver(E1000E) == "e1000e"


def _start_holder(bdf: str) -> subprocess.Popen[str]:
    return guest.start_holder(guest.HOLDER, bdf, str(guest.group(bdf)))


@pytest.mark.both_kernels
def test_kernel_blocks_unbind_while_the_group_is_held(baseline: Baseline) -> None:
    """The kernel fact behind in-use detection: the unbind write waits for the holder.

    Also proves the holder works (its fds show in /proc/PID/fd, where a tool can find them).
    """
    guest.move_to_vfio(E1000E)
    group = guest.group(E1000E)
    holder = _start_holder(E1000E)
    writer = None
    try:
        fds = {
            os.readlink(f"/proc/{holder.pid}/fd/{fd}")
            for fd in os.listdir(f"/proc/{holder.pid}/fd")
        }
        assert f"/dev/vfio/{group}" in fds
        assert "/dev/vfio/vfio" in fds
        assert any(fd.startswith("anon_inode:[vfio-device]") for fd in fds), fds
        writer = subprocess.Popen(
            ["sh", "-c", f"echo {E1000E} > /sys/bus/pci/drivers/vfio-pci/unbind"]
        )
        time.sleep(3)
        assert writer.poll() is None, "unbind returned although a process held the device"
        # the driver core removes the driver link BEFORE calling vfio-pci's remove(): while
        # the unbind is blocked, sysfs already says "no driver" although vfio still has it
        assert guest.driver(E1000E) is None
        # ... while the group node is still there; vfio-dev stays too on 6.1 and goes at once
        # on 6.12, whose remove() deletes the device before it waits (kernel-facts K5, K25)
        assert os.path.exists(f"/dev/vfio/{group}")
        kept = _VFIO_DEV_DURING_THE_WAIT.get(".".join(os.uname().release.split(".")[:2]))
        if kept is not None:
            assert os.path.exists(f"{guest.PCI}/{E1000E}/vfio-dev") == kept
    finally:
        holder.kill()
        holder.wait()
        if writer is not None:
            writer.wait(timeout=60)
    assert writer.returncode == 0
    assert guest.driver(E1000E) is None  # unbound; override still vfio-pci: the fixture restores
