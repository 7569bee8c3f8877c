"""What the e2e suite knows about its guest, and the tools it drives it with.

The guest is booted by tools/e2e/run with a fixed set of emulated PCI functions (the QEMU
command line there is the source of truth). QEMU cannot emulate vendor 0x1eff, so the tests
select stand-ins with --vendor/--class/--device-id:

- e1000e 8086:10d3 class 0x020000 at 03:00.0 plays the NPU (native driver e1000e, own group)
- edu 1234:11e8 class 0x00ff00 at 00:04.0 (own group) and 02:02.0 (behind a PCIe-to-PCI
  bridge on shpchp, grouped with it and with pci-testdev 02:01.0): functions with no driver
- e1000 8086:100e at 00:05.0 shares a group with virtio-net 1af4:1000 at 00:05.1

- igb 8086:10c9 at 04:00.0 (82576, behind its own root port 00:08.0): an SR-IOV PF on
  igb whose VFs (8086:10ca, igbvf) the tests create and remove; absent when QEMU has no igb

00:02.0 and 00:03.0 are the virtio-9p functions that carry the shares: a write to them
would kill the run, so a guard refuses any such write made from this process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

PCI = "/sys/bus/pci/devices"

E1000E = "0000:03:00.0"
E1000 = "0000:00:05.0"
VIRTIO_NET = "0000:00:05.1"
EDU = "0000:00:04.0"
EDU_BEHIND_BRIDGE = "0000:02:02.0"
TESTDEV = "0000:02:01.0"
BRIDGE = "0000:01:00.0"
IGB = "0000:04:00.0"  # SR-IOV PF; its VFs come and go
SHARES = ("0000:00:02.0", "0000:00:03.0")  # never selected, never written
# the functions the suite may move, and so puts back after each test
MANAGED = (E1000E, E1000, EDU, EDU_BEHIND_BRIDGE, TESTDEV, BRIDGE) + (
    (IGB,) if os.path.isdir(f"{PCI}/{IGB}") else ()
)

SEL_E1000E = ["--vendor", "0x8086", "--class", "0x020000", "--device-id", "0x10d3"]
SEL_E1000 = ["--vendor", "0x8086", "--class", "0x020000", "--device-id", "0x100e"]
SEL_EDU = ["--vendor", "0x1234", "--class", "0x00ff00", "--device-id", "0x11e8"]
SEL_IGB = ["--vendor", "0x8086", "--class", "0x020000", "--device-id", "0x10c9"]
SEL_IGB_VF = ["--vendor", "0x8086", "--class", "0x020000", "--device-id", "0x10ca"]

# drivers that keep an IOMMU group viable (kernel: driver_managed_dma), see
# docs/kernel-facts.md
DMA_SAFE = {None, "vfio-pci", "pci-stub", "pcieport"}


# ---- reading sysfs ------------------------------------------------------------------
def attr(bdf: str, name: str) -> str:
    with open(f"{PCI}/{bdf}/{name}") as f:
        return f.read().rstrip("\n")


def driver(bdf: str) -> Optional[str]:
    link = f"{PCI}/{bdf}/driver"
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else None


def override(bdf: str) -> Optional[str]:
    value = attr(bdf, "driver_override")
    return None if value == "(null)" else value


def group(bdf: str) -> Optional[int]:
    link = f"{PCI}/{bdf}/iommu_group"
    return int(os.path.basename(os.readlink(link))) if os.path.islink(link) else None


def group_members(bdf: str) -> list[str]:
    g = group(bdf)
    return [bdf] if g is None else sorted(os.listdir(f"/sys/kernel/iommu_groups/{g}/devices"))


def group_viable(bdf: str) -> Optional[bool]:
    """status's ``group_viable`` (docs/design.md): every OTHER member of the group leaves DMA
    to its user, i.e. the group is usable once this function is on vfio-pci."""
    if group(bdf) is None:
        return None
    return all(driver(m) in DMA_SAFE for m in group_members(bdf) if m != bdf)


def vfio_dev(bdf: str) -> Optional[str]:
    g = group(bdf)
    path = f"/dev/vfio/{g}"
    return path if g is not None and os.path.exists(path) else None


def functions() -> list[str]:
    return sorted(os.listdir(PCI))


def vfs(pf: str) -> list[str]:
    """The PF's VFs, in VF order (its ``virtfnK`` links)."""
    links = [e for e in os.listdir(f"{PCI}/{pf}") if e.startswith("virtfn")]
    links.sort(key=lambda e: int(e[len("virtfn") :]))
    return [os.path.basename(os.readlink(f"{PCI}/{pf}/{e}")) for e in links]


