"""A write stuck in the kernel, as separate processes: the run ends, the lock stays held; a
writer child killed in its write (an OOM kill) fails the function, never counts as written.

The fast suite's fake kernel lives in one process's memory; this test runs the real CLI as
a subprocess with its default writer (a forked child that inherits the node lock) against a
small sysfs tree on disk, where ``drivers/vfio-pci/unbind`` is a FIFO: opening it for
writing blocks until someone reads, as an unbind blocks while a VM holds the device.
Nothing here touches the real /sys.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BDF = "0000:01:00.0"


def _tree(root: Path) -> dict[str, str]:
    sys_root, dev, host, proc, state = (root / n for n in ("sys", "dev", "host", "proc", "state"))
    device = sys_root / "devices/pci0000:00" / BDF
    device.mkdir(parents=True)
    for name, value in {
        "vendor": "0x1eff",
        "device": "0x1220",
        "class": "0x120000",
        "subsystem_vendor": "0x1eff",
        "subsystem_device": "0x1220",
        "driver_override": "vfio-pci",
        "modalias": "pci:v00001EFFd00001220sv00001EFFsd00001220bc12sc00i00",
        "numa_node": "0",
    }.items():
        (device / name).write_text(value + "\n")
    (sys_root / "bus/pci/devices").mkdir(parents=True)
    (sys_root / "bus/pci/devices" / BDF).symlink_to(f"../../../devices/pci0000:00/{BDF}")
    driver = sys_root / "bus/pci/drivers/vfio-pci"
    driver.mkdir(parents=True)
    os.mkfifo(driver / "unbind")
    (driver / "bind").write_text("")
    (sys_root / "module/vfio_pci/drivers").mkdir(parents=True)
    (driver / "module").symlink_to("../../../../module/vfio_pci")
    (device / "driver").symlink_to("../../../bus/pci/drivers/vfio-pci")
    (sys_root / "bus/pci/drivers_probe").write_text("")
    group = sys_root / "kernel/iommu_groups/5/devices"
    group.mkdir(parents=True)
    (group / BDF).symlink_to(f"../../../../devices/pci0000:00/{BDF}")
    (device / "iommu_group").symlink_to("../../../kernel/iommu_groups/5")
    (dev / "vfio").mkdir(parents=True)
    for directory in (host, proc):
        directory.mkdir()
    return {
        "--sysfs-root": str(sys_root),
        "--dev-root": str(dev),
        "--host-root": str(host),
        "--proc-root": str(proc),
        "--state-dir": str(state),
    }


def _run(
    roots: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VFIO_MANAGER_")}
    argv = [sys.executable, "-m", "vfio_manager", *(x for kv in roots.items() for x in kv)]
    return subprocess.run(
        [*argv, "--log-format", "json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_stuck_write_ends_the_run_but_keeps_the_node_locked(tmp_path: Path) -> None:
    roots = _tree(tmp_path)
    fifo = Path(roots["--sysfs-root"]) / "bus/pci/drivers/vfio-pci/unbind"
    try:
        stuck = _run(roots, "--timeout", "1", "unbind-all")
        assert stuck.returncode == 1, stuck.stdout + stuck.stderr
        assert "did not return within" in stuck.stdout, stuck.stdout

        second = _run(roots, "--lock-timeout", "0", "unbind-all")
        assert second.returncode == 1
        assert "vfio-manager writer" in second.stderr, second.stderr
        assert "unbind" in second.stderr

        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the device is let go
        try:
            third = _run(roots, "--lock-timeout", "20", "--timeout", "1", "unbind-all")
            assert "holds" not in third.stderr, third.stderr
            # the stuck write reached the "kernel" (the third run's own unbind may follow it:
            # a plain directory does not unbind anything)
            assert os.read(reader, 64).startswith(BDF.encode())
        finally:
            os.close(reader)
    finally:  # no writer child of a failed run outlives the test
        _release_writers(fifo)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry))
    return found


def _in_fifo_open(pid: int) -> bool:
    """Whether a thread of ``pid`` waits in a FIFO's open (the child writes from threads)."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            if (task / "wchan").read_text() == "wait_for_partner":
                return True
        except OSError:
            continue
    return False


def _release_writers(fifo: Path) -> None:
    """Let any writer child still blocked on ``fifo`` finish, so none outlives the test."""
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_writing_to(fifo)):
            time.sleep(0.02)
    finally:
        os.close(reader)


def _writing_to(fifo: Path) -> list[int]:
    """Processes whose command line names the tree ``fifo`` is in (the CLI's writer children)."""
    tree = str(fifo.parents[4]).encode()
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and tree in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/wchan").exists(), reason="needs /proc/PID/wchan")
def test_a_writer_child_killed_in_its_write_fails_the_function(tmp_path: Path) -> None:
    """An OOM kill of the child that holds the write: the run never counts it as done."""
    roots = _tree(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("VFIO_MANAGER_")}
    argv = [sys.executable, "-m", "vfio_manager", *(x for kv in roots.items() for x in kv)]
    run = subprocess.Popen(
        [*argv, "--log-format", "json", "--timeout", "10", "unbind-all", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        blocked: list[int] = []
        while not blocked:  # the child's open of vfio-pci/unbind waits for a reader
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "the writer child never reached the unbind"
            blocked = [c for c in _children(run.pid) if _in_fifo_open(c)]
            time.sleep(0.02)
        os.kill(blocked[0], signal.SIGKILL)
        stdout, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
        _release_writers(Path(roots["--sysfs-root"]) / "bus/pci/drivers/vfio-pci/unbind")
    assert run.returncode == 1, stdout + stderr
    (function,) = json.loads(stdout)["functions"]
    assert function["outcome"] == "failed", function  # never "changed"
    assert function["step"] == "unbind"
    assert "the writer process died before its write" in function["reason"]
    assert function["restored_to"] == "vfio-pci (override vfio-pci)"
