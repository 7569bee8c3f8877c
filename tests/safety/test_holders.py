"""In-use detection over a fake /proc and /sys (pyfakefs); one real-fs test for rdev matching."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from vfio_manager.errors import UsageError
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.model import PciFunction
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.safety import holders as holders_module
from vfio_manager.safety.holders import (
    Holder,
    Target,
    describe_holders,
    function_targets,
    scan_holders,
)

PROC = "/proc"
BDF = "0000:03:00.0"
REAL = f"/sys/devices/pci0000:00/0000:00:01.0/{BDF}"
SELF = 4242


def find_holders(
    proc_root: str, targets: Sequence[Target | str], *, self_pid: int | None = None
) -> list[Holder]:
    return list(scan_holders(proc_root, targets, self_pid=self_pid).holders)


def add_process(
    fs: FakeFilesystem,
    pid: int,
    comm: str,
    fds: dict[int, str] | None = None,
    maps: list[str] | None = None,
) -> None:
    base = f"{PROC}/{pid}"
    fs.create_file(f"{base}/comm", contents=comm + "\n")
    fs.create_dir(f"{base}/fd")
    for fd, target in (fds or {}).items():
        fs.create_symlink(f"{base}/fd/{fd}", target)
    fs.create_file(f"{base}/maps", contents="".join(line + "\n" for line in maps or []))


def maps_line(path: str) -> str:
    return f"7f0000000000-7f0000100000 rw-s 00000000 00:15 4711                       {path}"


@pytest.fixture
def npu_sysfs(fs: FakeFilesystem) -> Sysfs:
    """An NPU at 0000:03:00.0 with its rebellions node, a VFIO cdev, BARs, and a VF sibling."""
    fs.create_dir("/sys/bus/pci/devices")
    fs.create_symlink(
        f"/sys/bus/pci/devices/{BDF}", f"../../../devices/pci0000:00/0000:00:01.0/{BDF}"
    )
    for name in ("vendor", "resource", "resource0", "resource2", "resource2_wc", "config"):
        fs.create_file(f"{REAL}/{name}")
    fs.create_file(f"{REAL}/rebellions/rbln0/dev", contents="240:0\n")
    fs.create_file(
        f"{REAL}/rebellions/rbln0/uevent", contents="MAJOR=240\nMINOR=0\nDEVNAME=rbln0\n"
    )
    fs.create_file(f"{REAL}/vfio-dev/vfio0/dev", contents="511:0\n")
    fs.create_file(
        f"{REAL}/vfio-dev/vfio0/uevent", contents="MAJOR=511\nMINOR=0\nDEVNAME=vfio/devices/vfio0\n"
    )
    fs.create_file(f"{REAL}/power/control", contents="on\n")
    fs.create_file(f"{REAL}/power/dev", contents="garbage\n")  # not a class device
    # Links to other devices must not be followed: the VF's node is not ours.
    vf = "/sys/devices/pci0000:00/0000:00:01.0/0000:03:00.1"
    fs.create_file(f"{vf}/rebellions/rbln1/dev", contents="240:1\n")
    fs.create_symlink(f"{REAL}/virtfn0", vf)
    fs.create_symlink(f"{REAL}/driver", "/sys/bus/pci/drivers/rebellions")
    fs.create_file("/sys/class/vfio/9/dev", contents="510:9\n")
    return Sysfs("/sys", "/dev")


def test_device_nodes_come_from_sysfs(npu_sysfs: Sysfs) -> None:
    nodes = npu_sysfs.char_devs_of(PciAddress.parse(BDF))
    assert sorted(nodes) == [("rbln0", "240:0"), ("vfio/devices/vfio0", "511:0")]


def test_function_targets(npu_sysfs: Sysfs) -> None:
    targets = function_targets(npu_sysfs, PciAddress.parse(BDF), group=9)
    nodes = {t.path: t.rdev for t in targets if not t.mapped}
    assert nodes == {
        "/dev/vfio/9": os.makedev(510, 9),
        "/dev/rbln0": os.makedev(240, 0),
        "/dev/vfio/devices/vfio0": os.makedev(511, 0),
    }
    mapped = {t.path for t in targets if t.mapped}
    assert mapped == {
        f"/sys/bus/pci/devices/{BDF}/resource0",
        f"/sys/bus/pci/devices/{BDF}/resource2",
        f"/sys/bus/pci/devices/{BDF}/resource2_wc",
        f"{REAL}/resource0",
        f"{REAL}/resource2",
        f"{REAL}/resource2_wc",
    }


def test_holders_of_an_npu(fs: FakeFilesystem, npu_sysfs: Sysfs) -> None:
    add_process(fs, 100, "qemu-system-x86", {3: "/dev/vfio/9", 4: "socket:[123]", 5: "/dev/kvm"})
    add_process(fs, 200, "rbln-runtime", {0: "/dev/null", 7: "/dev/rbln0"})
    add_process(
        fs, 300, "bar-mapper", {}, [maps_line("/usr/lib/libc.so.6"), maps_line(f"{REAL}/resource0")]
    )
    add_process(fs, 301, "wc-mapper", {}, [maps_line(f"{REAL}/resource2_wc (deleted)")])
    add_process(fs, 400, "bash", {0: "/dev/pts/0", 1: "/dev/vfio/10", 2: "/dev/rbln1"})
    add_process(fs, SELF, "vfio-manager", {3: "/dev/vfio/9"}, [maps_line(f"{REAL}/resource0")])
    add_process(fs, 500, "iommufd-user", {9: "/dev/vfio/devices/vfio0"})
    fs.create_file(f"{PROC}/self/comm")  # not a PID: skipped
    fs.create_file(f"{PROC}/meminfo")

    targets = function_targets(npu_sysfs, PciAddress.parse(BDF), group=9)
    holders = find_holders(PROC, targets, self_pid=SELF)
    assert holders == [
        Holder(100, "qemu-system-x86", "/dev/vfio/9", "fd"),
        Holder(200, "rbln-runtime", "/dev/rbln0", "fd"),
        Holder(300, "bar-mapper", f"{REAL}/resource0", "mmap"),
        Holder(301, "wc-mapper", f"{REAL}/resource2_wc", "mmap"),
        Holder(500, "iommufd-user", "/dev/vfio/devices/vfio0", "fd"),
    ]
    text = describe_holders(holders)
    assert "PID 100 (qemu-system-x86) has /dev/vfio/9 open" in text
    assert f"PID 300 (bar-mapper) maps {REAL}/resource0" in text


def test_plain_strings_and_own_pid(fs: FakeFilesystem) -> None:
    add_process(fs, 10, "a", {3: "/dev/vfio/9"})
    add_process(fs, 11, "b", {}, [maps_line("/sys/devices/x/resource0")])
    add_process(fs, os.getpid(), "me", {3: "/dev/vfio/9"})
    holders = find_holders(PROC, ["/dev/vfio/9", "/sys/devices/x/resource0"])
    assert [(h.pid, h.via) for h in holders] == [(10, "fd"), (11, "mmap")]


def test_maps_are_read_only_for_mappable_targets(
    fs: FakeFilesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_process(fs, 10, "a", {3: "/dev/vfio/9"}, [maps_line("/dev/vfio/9")])
    opened: list[str] = []
    real_open = open

    def spy(path: Any, *args: Any, **kwargs: Any) -> Any:
        opened.append(str(path))
        return real_open(path, *args, **kwargs)

    # the scanner's own `open` only: patching builtins.open would outlive pyfakefs's teardown
    monkeypatch.setattr(holders_module, "open", spy, raising=False)
    holders = find_holders(PROC, [Target.node("/dev/vfio/9")], self_pid=1)
    assert [(h.pid, h.via) for h in holders] == [(10, "fd")]
    assert not [p for p in opened if p.endswith("/maps")]
    assert opened == [f"{PROC}/10/comm"], "comm is read only for a holder"


def test_no_targets_means_no_scan(fs: FakeFilesystem) -> None:
    assert scan_holders("/nonexistent", []).holders == ()


def failing(monkeypatch: pytest.MonkeyPatch, name: str, paths: dict[str, int]) -> None:
    """Make ``os.<name>`` fail with an errno for the given paths (processes racing the scan)."""
    original: Callable[..., Any] = getattr(os, name)

    def wrapper(path: Any, *args: Any, **kwargs: Any) -> Any:
        code = paths.get(str(path))
        if code is not None:
            raise OSError(code, os.strerror(code), str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(os, name, wrapper)


def test_vanishing_and_unreadable_processes(
    fs: FakeFilesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_process(fs, 10, "gone", {3: "/dev/vfio/9"})
    add_process(fs, 11, "private", {3: "/dev/vfio/9"})
    add_process(fs, 12, "racing", {3: "/dev/vfio/9", 4: "/dev/vfio/9"})
    add_process(fs, 13, "zombie", {}, [])
    add_process(fs, 14, "holder", {3: "/dev/vfio/9"}, [])
    fs.remove(f"{PROC}/14/comm")  # exits between the fd scan and the comm read
    fs.remove(f"{PROC}/13/maps")
    failing(monkeypatch, "listdir", {f"{PROC}/10/fd": errno.ENOENT, f"{PROC}/11/fd": errno.EACCES})
    failing(monkeypatch, "readlink", {f"{PROC}/12/fd/3": errno.ESRCH})
    scan = scan_holders(PROC, ["/dev/vfio/9", "/sys/x/resource0"], self_pid=1)
    assert [(h.pid, h.comm) for h in scan.holders] == [(12, "racing"), (14, "?")]
    assert scan.unreadable == (11,)
    assert not scan.complete
    assert scan.processes == 5


def test_a_process_whose_descriptors_cannot_be_read_makes_the_scan_incomplete(
    fs: FakeFilesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """holders:69: a descriptor link denied to us (EACCES) is a process not inspected."""
    add_process(fs, 20, "qemu", {3: "/dev/vfio/9"})
    failing(monkeypatch, "readlink", {f"{PROC}/20/fd/3": errno.EACCES})
    scan = scan_holders(PROC, ["/dev/vfio/9"], self_pid=1)
    assert scan.holders == ()
    assert scan.unreadable == (20,)
    assert not scan.complete


def test_unlistable_proc_is_an_empty_answer(fs: FakeFilesystem) -> None:
    scan = scan_holders("/no-proc", ["/dev/vfio/9"])
    assert scan.holders == ()
    assert scan.processes == 0


def test_a_node_under_another_name_is_matched_by_device_number(tmp_path: Path) -> None:
    """A process in another container sees the node under its own /dev: same MAJ:MIN.

    Uses the real /dev/null (read-only stat) as the node, on a tmp_path /proc.
    """
    null = os.stat("/dev/null")
    numbers = f"{os.major(null.st_rdev)}:{os.minor(null.st_rdev)}"
    fd_dir = tmp_path / "proc" / "77" / "fd"
    fd_dir.mkdir(parents=True)
    (fd_dir / "3").symlink_to("/dev/null")
    (fd_dir / "4").symlink_to(tmp_path / "regular")
    (tmp_path / "regular").write_text("")
    (tmp_path / "proc" / "77" / "comm").write_text("virt-launcher\n")
    holders = find_holders(
        str(tmp_path / "proc"), [Target.node("/dev/vfio/9", numbers)], self_pid=1
    )
    assert holders == [Holder(77, "virt-launcher", "/dev/vfio/9", "fd")]


def test_targets_under_container_roots(fs: FakeFilesystem) -> None:
    """With the host's /sys and /dev mounted elsewhere, targets carry both names."""
    real = f"/host/sys/devices/pci0000:00/{BDF}"
    fs.create_file(f"{real}/resource0")
    fs.create_symlink(f"/host/sys/bus/pci/devices/{BDF}", real)
    fs.create_file(f"{real}/rebellions/rbln0/dev", contents="240:0\n")
    sysfs = Sysfs("/host/sys", "/host/dev")
    paths = {t.path for t in function_targets(sysfs, PciAddress.parse(BDF), group=9)}
    assert paths == {
        "/dev/vfio/9",
        "/host/dev/vfio/9",
        "/dev/rbln0",
        "/host/dev/rbln0",
        f"/host/sys/bus/pci/devices/{BDF}/resource0",
        f"/sys/bus/pci/devices/{BDF}/resource0",
        f"{real}/resource0",
        f"/sys/devices/pci0000:00/{BDF}/resource0",
    }


