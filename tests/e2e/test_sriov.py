"""VF provisioning by the tool on the igb PF (04:00.0): ``--vfs`` creates VFs with autoprobe
off and binds them to vfio-pci, the PF staying on igb; a VF held as a VM holds it refuses a
numvfs change and its PF's restore; ``unbind-all`` returns the VFs and puts numvfs and
autoprobe back; a second run writes nothing. The daemon recreates the VFs when igb is
rebound (its remove() takes the VFs away, as a PF reset does).

The commands run as separate processes with their default writer (a child process), except
the second runs, made in-process so the audit hook counts their writes. What the guest showed
(groups, autoprobe, timings) is printed and written to the boot's out folder as
sriov-provisioning.json (docs/kernel-facts.md K24).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import guest
import pytest
from conftest import Baseline
from guest import IGB, PCI, SEL_IGB

pytestmark = pytest.mark.sriov

COUNT = 2
BOUND = 120.0  # seconds; generous for TCG


@pytest.fixture
def facts(out_dir: Optional[str]) -> Iterator[dict[str, Any]]:
    seen: dict[str, Any] = {"kernel": os.uname().release}
    yield seen
    print(json.dumps(seen, indent=1))
    if out_dir:
        path = os.path.join(out_dir, "sriov-provisioning.json")
        previous: dict[str, Any] = {}
        if os.path.exists(path):
            with open(path) as f:
                previous = json.load(f)
        with open(path, "w") as f:
            json.dump({**previous, **seen}, f, indent=1)


def _timed(state: str, *argv: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = guest.cli_process(state, "--log-format", "json", *argv)
    return done, round(time.monotonic() - started, 2)


def _doc(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.stdout.strip(), done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def _outcomes(doc: dict[str, Any]) -> dict[str, str]:
    return {f["bdf"]: f["outcome"] for f in doc["functions"]}


def _no_vfs_left() -> None:
    """Harness writes: the PF back to no VFs with autoprobe on, whatever the test left."""
    if guest.attr(IGB, "sriov_numvfs") != "0":
        guest.write(f"{PCI}/{IGB}/sriov_numvfs", "0")
    guest.write(f"{PCI}/{IGB}/sriov_drivers_autoprobe", "1")


def test_vfs_provisioned_held_and_returned(
    baseline: Baseline, tmp_path: Path, facts: dict[str, Any]
) -> None:
    state = str(tmp_path / "state")
    assert guest.attr(IGB, "sriov_numvfs") == "0"
    try:
        done, facts["bind_s"] = _timed(state, "bind-all", *SEL_IGB, "--vfs", str(COUNT), "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        doc = _doc(done)
        vfs = guest.vfs(IGB)
        assert len(vfs) == COUNT
        assert list(_outcomes(doc)) == [IGB, *vfs]
        assert set(_outcomes(doc).values()) == {"changed"}
        assert doc["writes"] == 2 + 2 * COUNT  # autoprobe, numvfs; override, probe per VF
        assert guest.driver(IGB) == "igb"
        assert guest.attr(IGB, "sriov_drivers_autoprobe") == "0"
        assert guest.attr(IGB, "sriov_numvfs") == str(COUNT)
        facts["vfs"] = {
            vf: {
                "driver": guest.driver(vf),
                "override": guest.override(vf),
                "iommu_group": guest.group(vf),
                "group_members": guest.group_members(vf),
                "dev_vfio": guest.vfio_dev(vf),
            }
            for vf in vfs
        }
        for vf in vfs:
            assert guest.driver(vf) == "vfio-pci"
            assert guest.group_members(vf) == [vf]
            assert guest.vfio_dev(vf) is not None
        with open(os.path.join(state, f"sriov-{IGB}.json")) as f:
            origin = json.load(f)
        assert (origin["original_numvfs"], origin["original_autoprobe"]) == (0, 1)

        again = guest.run_cli("--state-dir", state, "bind-all", *SEL_IGB, "--vfs", str(COUNT))
        assert again.exit_code == 0, again
        assert again.writes == [], again

        status = guest.run_cli("--state-dir", state, "status", *SEL_IGB, "--vfs", "2", "--json")
        devices = {d["bdf"]: d for d in json.loads(status.stdout)["devices"]}
        assert devices[IGB]["vfs"] == vfs
        assert devices[IGB]["sriov_numvfs"] == COUNT
        assert {devices[vf]["physfn"] for vf in vfs} == {IGB}

        held = vfs[0]
        holder = guest.start_holder(guest.HOLDER, held, str(guest.group(held)))
        try:
            done, facts["refused_change_s"] = _timed(
                state, "bind-all", *SEL_IGB, "--vfs", str(COUNT + 1), "--json"
            )
            assert done.returncode == 1, done.stdout + done.stderr
            (pf,) = [f for f in _doc(done)["functions"] if f["bdf"] == IGB]
            assert pf["outcome"] == "refused"
            assert str(holder.pid) in pf["reason"], pf
            assert _doc(done)["writes"] == 0
            assert guest.attr(IGB, "sriov_numvfs") == str(COUNT)
            assert guest.driver(held) == "vfio-pci"
            facts["refused_change_reason"] = pf["reason"]

            done, facts["unbind_while_held_s"] = _timed(state, "unbind-all", *SEL_IGB, "--json")
            assert done.returncode == 1, done.stdout + done.stderr
            outcomes = _outcomes(_doc(done))
            assert outcomes[held] == "refused"
            assert outcomes[IGB] == "refused"
            assert outcomes[vfs[1]] == "changed"
            assert guest.driver(vfs[1]) is None  # found driverless (autoprobe 0): left so
            assert guest.attr(IGB, "sriov_numvfs") == str(COUNT)
        finally:
            holder.kill()
            holder.wait()

        done, facts["unbind_s"] = _timed(state, "unbind-all", *SEL_IGB, "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        assert _outcomes(_doc(done)) == {held: "changed", vfs[1]: "converged", IGB: "changed"}
        assert guest.vfs(IGB) == []
        assert guest.attr(IGB, "sriov_numvfs") == "0"
        assert guest.attr(IGB, "sriov_drivers_autoprobe") == "1"
        assert guest.driver(IGB) == "igb"
        assert not os.path.exists(os.path.join(state, f"sriov-{IGB}.json"))

        again = guest.run_cli("--state-dir", state, "unbind-all", *SEL_IGB)
        assert again.exit_code == 0, again
        assert again.writes == [], again
    finally:
        _no_vfs_left()


def _wait_vfs_on_vfio(since: float) -> float:
    """Seconds from ``since`` until COUNT VFs of the PF are on vfio-pci."""
    guest.wait_for(
        lambda: (
            len(guest.vfs(IGB)) == COUNT
            and all(guest.driver(vf) == "vfio-pci" for vf in guest.vfs(IGB))
        ),
        timeout=BOUND,
        what=f"{COUNT} VFs of {IGB} on vfio-pci",
    )
    return round(time.monotonic() - since, 2)


def test_daemon_recreates_the_vfs_after_the_pf_driver_lets_go(
    baseline: Baseline, tmp_path: Path, facts: dict[str, Any]
) -> None:
    """igb's remove() disables SR-IOV (the VFs go with it), as a PF reset or a reboot does;
    the daemon, told by the uevents (resync an hour away), creates and binds them again."""
    log_path = tmp_path / "daemon.log"
    argv = [
        sys.executable, "-m", "vfio_manager", "--state-dir", str(tmp_path / "state"),
        "--log-format", "json", "daemon", *SEL_IGB, "--vfs", str(COUNT),
        "--resync-interval", "3600",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "VFIO_MANAGER_WRITER"}
    with open(log_path, "w") as log:
        daemon = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
    try:
        facts["daemon_first_s"] = _wait_vfs_on_vfio(time.monotonic())
        first = guest.vfs(IGB)
        guest.write("/sys/bus/pci/drivers/igb/unbind", IGB)
        facts["igb_unbind_left_vfs"] = guest.vfs(IGB)
        facts["numvfs_after_igb_unbind"] = guest.attr(IGB, "sriov_numvfs")
        assert guest.vfs(IGB) == []
        rebound = time.monotonic()
        guest.write("/sys/bus/pci/drivers/igb/bind", IGB)
        facts["autoprobe_after_rebind"] = guest.attr(IGB, "sriov_drivers_autoprobe")
        facts["daemon_recreate_s"] = _wait_vfs_on_vfio(rebound)
        assert guest.vfs(IGB) == first
        assert guest.driver(IGB) == "igb"
        assert daemon.poll() is None
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=BOUND)
        finally:
            if daemon.poll() is None:
                daemon.kill()
            print(log_path.read_text()[-4000:])
            _no_vfs_left()
            if guest.driver(IGB) is None:
                guest.write("/sys/bus/pci/drivers_probe", IGB)
    assert daemon.returncode == 0
