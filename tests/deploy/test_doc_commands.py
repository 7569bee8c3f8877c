"""Every shell command of docs/kubernetes.md, docs/operator.md and docs/runbook.md is either
run here against a fake node, or covered elsewhere and said where, or classified as touching
only the API server. A new command line in those docs fails
:func:`test_every_command_line_is_accounted_for` until it is one of those.

Node commands run as the pod would run them: a ``vfio-manager`` command given to ``kubectl
exec`` in our pod gets the DaemonSet container's environment and volumes (its paths are
followed through the pod's mounts onto a fake node, tests/deploy/invocations.py); one given
to ``kubectl debug node/...`` gets the debug pod's host root at ``/host``; the few plain
shell commands read a fake /proc on disk.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner, Result
from pyfakefs.fake_filesystem import FakeFilesystem

from tests.deploy.invocations import Invocation, fake_node_argv, parse
from tests.deploy.manifests import INVOCATIONS, REPO
from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import fake_process
from vfio_manager.cli.main import cli

DOCS = ("kubernetes.md", "operator.md", "runbook.md")


def command_lines() -> list[tuple[str, str]]:
    """``(doc, line)`` for every command line of every ``sh`` block, comments dropped."""
    found = []
    for doc in DOCS:
        text = (REPO / "docs" / doc).read_text(encoding="utf-8")
        for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL):
            inside_heredoc = False
            for raw in block.replace("\\\n", " ").splitlines():
                line = re.sub(r"\s+", " ", raw.strip())
                if inside_heredoc:
                    inside_heredoc = line != "YAML"
                    continue
                if "<<'YAML'" in line:
                    inside_heredoc = True
                line = re.sub(r"\s+#.*$", "", line) if not line.startswith("#") else ""
                if line:
                    found.append((doc, line))
    return found


# -- how each line is accounted for ---------------------------------------------------------
OUR_POD_VFIO_MANAGER = re.compile(r"^kubectl -n vfio-manager exec \S+ -- (vfio-manager .*)$")
DEBUG_VFIO_MANAGER = re.compile(r"^kubectl debug node/\S+ .* -- (vfio-manager .*)$")
OUR_POD_SHELL = {
    "kubectl -n vfio-manager exec POD -- cat /proc/4242/cgroup",
    "kubectl -n vfio-manager exec POD -- sh -c 'grep -l \"^State:.*D\" /proc/[0-9]*/status'",
}
# run in the operator's container: tools/kubernetes/prestop-check, verbatim through podman
OPERATOR_POD = {
    'kubectl -n "$NS" exec -i "$POD" -- sh -s < '
    "deploy/kubernetes/rbln-operator/neutralise-prestop.sh",
    'kubectl -n "$NS" exec "$POD" -- cat /bin/vfio-manage.sh | grep -qx \'# vfio-manager '
    'cut-over: no-op\' && kubectl label node "$NODE" rebellions.ai/npu.deploy.vfio-manager=false'
    " --overwrite",
}
# touch no node: reads the node's kernel log through a debug pod (nothing to fake, writes
# nothing); kubevirt-config's offline table (its golden files: test_kubevirt_config.py); a
# VM's console
NO_NODE_WRITE = {
    "kubectl debug node/NODE -it --image=busybox -- chroot /host dmesg",
    "vfio-manager kubevirt-config --all-products --naming atom --format json",
    "virtctl console npu-vm-sample",
}
# API server only (kubectl against objects, helm, kustomize, shell variables); the ones that
# change the operator's objects run with --local in tests/deploy/test_operator.py, what
# `apply -k` creates is the rendered manifests tests/deploy validates
API_ONLY = re.compile(
    r"^(kubectl (-n \S+ )?(get|describe|logs|rollout|apply|delete|label|patch|wait) "
    r"|kustomize edit |mkdir -p my-cluster |[A-Z]+=)"
)


def classify(line: str) -> str:
    for kind, pattern in (("our-pod", OUR_POD_VFIO_MANAGER), ("debug-pod", DEBUG_VFIO_MANAGER)):
        if pattern.match(line):
            return kind
    for kind, lines in (
        ("our-pod-shell", OUR_POD_SHELL),
        ("operator-pod", OPERATOR_POD),
        ("no-node-write", NO_NODE_WRITE),
    ):
        if line in lines:
            return kind
    if API_ONLY.match(line) and " exec " not in line and " debug " not in line:
        return "api"
    return "unaccounted"


LINES = command_lines()


def test_every_command_line_is_accounted_for() -> None:
    assert LINES
    unaccounted = [(doc, line) for doc, line in LINES if classify(line) == "unaccounted"]
    assert not unaccounted


def test_the_operator_pod_commands_are_the_ones_prestop_check_runs() -> None:
    check = (REPO / "tools" / "kubernetes" / "prestop-check").read_text(encoding="utf-8")
    assert 'podman exec -i "$name" sh -s <"$NEUTRALISER"' in check
    assert 'podman exec "$name" cat /bin/vfio-manage.sh | grep -qx "$MARKER"' in check
    assert {line for _, line in LINES if classify(line) == "operator-pod"} == OPERATOR_POD


# -- vfio-manager commands on a fake node ---------------------------------------------------
QEMU_PID = 4242


def _our_container() -> Invocation:
    (daemon,) = [
        i for i in INVOCATIONS if i.source == "base" and i.container["name"] == "vfio-manager"
    ]
    return daemon


def _node(fs: FakeFilesystem, kernel: FakeKernel) -> list[str]:
    """Two NPUs on vfio-pci; a VM (qemu-kvm, PID 4242) holds the first one's group."""
    bdfs = npu_node(kernel, count=2, driver="vfio-pci")
    group = kernel.group_of(bdfs[0])
    fake_process(fs, kernel, QEMU_PID, "qemu-kvm", fds=(f"/dev/vfio/{group}",))
    return bdfs