def vfio_cdev(bdf: str) -> Optional[str]:
    """``/dev/vfio/devices/vfioK`` of a function on a vfio driver (kernels with the cdev)."""
    try:
        names = os.listdir(f"{PCI}/{bdf}/vfio-dev")
    except FileNotFoundError:
        return None
    path = f"/dev/vfio/devices/{names[0]}" if names else None
    return path if path and os.path.exists(path) else None


def kernel_config() -> dict[str, str]:
    """The running kernel's config (``/boot/config-REL``, which both guest images carry):
    ``{CONFIG_X: value}``, unset symbols ``n``; empty when there is none."""
    try:
        with open(f"/boot/config-{os.uname().release}") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return {}
    config = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if line.startswith("CONFIG_") and sep:
            config[key] = value
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            config[line[2 : -len(" is not set")]] = "n"
    return config


CDEV_CONFIG = ("CONFIG_IOMMUFD", "CONFIG_VFIO_DEVICE_CDEV")


def cdev_config_missing() -> list[str]:
    """The symbols of :data:`CDEV_CONFIG` the running kernel was built without."""
    config = kernel_config()
    return [k for k in CDEV_CONFIG if config.get(k, "n") not in ("y", "m")]


def iommu_on() -> bool:
    return bool(
        os.path.isdir("/sys/kernel/iommu_groups") and os.listdir("/sys/kernel/iommu_groups")
    )


def state(bdfs: Sequence[str] = MANAGED) -> dict[str, tuple[Optional[str], Optional[str]]]:
    """(driver, override) of each function: the binding state a test compares."""
    return {b: (driver(b), override(b)) for b in bdfs}


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


# ---- counting (and guarding) this process's writes ----------------------------------
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


@dataclass
class _Writes:
    active: list[list[str]] = field(default_factory=list)


_writes = _Writes()


def _forbidden(path: str) -> bool:
    return any(f"/{bdf}" in path for bdf in SHARES) or path.endswith("/drivers/virtio-pci/unbind")


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "open" or not args:
        return
    path, mode, flags = [*args, None, None][:3]
    if isinstance(path, int):
        return
    if isinstance(path, bytes):
        path = path.decode("utf-8", "replace")
    writing = (isinstance(flags, int) and flags & _WRITE_FLAGS) or (
        isinstance(mode, str) and any(c in mode for c in "wax+")
    )
    if not writing:
        return
    path = os.path.abspath(str(path))
    if not path.startswith("/sys/"):
        return
    if _forbidden(path):
        raise PermissionError(f"e2e guard: refusing to write {path} (virtio-9p share function)")
    for record in _writes.active:
        record.append(path)


_installed = False


def install_write_audit() -> None:
    """Count every write-open under /sys made by this process; refuse those to the shares."""
    global _installed  # noqa: PLW0603
    if not _installed:
        sys.addaudithook(_audit)
        _installed = True


@contextlib.contextmanager
def counting_writes() -> Iterator[list[str]]:
    """Paths opened for writing under /sys, in order, while the block runs."""
    record: list[str] = []
    _writes.active.append(record)
    try:
        yield record
    finally:
        _writes.active.remove(record)


