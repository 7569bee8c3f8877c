"""How the fake attribute files behave under pyfakefs (the mechanics the rules rely on)."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from tests.harness import FakeKernel
from tests.harness.sysfsfile import KernelFile
from tests.harness_tests._io import add_simple, dev, read, write

NIC = "0000:03:00.0"


@pytest.fixture
def attr(fs: FakeFilesystem) -> tuple[KernelFile, list[bytes]]:
    """A bare read/write attribute that records what its store received."""
    received: list[bytes] = []
    value = [b"(null)\n"]

    def store(data: bytes) -> None:
        if data == b"bad\n":
            raise OSError(errno.EINVAL, "Invalid argument")
        received.append(data)
        value[0] = data.split(b"\n")[0] + b"\n"

    fs.create_dir("/node/d")
    kf = KernelFile("attr", fs, show=lambda: value[0], store=store)
    fs.add_object("/node/d", kf)
    return kf, received


def test_one_truncating_write_reaches_store_once(attr: tuple[KernelFile, list[bytes]]) -> None:
    _, received = attr
    fd = os.open("/node/d/attr", os.O_WRONLY | os.O_TRUNC)
    assert os.write(fd, b"vfio-pci\n") == 9
    os.close(fd)
    assert received == [b"vfio-pci\n"]
    with open("/node/d/attr") as handle:
        assert handle.read() == "vfio-pci\n"


def test_zero_byte_write_and_open_without_write_change_nothing(
    attr: tuple[KernelFile, list[bytes]],
) -> None:
    _, received = attr
    fd = os.open("/node/d/attr", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"")
    os.close(fd)
    fd = os.open("/node/d/attr", os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    assert received == []
    with open("/node/d/attr") as handle:
        assert handle.read() == "(null)\n"  # O_TRUNC does not empty a sysfs attribute


def test_each_write_on_one_descriptor_is_its_own_kernel_write(
    attr: tuple[KernelFile, list[bytes]],
) -> None:
    _, received = attr
    fd = os.open("/node/d/attr", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"a\n")
    os.write(fd, b"b\n")
    os.close(fd)
    assert received == [b"a\n", b"b\n"]


def test_failed_write_raises_errno_and_keeps_shown_value(
    attr: tuple[KernelFile, list[bytes]],
) -> None:
    fd = os.open("/node/d/attr", os.O_WRONLY | os.O_TRUNC)
    with pytest.raises(OSError, match="Invalid argument") as info:
        os.write(fd, b"bad\n")
    os.close(fd)
    assert info.value.errno == errno.EINVAL
    with open("/node/d/attr") as handle:
        assert handle.read() == "(null)\n"


def test_buffered_text_write_reaches_store_at_close(attr: tuple[KernelFile, list[bytes]]) -> None:
    _, received = attr
    with open("/node/d/attr", "w") as handle:
        handle.write("x\n")
    assert received == [b"x\n"]


def test_read_only_attribute_refuses_writers_with_eacces(kernel: FakeKernel) -> None:
    add_simple(kernel)
    with pytest.raises(PermissionError):
        write(kernel, dev(NIC, "vendor"), "0x1234\n")
    assert read(kernel, dev(NIC, "vendor")) == "0x8086\n"
    assert kernel.writes == []  # not a write the kernel saw


def test_write_only_files_read_empty_and_modes_are_sysfs_modes(kernel: FakeKernel) -> None:
    add_simple(kernel)
    assert read(kernel, "bus/pci/drivers_probe") == ""
    modes = {
        "bus/pci/drivers_probe": 0o200,
        dev(NIC, "driver_override"): 0o644,
        dev(NIC, "vendor"): 0o444,
        "bus/pci/drivers/e1000e/unbind": 0o200,
    }
    for rel, mode in modes.items():
        write_ok = rel != dev(NIC, "vendor")
        if write_ok and "unbind" not in rel and "probe" not in rel:
            write(kernel, rel, "x\n")  # pyfakefs' os.open chmods; the fake keeps sysfs modes
        st = os.stat(f"{kernel.sys_root}/{rel}")
        assert stat.S_IMODE(st.st_mode) == mode, rel
        assert stat.S_ISREG(st.st_mode)


def test_paths_through_the_bus_link_and_the_real_path_are_one_file(kernel: FakeKernel) -> None:
    add_simple(kernel)
    real = os.path.realpath(f"{kernel.sys_root}/bus/pci/devices/{NIC}")
    assert real == f"{kernel.sys_root}/devices/pci0000:03/{NIC}"
    fd = os.open(f"{real}/driver_override", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"vfio-pci\n")
    os.close(fd)
    assert read(kernel, dev(NIC, "driver_override")) == "vfio-pci\n"
    # the write log names the canonical path whichever one was opened
    assert kernel.writes[-1].path == dev(NIC, "driver_override")
