"""The write pipeline on the real kernel, as separate processes: kept records, held devices.

A process holding the group, the container and the device's own fd (guest.HOLDER) plays the
VM. The CLI runs as a subprocess with its default writer (a child process that inherits the
node lock), so what a process can and cannot do (exit while a write is stuck, keep the lock)
is what is tested.
"""

from pathlib import Path
from typing import Optional

import guest
from conftest import Baseline
from guest import E1000E, SEL_E1000E
from test_in_use import _start_holder

from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import Direction
from vfio_manager.kernel.inventory import read_topology
from vfio_manager.kernel.sysfs import Sysfs
from vfio_manager.safety.journal import Journal


def _pending(state: str) -> list[Optional[str]]:
    return [e.bdf for e in Journal(state).pending()]


def test_a_kept_record_of_a_held_function_is_refused_not_unbound(
    baseline: Baseline, tmp_path: Path
) -> None:
    state = str(tmp_path / "state")
    # a bind killed right after its probe landed: on vfio-pci, its record not settled
    found = read_topology(Sysfs()).functions[PciAddress.parse(E1000E)]
    Journal(state).record_start(found, Direction.TO_VFIO)
    guest.move_to_vfio(E1000E)
    holder = _start_holder(E1000E)
    try:
        r = guest.cli_process(state, "--timeout", "5", "unbind-all", *SEL_E1000E, timeout=300)
        assert holder.poll() is None, "the run ended only because the holder died"
        assert r.returncode == 1, r.stdout + r.stderr
        assert guest.driver(E1000E) == "vfio-pci", "a held function was unbound"
        assert f"PID {holder.pid}" in r.stdout, r.stdout
        assert "journal record is kept" in r.stdout
        assert _pending(state) == [E1000E]
    finally:
        holder.kill()
        holder.wait()
    r = guest.cli_process(state, "unbind-all", *SEL_E1000E)
    assert r.returncode == 0, r.stdout + r.stderr
    assert guest.driver(E1000E) == "e1000e"
    assert _pending(state) == []


def test_a_stuck_unbind_ends_the_run_and_keeps_the_node_locked(
    baseline: Baseline, tmp_path: Path
) -> None:
    state = str(tmp_path / "state")
    guest.move_to_vfio(E1000E)
    holder = _start_holder(E1000E)
    try:
        guest.force_a_stuck_unbind(state, holder)
        guest.assert_the_node_lock_is_kept(state)
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: the unbind returns, the writer exits, the kernel drops the lock
    third = guest.cli_process(state, "--lock-timeout", "30", "unbind-all", *SEL_E1000E)
    assert third.returncode == 0, third.stdout + third.stderr
    assert guest.driver(E1000E) == "e1000e"
    assert _pending(state) == []
