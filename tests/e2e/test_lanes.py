"""IOMMU groups move side by side (lanes, `--parallel`) on the real kernel, as separate processes.

One selection, two IOMMU groups: the e1000 (00:05.0, native driver e1000) and the e1000e
(03:00.0, native driver e1000e), vendor 0x8086, class 0x020000. The edu (1234:11e8) cannot
join them: a selection has one vendor and one class. The e1000 shares its group with the
virtio-net 00:05.1 (no backend, used by nothing); the fixture takes it off virtio-pci for the
test, which makes the e1000's group viable (bind-all moves it, a process can open it), and
puts it back after.

The proof of side by side, with no time measured: a process that plays the VM (container,
group and device fd of the e1000) keeps the e1000's unbind in the kernel until the e1000e is
back on e1000e, and lets go only then. Side by side (the default), the e1000e's lane returns
it meanwhile, the holder lets go and the e1000's unbind completes: both back, exit 0. One
after another (`--parallel 1`), the e1000 comes first (address order) and waits alone until
its deadline; only then does the e1000e move: the same case ends with exit 1, the e1000
reported as not returned in time. The fake-kernel twin is tests/pipeline/test_side_by_side.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import guest
import pytest
from conftest import Baseline
from guest import E1000, E1000E, PCI, VIRTIO_NET
from test_in_use import _start_holder

from vfio_manager.safety.journal import Journal

SEL = [
    "--vendor",
    "0x8086",
    "--class",
    "0x020000",
    "--device-id",
    "0x100e",
    "--device-id",
    "0x10d3",
]
NATIVE = {E1000: "e1000", E1000E: "e1000e"}
HOST = {bdf: (driver, None) for bdf, driver in NATIVE.items()}
VFIO = dict.fromkeys(NATIVE, ("vfio-pci", "vfio-pci"))
WRITE_TIMEOUT = 30  # --timeout: the per-function deadline; the one bound on time here
RUN_LIMIT = 300  # a run that takes longer than this hangs (the kernel waits forever)

# A VM's hold on the e1000 (container, group, device fd; as guest.HOLDER), let go once the
# e1000's unbind is in the kernel (its driver link is gone: the driver core removes it before
# vfio-pci's remove() waits for us) AND the e1000e is back on its native driver. Polls
# sysfs (nothing notifies either), for at most LIMIT seconds.
HOLD_UNTIL_OTHER_RETURNS = (
    guest.VFIO_HOLD
    + r"""
bdf, group, other, native, limit = sys.argv[1:6]
container, grp, dev = hold(bdf, group)
print("holding", bdf, flush=True)

def driver(b):
    try:
        return os.path.basename(os.readlink("/sys/bus/pci/devices/%s/driver" % b))
    except OSError:
        return None

end = time.monotonic() + float(limit)
while not (driver(bdf) is None and driver(other) == native):
    if time.monotonic() > end:
        print("gave up: %s on %s, %s on %s" % (bdf, driver(bdf), other, driver(other)), flush=True)
        sys.exit(3)
    time.sleep(0.02)
# the device fd (what the unbind waits for) last, after the group and the container
os.close(grp)
os.close(container)
os.close(dev)
print("released: %s unbind in the kernel, %s on %s" % (bdf, other, native), flush=True)
"""
)


def _pending(state: str) -> list[Optional[str]]:
    return [e.bdf for e in Journal(state).pending()]


def _run(state: str, *argv: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``[GLOBAL OPTIONS] COMMAND [OPTIONS]`` with --json and the selection, as a separate
    process: (process, report)."""
    r = guest.cli_process(state, *argv, "--json", *SEL, timeout=RUN_LIMIT)
    try:
        report: dict[str, Any] = json.loads(r.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"{argv}: no JSON report\n{r.stdout}\n{r.stderr}") from None
    return r, report


