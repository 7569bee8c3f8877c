"""The conftest safety net: no real write under /sys, /dev or /proc, no real modprobe.

These tests use the real file system on purpose (no ``fs`` fixture). The paths are chosen so
that nothing could happen even if the hook failed: they do not exist, and sysfs/procfs cannot
create files; the hook raises before the system call anyway.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem

from tests.harness import audit

PROBE_SYS = "/sys/vfio-manager-audit-probe/does-not-exist"
PROBE_PROC = "/proc/vfio-manager-audit-probe"


def test_real_write_open_under_sys_is_stopped() -> None:
    with pytest.raises(audit.RealSystemWriteError):
        os.open(PROBE_SYS, os.O_WRONLY)
    with pytest.raises(audit.RealSystemWriteError):
        open(PROBE_PROC, "w")  # noqa: SIM115 - the open itself is what is tested
    with pytest.raises(audit.RealSystemWriteError):
        os.open("/dev/../sys/" + PROBE_SYS[5:], os.O_RDWR)  # normalised first
    assert len(audit.take_violations()) == 3  # recorded too (the fixture would fail the test)


def test_real_modprobe_is_stopped() -> None:
    with pytest.raises(audit.RealSystemWriteError):
        subprocess.run(["modprobe", "--version"], check=False, capture_output=True)
    with pytest.raises(audit.RealSystemWriteError):
        subprocess.run(["/usr/sbin/chroot", "/node", "modprobe", "x"], check=False)
    assert len(audit.take_violations()) == 2


def test_reads_and_harmless_devices_pass() -> None:
    with open("/proc/self/status") as handle:
        assert handle.readline()
    with open(os.devnull, "w") as handle:
        handle.write("x")
    fd = os.open("/dev/null", os.O_WRONLY)
    os.close(fd)
    assert audit.take_violations() == []


def test_fake_file_system_writes_are_not_audited(fs: FakeFilesystem) -> None:
    # pyfakefs raises no audit events: even a fake path spelled /sys/... is fine
    fs.create_file("/sys/fake-only/attr")
    fd = os.open("/sys/fake-only/attr", os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"1\n")
    os.close(fd)
    assert audit.take_violations() == []


def test_hook_is_inert_outside_the_guard() -> None:
    assert audit._State.installed
    depth = audit._State.active
    audit._State.active = 0
    try:
        # the audit event a real os.open(PROBE_SYS, O_WRONLY) would raise, without the open
        audit._hook("open", (PROBE_SYS, None, os.O_WRONLY))
    finally:
        audit._State.active = depth
    assert audit.take_violations() == []


@pytest.mark.e2e
def test_e2e_marked_tests_are_exempt() -> None:
    assert audit._State.active == 0