# ---- the CLI ------------------------------------------------------------------------
@dataclass
class CliResult:
    argv: list[str]
    exit_code: int
    stdout: str
    stderr: str
    writes: list[str]
    exception: Optional[BaseException] = None

    def __str__(self) -> str:
        text = f"vfio-manager {' '.join(self.argv)} -> exit {self.exit_code}"
        text += f", {len(self.writes)} write(s)"
        text += "".join(f"\n  wrote {p}" for p in self.writes)
        text += f"\n--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"
        if self.exception is not None and not isinstance(self.exception, SystemExit):
            import traceback

            text += "--- exception ---\n" + "".join(
                traceback.format_exception(
                    type(self.exception), self.exception, self.exception.__traceback__
                )
            )
        return text


def run_cli(*argv: str) -> CliResult:
    """Run the real CLI in this process (click's CliRunner), counting its writes to /sys.

    Its writes are made from threads of this process (``VFIO_MANAGER_WRITER=thread``), so
    the audit hook sees them; the default writer process is proven by the process cases.
    """
    from click.testing import CliRunner

    from vfio_manager.cli.main import cli

    runner = CliRunner(env={"VFIO_MANAGER_WRITER": "thread"})
    with counting_writes() as writes:
        result = runner.invoke(cli, list(argv))
    try:
        stderr = result.stderr
    except ValueError:  # click < 8.2 mixes stderr into output
        stderr = ""
    return CliResult(
        list(argv), result.exit_code, result.stdout, stderr, list(writes), result.exception
    )


# ---- putting the guest back (harness writes, not the tool's) -------------------------
def _write(path: str, data: str) -> None:
    assert not _forbidden(path), path
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def restore(baseline: dict[str, Optional[str]]) -> list[str]:
    """Put each function back on its baseline driver with no override, and an SR-IOV PF back
    to no VFs with autoprobe on; returns what it fixed."""
    fixed = []
    if IGB in baseline:
        for name, want_value in (("sriov_numvfs", "0"), ("sriov_drivers_autoprobe", "1")):
            if attr(IGB, name) != want_value:
                fixed.append(f"{IGB}: {name} {attr(IGB, name)} -> {want_value}")
                _write(f"{PCI}/{IGB}/{name}", want_value)
    for bdf, want in baseline.items():
        assert bdf not in SHARES
        if override(bdf) is None and driver(bdf) == want:
            continue
        fixed.append(f"{bdf}: {driver(bdf)}/{override(bdf)} -> {want}")
        if override(bdf) is not None:
            _write(f"{PCI}/{bdf}/driver_override", "\n")
        current = driver(bdf)
        if current is not None and current != want:
            _write(f"{PCI}/{bdf}/driver/unbind", bdf)
        if want is not None and driver(bdf) is None:
            _write("/sys/bus/pci/drivers_probe", bdf)
    return fixed


def write(path: str, data: str) -> None:
    """A harness write (an admin's, or a replaced script's) to set up a state for a test."""
    _write(path, data)