def _by_bdf(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {f["bdf"]: f for f in report["functions"]}


def _outcomes(report: dict[str, Any]) -> dict[str, tuple[str, Optional[str]]]:
    return {b: (f["outcome"], f["driver"]) for b, f in _by_bdf(report).items()}


@pytest.fixture
def two_lanes(baseline: Baseline) -> Iterator[None]:
    """The e1000's group made viable (virtio-net off virtio-pci); put back after."""
    assert guest.group(E1000) != guest.group(E1000E), "the guest lost its two groups"
    assert guest.group_members(E1000) == [E1000, VIRTIO_NET]
    assert guest.driver(VIRTIO_NET) == "virtio-pci"
    try:
        guest.write(f"{PCI}/{VIRTIO_NET}/driver/unbind", VIRTIO_NET)
        assert guest.group_viable(E1000)
        assert guest.group_viable(E1000E)
        yield
    finally:
        # every holder is gone by now (the tests kill theirs): virtio-pci may bind again
        if guest.driver(VIRTIO_NET) is None:
            guest.write("/sys/bus/pci/drivers_probe", VIRTIO_NET)
        assert guest.driver(VIRTIO_NET) == "virtio-pci", "virtio-net did not go back"


def _both_to_vfio() -> None:
    for bdf in NATIVE:
        guest.move_to_vfio(bdf)
    assert guest.state(list(NATIVE)) == VFIO


def test_one_bind_all_moves_both_groups_and_unbind_all_returns_them(
    two_lanes: None, tmp_path: Path
) -> None:
    state = str(tmp_path / "state")
    bound, report = _run(state, "bind-all")
    assert bound.returncode == 0, bound.stdout + bound.stderr
    assert _outcomes(report) == {E1000: ("changed", "vfio-pci"), E1000E: ("changed", "vfio-pci")}
    # set-override, unbind, probe: counted per function, not across the lanes
    assert {b: f["writes"] for b, f in _by_bdf(report).items()} == {E1000: 3, E1000E: 3}
    assert report["writes"] == 6
    assert guest.state(list(NATIVE)) == VFIO
    # the run waits for both nodes before it exits: they are there, one per group
    nodes = {bdf: guest.vfio_dev(bdf) for bdf in NATIVE}
    assert nodes == {bdf: f"/dev/vfio/{guest.group(bdf)}" for bdf in NATIVE}, nodes
    assert all(stat.S_ISCHR(os.stat(str(node)).st_mode) for node in nodes.values())
    assert _pending(state) == []

    again, report = _run(state, "bind-all")
    assert again.returncode == 0, again.stdout + again.stderr
    assert report["writes"] == 0
    assert _outcomes(report) == {
        E1000: ("converged", "vfio-pci"),
        E1000E: ("converged", "vfio-pci"),
    }
    assert guest.state(list(NATIVE)) == VFIO

    back, report = _run(state, "unbind-all")
    assert back.returncode == 0, back.stdout + back.stderr
    assert _outcomes(report) == {E1000: ("changed", "e1000"), E1000E: ("changed", "e1000e")}
    assert report["writes"] == 6
    assert guest.state(list(NATIVE)) == HOST
    assert _pending(state) == []


def test_a_held_group_is_refused_and_the_other_group_still_returns(
    two_lanes: None, tmp_path: Path
) -> None:
    state = str(tmp_path / "state")
    _both_to_vfio()
    holder = _start_holder(E1000)
    try:
        r, report = _run(state, "--timeout", str(WRITE_TIMEOUT), "unbind-all")
        assert holder.poll() is None, "the run ended only because the holder died"
        assert r.returncode == 1, r.stdout + r.stderr
        held = _by_bdf(report)[E1000]
        assert (held["outcome"], held["writes"]) == ("refused", 0), held
        assert f"PID {holder.pid}" in held["reason"], held
        assert _by_bdf(report)[E1000E]["outcome"] == "changed"
        assert guest.state(list(NATIVE)) == {E1000: VFIO[E1000], E1000E: HOST[E1000E]}
        assert _pending(state) == []  # the refused one was never started
    finally:
        holder.kill()
        holder.wait()
    # the e1000 stays on vfio-pci: the harness puts it back (test_pipeline_processes shows
    # the next run returning a function once its holder is gone)


def _start_holder_until_other_returns() -> subprocess.Popen[str]:
    args = (E1000, str(guest.group(E1000)), E1000E, NATIVE[E1000E], str(RUN_LIMIT))
    return guest.start_holder(HOLD_UNTIL_OTHER_RETURNS, *args)


def _holder_let_go(holder: subprocess.Popen[str]) -> str:
    """The holder's last words, once it let go by itself (bounded by its own limit)."""
    out, _ = holder.communicate(timeout=RUN_LIMIT + 60)
    assert holder.returncode == 0, out
    assert out.startswith("released"), out
    return out


def test_a_stuck_unbind_does_not_hold_back_the_other_group(two_lanes: None, tmp_path: Path) -> None:
    """Side by side: the e1000's unbind can return only once the e1000e is back."""
    state = str(tmp_path / "state")
    _both_to_vfio()
    holder = _start_holder_until_other_returns()
    try:
        r, report = _run(state, "--timeout", str(WRITE_TIMEOUT), "unbind-all", "--force")
        _holder_let_go(holder)
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 0, r.stdout + r.stderr
    assert _outcomes(report) == {E1000: ("changed", "e1000"), E1000E: ("changed", "e1000e")}
    assert {b: f["writes"] for b, f in _by_bdf(report).items()} == {E1000: 3, E1000E: 3}
    assert guest.state(list(NATIVE)) == HOST
    assert _pending(state) == []


def test_one_after_another_the_same_case_misses_its_deadline(
    two_lanes: None, tmp_path: Path
) -> None:
    """--parallel 1: the e1000 (first) waits alone until --timeout, then the e1000e moves."""
    state = str(tmp_path / "state")
    _both_to_vfio()
    holder = _start_holder_until_other_returns()
    try:
        r, report = _run(
            state, "--timeout", str(WRITE_TIMEOUT), "--parallel", "1", "unbind-all", "--force"
        )
        _holder_let_go(holder)  # the e1000e returned after the e1000's deadline
    finally:
        holder.kill()
        holder.wait()
    assert r.returncode == 1, r.stdout + r.stderr
    stuck = _by_bdf(report)[E1000]
    assert stuck["outcome"] == "failed", stuck
    assert "did not return within" in stuck["reason"], stuck
    assert stuck["step"] == "unbind", stuck
    assert _outcomes(report)[E1000E] == ("changed", "e1000e")
    assert guest.driver(E1000E) == "e1000e"
    assert _pending(state) == [E1000]  # the stuck transition is kept for the next run

    # the late unbind returned once the holder let go: the next run finishes the e1000
    # (its --lock-timeout covers the writer child that may still end that unbind)
    r, report = _run(state, "--lock-timeout", "120", "unbind-all")
    assert r.returncode == 0, r.stdout + r.stderr
    assert _outcomes(report) == {E1000: ("changed", "e1000"), E1000E: ("converged", "e1000e")}
    assert guest.state(list(NATIVE)) == HOST
    assert _pending(state) == []