def test_uevent_devname_cannot_escape_dev(fs: FakeFilesystem) -> None:
    fs.create_file(f"{REAL}/evil/x/dev", contents="1:2\n")
    fs.create_file(f"{REAL}/evil/x/uevent", contents="DEVNAME=../etc/shadow\n")
    fs.create_symlink(f"/sys/bus/pci/devices/{BDF}", REAL)
    sysfs = Sysfs("/sys", "/dev")
    assert sysfs.char_devs_of(PciAddress.parse(BDF)) == [("x", "1:2")]
    for bad in ("../etc/shadow", "/etc/shadow", "vfio//9", "", "a/./b"):
        with pytest.raises(UsageError):
            sysfs.dev_path(bad)
        with pytest.raises(UsageError):
            Sysfs.canonical_dev_path(bad)
    assert sysfs.resolve_dev_name("/etc/passwd") is None
    assert sysfs.resolve_dev_name("/dev/../etc/passwd") is None


def test_maps_prefilter_keeps_every_target(fs: FakeFilesystem) -> None:
    """maps are parsed only when they contain a target's tail, and short names still count:
    a mapping of /dev/vfio/9 (tail ``vfio/9``), not of /dev/vfio/19, nor of a library."""
    add_process(
        fs, 10, "node-mapper", {}, [maps_line("/usr/lib/libc.so.6"), maps_line("/dev/vfio/9")]
    )
    add_process(fs, 11, "other-group", {}, [maps_line("/dev/vfio/19")])
    add_process(fs, 12, "bar-mapper", {}, [maps_line("/sys/devices/x/resource0 (deleted)")])
    add_process(fs, 13, "libraries", {}, [maps_line("/usr/lib/libm.so.6")])
    targets = [Target.node("/dev/vfio/9"), Target.resource("/sys/devices/x/resource0")]
    holders = find_holders(PROC, targets, self_pid=1)
    assert [(h.pid, h.what, h.via) for h in holders] == [
        (10, "/dev/vfio/9", "mmap"),
        (12, "/sys/devices/x/resource0", "mmap"),
    ]