def _run(argv: list[str], env: dict[str, str]) -> Result:
    return CliRunner().invoke(cli, argv, env=env, catch_exceptions=False)


def _in_our_pod(command: str, kernel: FakeKernel) -> Result:
    """``command`` (a doc's ``vfio-manager ...``) as ``kubectl exec`` runs it in our pod."""
    words = shlex.split(command)
    base = _our_container()
    container = {**base.container, "command": words[:1], "args": words[1:]}
    invocation = Invocation(base.source, base.workload, base.pod, container, base.init)
    env = {k: v for k, v in base.env_on("node-a").items() if k != "NODE_NAME"}
    argv = fake_node_argv(invocation, parse(invocation.argv, env), kernel.host_root)
    return _run(argv, env)


def _substitute(line: str, bdfs: list[str]) -> str:
    return line.replace("BDF", bdfs[0])


# what each command must do on that node (exit code; text it must print)
OUR_POD_EXPECTED: dict[str, Callable[[Result], Any]] = {
    "vfio-manager status": lambda r: r.exit_code == 0,
    "vfio-manager status --check": lambda r: r.exit_code == 0,
    "vfio-manager check": lambda r: r.exit_code == 0,
    "vfio-manager kubevirt-config": lambda r: r.exit_code == 0 and "1EFF:1220" in r.stdout,
    # the held function's holder: its host PID and command, below the table
    "vfio-manager status --holders": lambda r: (
        r.exit_code == 0 and f"PID {QEMU_PID} (qemu-kvm) has /dev/vfio/" in r.stdout
    ),
}


def test_every_vfio_manager_command_in_our_pod_is_expected_here() -> None:
    commands = {match.group(1) for _, line in LINES if (match := OUR_POD_VFIO_MANAGER.match(line))}
    assert commands == set(OUR_POD_EXPECTED)


@pytest.mark.parametrize("command", sorted(OUR_POD_EXPECTED))
def test_our_pod_commands_on_a_fake_node(
    fs: FakeFilesystem, kernel: FakeKernel, command: str
) -> None:
    bdfs = _node(fs, kernel)
    kernel.clear_writes()
    result = _in_our_pod(_substitute(command, bdfs), kernel)
    assert OUR_POD_EXPECTED[command](result), (result.exit_code, result.stdout, result.stderr)
    assert kernel.writes == []  # each of them only reads (a dry run included)


def test_the_uninstall_debug_pod_returns_idle_npus_and_keeps_the_held_one(
    fs: FakeFilesystem, kernel: FakeKernel
) -> None:
    (line,) = [line for _, line in LINES if classify(line) == "debug-pod"]
    bdfs = _node(fs, kernel)
    words = shlex.split(DEBUG_VFIO_MANAGER.match(line).group(1))  # type: ignore[union-attr]
    # the debug pod: the host's / at /host, the host's PID namespace (its /proc)
    argv = [
        w.replace("/host", kernel.host_root, 1) if w.startswith("/host") else w for w in words[1:]
    ]
    result = _run(["--proc-root", kernel.proc_root, *argv], {})
    assert result.exit_code == 1, result.stdout + result.stderr  # the held one was refused
    assert kernel.driver_of(bdfs[0]) == "vfio-pci"  # the VM keeps its NPU
    assert kernel.driver_of(bdfs[1]) == "rebellions"  # the idle one went home


# -- plain shell commands in our pod, on a fake /proc ---------------------------------------
def test_the_holder_lookup_and_the_stuck_write_lookup_on_a_fake_proc(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / str(QEMU_PID)).mkdir(parents=True)
    pod_uid = "0f5c7e1a_3b2d_4c4e_9a61_2f7d3c1b9e00"
    cgroup = f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_uid}.slice\n"
    (proc / str(QEMU_PID) / "cgroup").write_text(cgroup, encoding="utf-8")
    (proc / str(QEMU_PID) / "status").write_text("Name:\tqemu-kvm\nState:\tS (sleeping)\n")
    (proc / "77").mkdir()
    (proc / "77" / "status").write_text("Name:\tvfio-manager\nState:\tD (disk sleep)\n")
    outputs = {}
    for line in sorted(OUR_POD_SHELL):
        assert line in {line for _, line in LINES}
        (inner,) = re.findall(r" -- (.*)$", line)
        words = shlex.split(inner.replace("/proc/", f"{proc}/"))
        result = subprocess.run(words, capture_output=True, text=True, timeout=30, check=True)
        outputs[words[0]] = result.stdout
    assert pod_uid in outputs["cat"]
    assert outputs["sh"].split() == [f"{proc}/77/status"]
