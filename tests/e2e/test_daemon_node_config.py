"""The daemon's per-node configuration, live, on the real kernel, and the files the cluster
reads (NFD's local feature file, the RBLN operator's validation file), as processes.

The daemon selects the e1000e (03:00.0) and reads its node's file from a directory laid out
as kubelet mounts a ConfigMap (each key a link through ``..data``, swapped atomically). The
node's file then takes the e1000e out of the selection while a process holds it the way a VM
does: it stays on vfio-pci, reported held; once the holder is gone, the next resync (SIGHUP
here; the resync interval is an hour) returns it to e1000e. Back in the selection it is bound
again, and out of it with nothing holding it, returned at once. The files follow each step
and go with a clean stop.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Optional

import guest
from conftest import Baseline
from guest import E1000E
from test_daemon import running, wait_until

NFD = "feature.node.kubernetes.io/vfio-manager."
NODE = "e2e-node"


def configmap(directory: Path, files: dict[str, str], generation: int) -> None:
    """What kubelet does to a mounted ConfigMap: a new directory, ``..data`` swapped to it."""
    target = directory / f"..{generation}"
    target.mkdir()
    for name, text in files.items():
        (target / name).write_text(text)
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")
    (directory / "..data_tmp").symlink_to(target.name)
    os.replace(directory / "..data_tmp", directory / "..data")


def labels(path: Path) -> dict[str, str]:
    """The labels of an NFD local feature file (its directive first, then key=value lines)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return {}
    assert lines[0].startswith("# +expiry-time="), lines
    found = dict(line.split("=", 1) for line in lines[1:])
    return {key.removeprefix(NFD): value for key, value in found.items()}


def read(path: Path) -> Optional[str]:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def test_the_node_configuration_live_and_the_files_the_cluster_reads(
    baseline: Baseline, tmp_path: Path
) -> None:
    nodes, features, validations = tmp_path / "nodes", tmp_path / "nfd", tmp_path / "rbln"
    for directory in (nodes, features, validations):
        directory.mkdir()
    configmap(nodes, {"default": "", NODE: ""}, 1)
    nfd, ready = features / "vfio-manager", validations / "vfio-pci-ready"
    options = [
        "--node-config", str(nodes), "--node-name", NODE,
        "--nfd-features-file", str(nfd), "--validation-file", str(ready),
    ]  # fmt: skip
    with running(tmp_path, *options) as daemon:
        took, fields = daemon.ready()
        assert fields[1:] == ["STATUS=converged: 1 converged"], str(daemon)
        assert guest.driver(E1000E) == "vfio-pci"
        assert read(ready) == f"VFIO_PCI_BOUND_DEVICES={E1000E}\n"
        assert labels(nfd)["converged"] == "true"
        assert labels(nfd)["vfio.8086-10d3"] == "1"
        print(f"node config: start to READY=1 {took:.2f}s")

        group = guest.group(E1000E)
        holder = guest.start_holder(guest.HOLDER, E1000E, str(group))
        try:  # the node's file takes it out of the selection while a "VM" holds it
            configmap(nodes, {"default": "", NODE: "VFIO_MANAGER_NUMA_NODE=7\n"}, 2)
            took = wait_until(
                lambda: labels(nfd).get("state-held") == "1", "the daemon to report it held"
            )
            print(f"node config: left the selection, held: reported in {took:.2f}s")
            assert guest.driver(E1000E) == "vfio-pci", "a VM holds it: it stays"
            assert read(ready) is None, "not converged: no validation file"
            assert labels(nfd)["converged"] == "false"
            assert daemon.ready_counts() is None
        finally:
            holder.kill()
            holder.wait()
        daemon.process.send_signal(signal.SIGHUP)  # the resync after the VM is gone
        took = wait_until(lambda: guest.driver(E1000E) == "e1000e", "it to go back to the host")
        print(f"node config: released to e1000e {took:.2f}s after SIGHUP")
        wait_until(lambda: labels(nfd).get("converged") == "true", "the labels to follow")
        assert labels(nfd)["state-held"] == "0"
        assert "vfio.8086-10d3" not in labels(nfd)
        assert read(ready) is None, "converged with no function on vfio-pci: no file"

        configmap(nodes, {"default": "", NODE: ""}, 3)  # back in the selection: bound again
        took = wait_until(lambda: guest.driver(E1000E) == "vfio-pci", "the daemon to bind it")
        print(f"node config: selected again, on vfio-pci in {took:.2f}s")
        wait_until(lambda: read(ready) is not None, "the validation file")
        assert read(ready) == f"VFIO_PCI_BOUND_DEVICES={E1000E}\n"

        configmap(nodes, {"default": "", NODE: "VFIO_MANAGER_BDF=0000:00:04.0\n"}, 4)
        took = wait_until(lambda: guest.driver(E1000E) == "e1000e", "it to go back at once")
        print(f"node config: left the selection, idle: on e1000e in {took:.2f}s")
        wait_until(lambda: read(ready) is None, "the validation file to go")

        assert daemon.terminate() < 60
        assert daemon.process.returncode == 0, str(daemon)
    assert read(nfd) is None, "a clean stop removes the labels"
    assert os.listdir(validations) == []