# -- a VFIO device fd held without its group fd (anon_inode:[vfio-device]) --------------------
OTHER = "0000:04:00.0"


def vfio_device_fd(fs: FakeFilesystem, pid: int, fd: int, syspath: str | None) -> None:
    """Process ``pid``'s fd ``fd`` is a VFIO device; its fdinfo names ``syspath`` (Linux
    6.18 and later) or, ``None``, nothing (older kernels)."""
    fs.create_symlink(f"{PROC}/{pid}/fd/{fd}", "anon_inode:[vfio-device]")
    named = f"vfio-device-syspath: {syspath}\n" if syspath else ""
    fs.create_file(
        f"{PROC}/{pid}/fdinfo/{fd}", contents=f"pos:\t0\nflags:\t02000002\nmnt_id:\t15\n{named}"
    )


def on_vfio(bdf: str) -> PciFunction:
    return PciFunction(PciAddress.parse(bdf), 0x1EFF, 0x1220, 0x120000, driver="vfio-pci",
                       iommu_group=9 if bdf == BDF else 10)  # fmt: skip


def holders_of(sysfs: Sysfs, *bdfs: str) -> dict[str, list[str]]:
    found = holders_module.find_holders(sysfs, PROC, [on_vfio(b) for b in bdfs])
    return {str(a): [h.describe() for h in hs] for a, hs in sorted(found.items())}


