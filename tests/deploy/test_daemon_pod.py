"""The DaemonSet's container, run: `vfio-manager daemon` as a process with the manifest's
command, arguments and environment, on a fake node on disk, its paths followed through the
pod's volumes (hostPaths onto the node's tree, the ConfigMap projected as kubelet does),
and probed the way kubelet probes it (``httpGet`` of the probe paths on the probe port).

The one change: ``--listen 0.0.0.0:8080`` becomes ``127.0.0.1:0`` (tests listen on loopback
only; the log names the port). The node is a still picture (tests/daemon/ondisk.py): a
function on vfio-pci stays there, and the daemon must not try to move the others.

What it holds against the regressions of an init container and a convergence readiness:
a node with a function the kernel would refuse (an SR-IOV PF with VFs enabled) keeps the
pod running and ready, says why in the metrics and the NFD labels, and an NPU the node's
ConfigMap key excludes is never written.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.ondisk import Roots, materialize
from tests.deploy import configmap
from tests.deploy.invocations import Invocation, fake_node_argv, parse
from tests.deploy.manifests import INVOCATIONS, RENDERED, the
from tests.harness import FakeKernel
from tests.harness.topologies import npu_node

NODE = "node-a"


def _daemon_container(directory: str = "base") -> Invocation:
    (found,) = [
        i for i in INVOCATIONS if i.source == directory and i.container["name"] == "vfio-manager"
    ]
    return found


def _probe(port: int, path: str) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


class Pod:
    """The container's process; its JSON log read up to an event."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        base = {
            k: v for k, v in os.environ.items() if not k.startswith(("VFIO_MANAGER_", "NOTIFY_"))
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "vfio_manager", "--log-format", "json", *argv],
            env={**base, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list[dict[str, Any]] = []

    def event(self, name: str) -> dict[str, Any]:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            if line.startswith("{"):
                doc: dict[str, Any] = json.loads(line)
                self.log.append(doc)
                if doc.get("event") == name:
                    return doc
        raise AssertionError(f"the daemon exited before logging {name!r}: {self.log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.process.communicate(timeout=60)


@pytest.fixture
def node(tmp_path: Path) -> tuple[Roots, list[str]]:
    def build(kernel: FakeKernel) -> list[str]:
        bdfs = npu_node(kernel, count=1, driver="vfio-pci")
        pf, host = npu_node_more(kernel)
        return [*bdfs, pf, host]

    return materialize(tmp_path / "machine", build)


def npu_node_more(kernel: FakeKernel) -> tuple[str, str]:
    """Two more NPUs on their native driver: a PF with a VF enabled, and a plain one."""
    pf, host = "0000:05:00.0", "0000:06:00.0"
    group = max(kernel.group_of(b) or 0 for b in kernel.functions()) + 1
    for offset, bdf in enumerate((pf, host)):
        kernel.add_function(
            bdf, vendor=0x1EFF, device=0x1220, pci_class=0x120000, driver="rebellions",
            iommu_group=group + offset, sriov_totalvfs=4 if bdf == pf else None,
        )  # fmt: skip
    kernel.add_vfs(pf, 1)
    return pf, host


def _start(roots: Roots, tmp_path: Path, node_config: str) -> tuple[Pod, int, Invocation]:
    """The base's container on the fake node, this node's ConfigMap key ``node_config``;
    returns once the readiness probe answers 200 (kubelet's period, up to 60 s)."""
    container = _daemon_container()
    nodes = the(RENDERED["base"], "ConfigMap", "vfio-manager-nodes")["data"]
    projected = configmap.project({**nodes, NODE: node_config}, tmp_path / "nodes")
    env = container.env_on(NODE)
    parsed = parse(container.argv, env)
    argv = fake_node_argv(
        container, parsed, str(roots.host), {"vfio-manager-nodes": str(projected)}
    )
    argv += ["--listen", "127.0.0.1:0", "--resync-interval", "3600"]
    container.create_host_paths(str(roots.host))
    pod = Pod(argv, env)
    port = int(pod.event("listening")["address"].rsplit(":", 1)[1])
    readiness = container.container["readinessProbe"]["httpGet"]["path"]
    status, body = _probe(port, readiness)
    for _ in range(120):
        if status == 200:
            break
        time.sleep(0.5)
        status, body = _probe(port, readiness)
    if status != 200:
        pod.stop()
        raise AssertionError(f"never ready: {body}")  # a refused device must not do this
    liveness = container.container["livenessProbe"]["httpGet"]["path"]
    assert _probe(port, liveness)[0] == 200
    return pod, port, container


NFD_FILE = "etc/kubernetes/node-feature-discovery/features.d/vfio-manager"
VALIDATION_FILE = "run/rbln/validations/vfio-pci-ready"


def test_the_daemon_container_on_a_fake_node_stays_up_ready_and_honest(
    tmp_path: Path, node: tuple[Roots, list[str]]
) -> None:
    roots, (on_vfio, refused_pf, excluded) = node
    override = roots.host / "sys" / "bus" / "pci" / "devices" / excluded / "driver_override"
    before = override.read_bytes()
    pod, port, _ = _start(roots, tmp_path, f"VFIO_MANAGER_EXCLUDE={excluded}\n")
    try:
        assert pod.process.poll() is None  # a refused device does not stop the pod
        _, metrics = _probe(port, "/metrics")
        assert "vfio_manager_node_converged 0.0" in metrics
        assert _state_of(metrics, on_vfio) == "converged"
        assert _state_of(metrics, refused_pf) == "pending"  # the kernel would refuse it
        assert _state_of(metrics, excluded) == "excluded"  # the node's ConfigMap key
        # the node's truth on the host paths NFD and the operator read
        labels = (roots.host / NFD_FILE).read_text(encoding="utf-8")
        assert "feature.node.kubernetes.io/vfio-manager.converged=false" in labels
        assert "feature.node.kubernetes.io/vfio-manager.host-ready=true" in labels
        assert not (roots.host / VALIDATION_FILE).exists()  # not converged
        assert override.read_bytes() == before  # the admin's exclusion: never written
    finally:
        pod.stop()
    assert pod.process.returncode == 0
    assert not (roots.host / NFD_FILE).exists()  # removed on a clean stop


def test_a_converged_node_tells_nfd_and_the_operators_validator(tmp_path: Path) -> None:
    roots, bdfs = materialize(
        tmp_path / "machine", lambda k: npu_node(k, count=2, driver="vfio-pci")
    )
    pod, port, _ = _start(roots, tmp_path, "")
    try:
        _, metrics = _probe(port, "/metrics")
        assert "vfio_manager_node_converged 1.0" in metrics
        labels = (roots.host / NFD_FILE).read_text(encoding="utf-8")
        assert labels.startswith("# +expiry-time=")
        assert "feature.node.kubernetes.io/vfio-manager.converged=true" in labels
        validation = (roots.host / VALIDATION_FILE).read_text(encoding="utf-8")
        assert validation == f"VFIO_PCI_BOUND_DEVICES={','.join(sorted(bdfs))}\n"
    finally:
        pod.stop()
    assert pod.process.returncode == 0


def _state_of(metrics: str, bdf: str) -> str:
    """The state of ``bdf``'s one vfio_manager_function_state series at 1."""
    (line,) = [
        line for line in metrics.splitlines()
        if line.startswith("vfio_manager_function_state{") and f'bdf="{bdf}"' in line
        and line.endswith(" 1.0")
    ]  # fmt: skip
    states: list[str] = re.findall(r'state="([^"]+)"', line)
    (state,) = states
    return state