def cli_process(
    state_dir: str, *argv: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m vfio_manager --state-dir STATE ARGV`` as a separate process, with its
    default writer (a child process)."""
    return subprocess.run(
        [sys.executable, "-m", "vfio_manager", "--state-dir", state_dir, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def move_to_vfio(bdf: str) -> None:
    """Harness-side bind to vfio-pci (the careful order), to set up a state for a test."""
    _write(f"{PCI}/{bdf}/driver_override", "vfio-pci")
    if driver(bdf) is not None:
        _write(f"{PCI}/{bdf}/driver/unbind", bdf)
    _write("/sys/bus/pci/drivers_probe", bdf)
    assert driver(bdf) == "vfio-pci", f"{bdf} did not bind to vfio-pci"


# ---- the VFIO API (ground truth for viability, and a user that holds a device) --------
def _vfio_io(nr: int) -> int:
    return (ord(";") << 8) | (100 + nr)


VFIO_GROUP_GET_STATUS = _vfio_io(3)
VFIO_GROUP_SET_CONTAINER = _vfio_io(4)
VFIO_SET_IOMMU = _vfio_io(2)
VFIO_GROUP_GET_DEVICE_FD = _vfio_io(6)
VFIO_TYPE1v2_IOMMU = 3


def kernel_group_viable(group_id: int) -> bool:
    """What the kernel says (VFIO_GROUP_GET_STATUS) about a group with a /dev/vfio node."""
    fd = os.open(f"/dev/vfio/{group_id}", os.O_RDWR)
    try:
        status = bytearray(struct.pack("II", 8, 0))
        fcntl.ioctl(fd, VFIO_GROUP_GET_STATUS, status, True)
        return bool(struct.unpack("II", status)[1] & 1)
    finally:
        os.close(fd)


# How a VM holds a function: container + group + device fd; every holder process starts so.
VFIO_HOLD = r"""
import fcntl, os, struct, sys, time
io = lambda nr: (ord(";") << 8) | (100 + nr)

def hold(bdf, group):
    container = os.open("/dev/vfio/vfio", os.O_RDWR)
    grp = os.open("/dev/vfio/" + group, os.O_RDWR)
    fcntl.ioctl(grp, io(4), bytearray(struct.pack("i", container)), True)
    fcntl.ioctl(container, io(2), 3)
    dev = fcntl.ioctl(grp, io(6), bytearray(bdf.encode() + b"\0"), True)
    return container, grp, dev
"""

# A separate process that holds a function the way a VM does, for an hour.
HOLDER = (
    VFIO_HOLD
    + r"""
bdf, group = sys.argv[1], sys.argv[2]
container, grp, dev = hold(bdf, group)
print("holding", bdf, "device fd", dev, flush=True)
time.sleep(3600)
"""
)


def start_holder(code: str, *args: str) -> subprocess.Popen[str]:
    """Run a holder (``code`` starts with :data:`VFIO_HOLD`) once it says it holds."""
    holder = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    line = holder.stdout.readline()
    assert line.startswith("holding"), f"holder could not open the device: {line!r}"
    return holder


def unbind_while_held(
    holder: subprocess.Popen[str], bdf: str, *selection: str, deadline: float = 60
) -> tuple[int, str]:
    """``vfio-manager unbind BDF`` as a separate process while ``holder`` holds the function:
    its exit status and what it printed (stdout, then stderr). A run still going after
    ``deadline`` missed the holder (the kernel's unbind waits for it): the holder is killed so
    that the run can end, and the test fails saying what it printed."""
    cli = subprocess.Popen(
        [sys.executable, "-m", "vfio_manager", "unbind", bdf, *selection],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = cli.communicate(timeout=deadline)
    except subprocess.TimeoutExpired:
        holder.kill()  # lets the kernel's remove() finish, so the CLI can end
        out, err = cli.communicate(timeout=60)
        raise AssertionError(
            f"unbind did not end within {deadline:g}s while {bdf} was held; once the holder "
            f"was killed it exited {cli.returncode} after printing:\n{out}\n{err}"
        ) from None
    return cli.returncode, out + err


def force_a_stuck_unbind(state_dir: str, holder: subprocess.Popen[str]) -> None:
    """``unbind-all --force`` of the e1000e while ``holder`` holds it, as a separate process:
    the run ends after its ``--timeout`` (exit 1, with its report) while the write stays in
    the kernel, the holder still holding."""
    stuck = cli_process(
        state_dir, "--timeout", "3", "unbind-all", "--force", *SEL_E1000E, timeout=300
    )
    assert holder.poll() is None, "the run ended only because the holder died"
    assert stuck.returncode == 1, stuck.stdout + stuck.stderr
    assert "did not return within" in stuck.stdout, stuck.stdout


def assert_the_node_lock_is_kept(state_dir: str) -> None:
    """A next run cannot take the node lock (the stuck write's child holds it, named), so it
    writes nothing behind the stuck unbind."""
    second = cli_process(state_dir, "--lock-timeout", "1", "bind-all", *SEL_E1000E, timeout=300)
    assert second.returncode == 1, second.stdout + second.stderr
    assert "vfio-manager writer" in second.stderr, second.stderr
    assert "Bind" not in second.stdout


# The iommufd way (what QEMU does with iommufd): the device cdev bound to /dev/iommu and
# attached to an IOAS. Numbers from Debian's linux-source-6.12, include/uapi/linux/vfio.h and
# iommufd.h; every one is _IO(';', nr) = (0x3b << 8) | nr, the argument struct's size in argsz:
#   VFIO_DEVICE_BIND_IOMMUFD      = _IO(VFIO_TYPE, VFIO_BASE + 18) = 0x3b76, struct
#       vfio_device_bind_iommufd {u32 argsz, flags; s32 iommufd; u32 out_devid}   (16 bytes)
#   VFIO_DEVICE_ATTACH_IOMMUFD_PT = _IO(VFIO_TYPE, VFIO_BASE + 19) = 0x3b77, struct
#       vfio_device_attach_iommufd_pt {u32 argsz, flags, pt_id}                   (12 bytes)
#   IOMMU_IOAS_ALLOC = _IO(IOMMUFD_TYPE, IOMMUFD_CMD_IOAS_ALLOC = 0x81) = 0x3b81, struct
#       iommu_ioas_alloc {u32 size, flags, out_ioas_id}                           (12 bytes)
# (VFIO_TYPE = IOMMUFD_TYPE = ';', VFIO_BASE = 100.)
VFIO_DEVICE_BIND_IOMMUFD = 0x3B76
VFIO_DEVICE_ATTACH_IOMMUFD_PT = 0x3B77
IOMMU_IOAS_ALLOC = 0x3B81

CDEV_HOLD = rf"""
import fcntl, os, struct, sys, time

def hold_cdev(cdev):
    dev = os.open(cdev, os.O_RDWR)
    iommufd = os.open("/dev/iommu", os.O_RDWR)
    bind = bytearray(struct.pack("IIiI", 16, 0, iommufd, 0))
    fcntl.ioctl(dev, {VFIO_DEVICE_BIND_IOMMUFD:#x}, bind, True)
    devid = struct.unpack("IIiI", bind)[3]
    alloc = bytearray(struct.pack("III", 12, 0, 0))
    fcntl.ioctl(iommufd, {IOMMU_IOAS_ALLOC:#x}, alloc, True)
    ioas = struct.unpack("III", alloc)[2]
    attach = bytearray(struct.pack("III", 12, 0, ioas))
    fcntl.ioctl(dev, {VFIO_DEVICE_ATTACH_IOMMUFD_PT:#x}, attach, True)
    return dev, iommufd, devid, ioas
"""

# A separate process that holds a function through its cdev, as QEMU with iommufd, for an hour.
CDEV_HOLDER = (
    CDEV_HOLD
    + r"""
dev, iommufd, devid, ioas = hold_cdev(sys.argv[1])
print("holding", sys.argv[1], "devid", devid, "ioas", ioas, flush=True)
time.sleep(3600)
"""
)


# ---- vfio modules ---------------------------------------------------------------------
VFIO_MODULES = ("vfio_pci", "vfio_iommu_type1")


def vfio_loaded() -> bool:
    return os.path.isdir("/sys/bus/pci/drivers/vfio-pci")


def load_vfio() -> None:
    import subprocess

    subprocess.run(["modprobe", "-a", *VFIO_MODULES], check=True)
    assert vfio_loaded(), "vfio-pci did not register"


def modprobe(*argv: str) -> None:
    """The guest's modprobe (``-r`` to remove); fails the test if it fails."""
    import subprocess

    subprocess.run(["modprobe", *argv], check=True)


def unload_vfio() -> None:
    """Remove vfio-pci, the type1 backend and their now unused dependencies (vfio itself)."""
    import subprocess

    subprocess.run(["modprobe", "-r", *VFIO_MODULES], check=True)
    assert not vfio_loaded()
