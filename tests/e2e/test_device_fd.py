"""A process that keeps only a VFIO device fd (and a BAR mapped through it) holds the function.

The legacy group API lets a process get the device fd from /dev/vfio/N and close the group
and container fds after: /proc/PID/fd then shows only ``anon_inode:[vfio-device]``, and on
this kernel (6.1) its fdinfo does not say which device it is (kernel-facts K26). The unbind
must still be refused, at once: the kernel's unbind would block until the holder lets go.
"""

import os
import subprocess
import sys

import guest
from conftest import Baseline
from guest import E1000E, SEL_E1000E

DEADLINE = 60

# The VM's way to the device, then only the device fd kept, with BAR0 mapped through it.
DEVICE_FD_ONLY = (
    guest.VFIO_HOLD
    + r"""
import mmap
bdf, group = sys.argv[1], sys.argv[2]
container, grp, dev = hold(bdf, group)
info = bytearray(struct.pack("IIIIQQ", 32, 0, 0, 0, 0, 0))  # vfio_region_info of BAR0
fcntl.ioctl(dev, io(8), info, True)
_argsz, flags, _index, _cap, size, offset = struct.unpack("IIIIQQ", info)
bar = mmap.mmap(dev, size, mmap.MAP_SHARED, mmap.PROT_READ, offset=offset) if flags & 4 else None
os.close(grp)
os.close(container)
print("holding", bdf, "device fd", dev, "mapped" if bar is not None else "not mapped", flush=True)
time.sleep(3600)
"""
)


def _links(pid: int) -> dict[str, str]:
    base = f"/proc/{pid}/fd"
    return {fd: os.readlink(f"{base}/{fd}") for fd in os.listdir(base)}


def test_unbind_refuses_a_process_that_keeps_only_the_device_fd(baseline: Baseline) -> None:
    guest.move_to_vfio(E1000E)
    assert guest.attr(E1000E, "enable") == "0", "an idle function on vfio-pci is disabled"
    holder = guest.start_holder(DEVICE_FD_ONLY, E1000E, str(guest.group(E1000E)))
    cli = None
    try:
        links = _links(holder.pid)
        device = [fd for fd, link in links.items() if link == "anon_inode:[vfio-device]"]
        assert device, links  # the fd, and the copy python's mmap keeps
        assert not any(link.startswith("/dev/vfio/") for link in links.values()), links
        for fd in device:
            with open(f"/proc/{holder.pid}/fdinfo/{fd}") as fdinfo:
                assert "vfio-device-syspath" not in fdinfo.read()  # 6.1: the device is unnamed
        with open(f"/proc/{holder.pid}/maps") as maps:
            assert "anon_inode:[vfio-device]" in maps.read()
        assert guest.attr(E1000E, "enable") == "1", "an open device fd enables the device"

        cli = subprocess.Popen(
            [sys.executable, "-m", "vfio_manager", "unbind", E1000E, *SEL_E1000E],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = cli.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            holder.kill()  # lets the kernel's remove() finish, so the CLI can end
            out, err = cli.communicate(timeout=60)
            raise AssertionError(f"unbind blocked behind the device fd:\n{out}\n{err}") from None
        assert cli.returncode == 1, f"exit {cli.returncode}\n{out}\n{err}"
        assert f"PID {holder.pid}" in out, out
        assert "VFIO device fd" in out, out
        assert guest.driver(E1000E) == "vfio-pci", "the held function must stay on vfio-pci"
    finally:
        holder.kill()
        holder.wait()
        if cli is not None and cli.poll() is None:
            cli.wait(timeout=60)
    guest.wait_for(lambda: guest.attr(E1000E, "enable") == "0", what="the device disabled")
    r = guest.run_cli("unbind", E1000E, *SEL_E1000E)
    assert r.exit_code == 0, r
    assert guest.driver(E1000E) == "e1000e"
