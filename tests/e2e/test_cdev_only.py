"""The tool on a kernel whose vfio has no group API: the VFIO device cdev alone.

A kernel built with CONFIG_VFIO_GROUP off (and so without the container and
vfio_iommu_type1) gives a function on vfio-pci /dev/vfio/devices/vfioK and no /dev/vfio/N at
all (kernel-facts K25): the node wait must end on the cdev, the IOMMU backend is iommufd, and
a holder of the cdev must still be refused. The iommufd lane's kernel keeps the group API;
tools/e2e/build-kernel also builds its vfio modules without it. The fixture makes the guest
that kernel for one test: the module tree with those three modules in and vfio_iommu_type1
out (depmod run) and the config they were built with, each bind-mounted over the real one,
and the group-API vfio unloaded, so the tool's own modprobe loads the other. The CLI runs as
a separate process with its forked writer wherever it writes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import guest
import pytest
from conftest import Baseline
from guest import E1000E, SEL_E1000E

pytestmark = pytest.mark.iommufd

NOGROUP = Path("/usr/lib/vfio-e2e/nogroup")
VFIO_KOS = {  # built without VFIO_GROUP -> where the module tree keeps it
    "vfio.ko": "kernel/drivers/vfio/vfio.ko",
    "vfio-pci-core.ko": "kernel/drivers/vfio/pci/vfio-pci-core.ko",
    "vfio-pci.ko": "kernel/drivers/vfio/pci/vfio-pci.ko",
}
DEADLINE = 60


def _loaded() -> set[str]:
    with open("/proc/modules", encoding="ascii") as modules:
        return {line.split()[0] for line in modules}


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


@pytest.fixture
def cdev_only(baseline: Baseline, tmp_path: Path) -> Iterator[None]:
    """The guest as a kernel built without VFIO_GROUP, for one test; the group API after it."""
    if not NOGROUP.is_dir():
        pytest.fail(f"{NOGROUP} is missing: tools/e2e/build-kernel builds it for this lane")
    release = os.uname().release
    tree = tmp_path / "lib" / "modules" / release
    shutil.copytree(f"/usr/lib/modules/{release}", tree, symlinks=True)
    for name, place in VFIO_KOS.items():
        shutil.copyfile(NOGROUP / name, tree / place)
    (tree / "kernel/drivers/vfio/vfio_iommu_type1.ko").unlink()
    _run("depmod", "-b", str(tmp_path), release)
    _unload_vfio()
    mounts = [
        (str(tree), f"/usr/lib/modules/{release}"),
        (str(NOGROUP / "config"), f"/boot/config-{release}"),
    ]
    done: list[str] = []
    try:
        for source, target in mounts:
            _run("mount", "--bind", source, target)
            done.append(target)
        yield
    finally:
        guest.restore(baseline)  # off vfio-pci before its modules go
        _unload_vfio()
        for target in reversed(done):
            _run("umount", target)
        guest.load_vfio()


def _unload_vfio() -> None:
    """Every vfio module out, whichever build is loaded (vfio itself included)."""
    loaded = [
        m for m in ("vfio_pci", "vfio_iommu_type1", "vfio_pci_core", "vfio") if m in _loaded()
    ]
    if loaded:
        _run("modprobe", "-r", *loaded)
    assert not {"vfio", "vfio_pci"} & _loaded(), f"vfio is still loaded: {sorted(_loaded())}"


def test_a_function_binds_and_returns_by_its_cdev_alone(cdev_only: None, tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    r = guest.cli_process(state, "--timeout", "20", "bind", E1000E, *SEL_E1000E, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    (function,) = json.loads(r.stdout)["functions"]
    assert (function["outcome"], function["writes"]) == ("changed", 3), function
    # the tool loaded vfio-pci itself: the vfio without the group API, iommufd beside it
    loaded = _loaded()
    assert {"vfio_pci", "vfio", "iommufd"} <= loaded, sorted(loaded)
    assert "vfio_iommu_type1" not in loaded
    assert guest.driver(E1000E) == "vfio-pci"
    assert guest.vfio_dev(E1000E) is None, "a group node on a kernel without the group API"
    assert not os.path.exists("/dev/vfio/vfio")
    cdev = guest.vfio_cdev(E1000E)
    assert cdev is not None
    status = guest.run_cli("status", "--json", *SEL_E1000E)
    assert status.exit_code == 0, status
    (device,) = json.loads(status.stdout)["devices"]
    assert (device["vfio_node"], device["vfio_cdev"]) == (None, cdev)
    check = guest.run_cli("check")
    assert check.exit_code == 0, check
    assert "iommufd replaces the container" in check.stdout, check
    again = guest.run_cli("--state-dir", state, "bind", E1000E, *SEL_E1000E)
    assert again.exit_code == 0, again
    assert again.writes == [], again
    back = guest.cli_process(state, "unbind", E1000E, *SEL_E1000E)
    assert back.returncode == 0, back.stdout + back.stderr
    assert guest.driver(E1000E) == "e1000e"
    assert not os.path.exists(cdev)


def test_a_cdev_holder_is_refused_without_the_group_api(cdev_only: None) -> None:
    bound = guest.run_cli("bind", E1000E, *SEL_E1000E)
    assert bound.exit_code == 0, bound
    cdev = guest.vfio_cdev(E1000E)
    assert cdev is not None
    holder = guest.start_holder(guest.CDEV_HOLDER, cdev)
    try:
        code, printed = guest.unbind_while_held(holder, E1000E, *SEL_E1000E, deadline=DEADLINE)
        assert code == 1, f"exit {code}\n{printed}"
        assert f"PID {holder.pid} (python3) has {cdev} open" in printed, printed
        assert guest.driver(E1000E) == "vfio-pci", "the held function must stay on vfio-pci"
    finally:
        holder.kill()
        holder.wait()