def test_a_device_fd_named_in_fdinfo_holds_that_function(
    fs: FakeFilesystem, npu_sysfs: Sysfs
) -> None:
    add_process(fs, 100, "dpdk-app", {})
    vfio_device_fd(fs, 100, 7, REAL)  # the group fd closed, the device fd kept
    add_process(fs, 200, "other-vm", {})
    vfio_device_fd(fs, 200, 5, f"/sys/devices/pci0000:00/0000:00:02.0/{OTHER}")
    assert holders_of(npu_sysfs, BDF) == {
        BDF: [f"PID 100 (dpdk-app) has the VFIO device of {BDF} open"]
    }


def test_a_device_fd_unnamed_holds_the_functions_open_by_a_user(
    fs: FakeFilesystem, npu_sysfs: Sysfs
) -> None:
    """Before Linux 6.18 fdinfo does not name the device: the fd is taken to hold every
    function on a vfio driver that a user has open (``enable`` above 0: vfio-pci enables the
    device when its fd is first opened); an unreadable ``enable`` counts as open."""
    other = f"/sys/devices/pci0000:00/0000:00:02.0/{OTHER}"
    fs.create_symlink(f"/sys/bus/pci/devices/{OTHER}", other)
    fs.create_file(f"{REAL}/enable", contents="1\n")
    fs.create_file(f"{other}/enable", contents="0\n")
    add_process(fs, 100, "dpdk-app", {})
    vfio_device_fd(fs, 100, 7, None)
    unnamed = "PID 100 (dpdk-app) has a VFIO device fd (its device unnamed before Linux 6.18) open"
    assert holders_of(npu_sysfs, BDF, OTHER) == {BDF: [unnamed]}
    fs.remove_object(f"{other}/enable")
    assert holders_of(npu_sysfs, BDF, OTHER) == {BDF: [unnamed], OTHER: [unnamed]}


def test_a_device_mapped_after_its_fds_closed_still_holds(
    fs: FakeFilesystem, npu_sysfs: Sysfs
) -> None:
    """A BAR mmapped through the device fd keeps the device open with no fd left."""
    fs.create_file(f"{REAL}/enable", contents="1\n")
    add_process(fs, 100, "dpdk-app", {}, [maps_line("anon_inode:[vfio-device]")])
    assert holders_of(npu_sysfs, BDF) == {
        BDF: ["PID 100 (dpdk-app) maps a VFIO device fd (its device unnamed before Linux 6.18)"]
    }


def test_a_device_fd_does_not_hold_a_function_on_its_native_driver(
    fs: FakeFilesystem, npu_sysfs: Sysfs
) -> None:
    add_process(fs, 100, "dpdk-app", {})
    vfio_device_fd(fs, 100, 7, None)
    native = replace(on_vfio(BDF), driver="rebellions")
    assert holders_module.find_holders(npu_sysfs, PROC, [native]) == {}
