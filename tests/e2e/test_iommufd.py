"""The tool on the iommufd kernel (tools/e2e/run --kernel iommufd): the VFIO device cdev.

A VM using iommufd opens /dev/vfio/devices/vfioK and /dev/iommu, never /dev/vfio/N
(kernel-facts K25): status must show the cdev, the node wait must accept it, and a process
holding it must be seen and refused like a group holder. The CLI runs as a separate process
with a deadline wherever a missed holder would leave it blocked in the kernel's unbind.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import guest
import pytest
from conftest import Baseline
from guest import E1000E, PCI, SEL_E1000E

from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.inventory import read_topology
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.safety.holders import Holder, find_holders

pytestmark = pytest.mark.iommufd

DEADLINE = 60


def _status(*argv: str) -> dict[str, Any]:
    r = guest.run_cli(*argv, "status", "--json", *SEL_E1000E)
    assert r.exit_code == 0, r
    assert r.writes == [], r
    devices: list[dict[str, Any]] = json.loads(r.stdout)["devices"]
    (device,) = devices
    return device


def _fd_links(pid: int) -> list[str]:
    base = f"/proc/{pid}/fd"
    return [os.readlink(f"{base}/{fd}") for fd in os.listdir(base)]


def test_status_shows_the_cdev_of_a_function_on_vfio(baseline: Baseline) -> None:
    assert _status()["vfio_cdev"] is None
    r = guest.run_cli("bind", E1000E, *SEL_E1000E)
    assert r.exit_code == 0, r
    cdev = guest.vfio_cdev(E1000E)
    assert cdev is not None
    assert cdev.startswith("/dev/vfio/devices/vfio")
    device = _status()
    assert device["vfio_cdev"] == cdev
    assert device["vfio_node"] == guest.vfio_dev(E1000E)
    table = guest.run_cli("status", *SEL_E1000E)
    assert table.exit_code == 0, table
    assert any(ln.startswith(E1000E) and cdev in ln for ln in table.stdout.splitlines()), table


def test_the_node_wait_accepts_the_cdev_where_there_is_no_group_node(
    baseline: Baseline, tmp_path: Path
) -> None:
    """A /dev without the group nodes (--dev-root: the real cdevs, container and /dev/iommu,
    no /dev/vfio/N) beside this kernel's group API: the real cdev, made by the real bind, is
    what the wait sees, and with neither node it runs out (test_cdev_only.py: a vfio built
    without the group API)."""
    dev = tmp_path / "dev"
    (dev / "vfio").mkdir(parents=True)
    for name in ("vfio/devices", "vfio/vfio", "iommu"):
        (dev / name).symlink_to(f"/dev/{name}")
    started = time.monotonic()
    r = guest.run_cli("--dev-root", str(dev), "--timeout", "10", "bind", E1000E, *SEL_E1000E)
    took = time.monotonic() - started
    assert r.exit_code == 0, r
    assert took < 10, f"the bind waited {took:.1f}s: the cdev did not end the wait"
    assert guest.driver(E1000E) == "vfio-pci"
    device = _status("--dev-root", str(dev))
    assert device["vfio_node"] is None
    assert (
        device["vfio_cdev"]
        == f"{dev}/vfio/devices/{os.path.basename(guest.vfio_cdev(E1000E) or '?')}"
    )
    again = guest.run_cli("--dev-root", str(dev), "--timeout", "10", "bind", E1000E, *SEL_E1000E)
    assert again.exit_code == 0, again
    assert again.writes == [], again
    # neither node under the dev root: the wait runs out, as before
    guest.restore(baseline)
    empty = tmp_path / "empty"
    (empty / "vfio").mkdir(parents=True)
    (empty / "vfio" / "vfio").symlink_to("/dev/vfio/vfio")
    state = str(tmp_path / "state")  # the late bind keeps its journal record: not the default
    late = guest.run_cli(
        "--state-dir",
        state,
        "--dev-root",
        str(empty),
        "--timeout",
        "1",
        "bind",
        E1000E,
        *SEL_E1000E,
    )
    assert late.exit_code == 1, late
    assert "did not appear within" in late.stdout, late


def test_a_cdev_holder_is_seen_and_unbind_refuses_it(baseline: Baseline) -> None:
    guest.move_to_vfio(E1000E)
    cdev = guest.vfio_cdev(E1000E)
    assert cdev is not None
    holder = guest.start_holder(guest.CDEV_HOLDER, cdev)
    try:
        links = _fd_links(holder.pid)
        assert cdev in links, links
        assert "/dev/iommu" in links, links
        assert not any(link.startswith("/dev/vfio/") and link != cdev for link in links), links
        sysfs = Sysfs()
        function = read_topology(sysfs).functions[PciAddress.parse(E1000E)]
        found = find_holders(sysfs, "/proc", [function])
        assert found[function.address] == [Holder(holder.pid, "python3", cdev, "fd")], found
        code, printed = guest.unbind_while_held(holder, E1000E, *SEL_E1000E, deadline=DEADLINE)
        assert code == 1, f"exit {code}\n{printed}"
        assert f"PID {holder.pid} (python3) has {cdev} open" in printed, printed
        assert guest.driver(E1000E) == "vfio-pci", "the held function must stay on vfio-pci"
        assert guest.vfio_cdev(E1000E) == cdev
    finally:
        holder.kill()
        holder.wait()
    r = guest.run_cli("unbind", E1000E, *SEL_E1000E)
    assert r.exit_code == 0, r
    assert guest.driver(E1000E) == "e1000e"


def test_a_forced_unbind_of_a_cdev_holder_stays_stuck_and_keeps_the_node_locked(
    baseline: Baseline, tmp_path: Path
) -> None:
    state = str(tmp_path / "state")
    guest.move_to_vfio(E1000E)
    group, cdev = guest.group(E1000E), guest.vfio_cdev(E1000E)
    assert cdev is not None
    holder = guest.start_holder(guest.CDEV_HOLDER, cdev)
    try:
        guest.force_a_stuck_unbind(state, holder)
        # the kernel's side of the stuck unbind (K25): the cdev is deleted at once, the group
        # node stays until the holder lets go, and the holder's fd names a deleted node
        assert guest.driver(E1000E) is None
        assert not os.path.exists(cdev)
        assert not os.path.exists(f"{PCI}/{E1000E}/vfio-dev")
        assert os.path.exists(f"/dev/vfio/{group}")
        assert f"{cdev} (deleted)" in _fd_links(holder.pid)
        guest.assert_the_node_lock_is_kept(state)
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: the unbind returns, the writer exits, the kernel drops the lock
    third = guest.cli_process(state, "--lock-timeout", "30", "unbind-all", *SEL_E1000E)
    assert third.returncode == 0, third.stdout + third.stderr
    assert guest.driver(E1000E) == "e1000e"
    assert not os.path.exists(f"/dev/vfio/{group}")
