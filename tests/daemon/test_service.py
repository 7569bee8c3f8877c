"""The daemon end to end in one process: service, loop, reconciler and the one write pipeline
against the fake kernel, with kernel-format uevents over a real socket, systemd on a real
datagram socket, the ready file, /readyz and the metrics. Only time is fake.
"""

from __future__ import annotations

import datetime
import errno
import http.client
import json
import os
import posixpath
import shutil
import threading
from pathlib import Path
from typing import Any, Optional

import pytest
from pyfakefs.fake_filesystem import FakeFilesystem
from pyfakefs.fake_filesystem_unittest import Pause

from tests.daemon import nfd
from tests.daemon.kernel_rig import DAEMON_REAL_STATE, WALL, KernelRig
from tests.harness import FakeKernel
from tests.harness.topologies import npu_node
from tests.support import fake_process, invoke, native_node
from vfio_manager.daemon import loop as loop_module
from vfio_manager.daemon.reconciler import OnExit, Reason, State
from vfio_manager.daemon.service import DaemonOptions
from vfio_manager.kernel.address import PciAddress
from vfio_manager.pipeline.selection import Selector
from vfio_manager.safety.intents import IntentStore
from vfio_manager.safety.lock import DaemonRunningError

NEW = "0000:09:00.0"
NFD = "feature.node.kubernetes.io/vfio-manager"

pytestmark = pytest.mark.parametrize("fs", DAEMON_REAL_STATE, indirect=True)


@pytest.fixture(autouse=True)
def _state_dir_first(real_state_dir: str) -> str:
    """The real temporary directory must exist before pyfakefs starts (autouse runs first)."""
    return real_state_dir


def excluding(*bdfs: str) -> Selector:
    return Selector(exclude=frozenset(PciAddress.parse(b) for b in bdfs))


def cli(kernel: FakeKernel, state_dir: str, *args: str) -> Any:
    """The CLI in-process, sharing the daemon's (real) state directory."""
    return invoke(kernel, "--state-dir", state_dir, *args)


def get(rig: KernelRig, path: str) -> tuple[int, Any]:
    server = rig.daemon.server
    assert server is not None
    host, port = server.address
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read().decode()
    finally:
        connection.close()
    return response.status, json.loads(body) if path != "/metrics" else body


def hot_add(kernel: FakeKernel, bdf: str = NEW, group: int = 40) -> None:
    """A function appears and its native driver binds it, as at a hot-plug."""
    kernel.add_function(
        bdf,
        vendor=0x1EFF,
        device=0x1220,
        pci_class=0x120000,
        subsystem_vendor=0x1EFF,
        subsystem_device=0x1220,
        iommu_group=group,
        driver="rebellions",
    )


def write(kernel: FakeKernel, rel: str, data: str) -> None:
    """What an admin's ``echo data > /sys/rel`` does."""
    fd = os.open(posixpath.join(kernel.sys_root, rel), os.O_WRONLY)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def writes_for(kernel: FakeKernel, bdf: str) -> list[Any]:
    return [w for w in kernel.writes if bdf in w.path or w.data.strip() == bdf]


def pending_records(rig: KernelRig) -> list[Optional[str]]:
    return [e.bdf for e in rig.node.journal().pending()]


# -- start ---------------------------------------------------------------------------------
def test_start_converges_through_the_pipeline_and_says_so_everywhere(
    kernel: FakeKernel, make_kernel_rig: Any
) -> None:
    first, second = npu_node(kernel, count=2)
    rig = make_kernel_rig(DaemonOptions(listen="127.0.0.1:0"))
    status, body = get(rig, "/readyz")
    assert status == 503
    assert body["reason"] == "the first reconcile has not finished"
    rig.start()
    assert kernel.driver_of(first) == kernel.driver_of(second) == "vfio-pci"
    assert rig.notifications() == [
        ["STATUS=starting: first reconcile under way"],
        ["READY=1", "STATUS=converged: 2 converged"],
    ]
    doc = rig.ready_doc()
    assert doc is not None
    assert doc["counts"]["converged"] == 2
    assert doc["since"] == "2024-05-01T12:00:00Z"
    status, body = get(rig, "/readyz")
    assert status == 200
    assert body["ready"] is True
    assert body["not_converged"] == []
    assert get(rig, "/healthz") == (200, {"alive": True})
    assert rig.metric("vfio_manager_functions", state="converged") == 2
    assert rig.metric("vfio_manager_transitions_total", direction="vfio", outcome="changed") == 2
    assert rig.metric("vfio_manager_host_ready") == 1
    assert rig.metric("vfio_manager_node_converged") == 1
    _, text = get(rig, "/metrics")
    assert 'vfio_manager_functions{state="converged"} 2.0' in text
    assert pending_records(rig) == [], "the journal is settled"
    assert rig.stop() == 0
    assert rig.notifications()[-1] == ["STOPPING=1", "STATUS=stopping (SIGTERM)"]
    assert rig.ready_doc() is None


def test_a_node_without_npus_is_ready(kernel: FakeKernel, make_kernel_rig: Any) -> None:
    npu_node(kernel, count=0, vfio_loaded=False)  # no NPU, and not even vfio: nothing to do
    rig = make_kernel_rig()
    rig.start()
    assert rig.notifications()[-1] == ["READY=1", "STATUS=converged: no selected function"]
    assert rig.ready_doc() is not None
    assert kernel.writes == []


def test_a_converged_node_is_not_written_and_idles_one_wakeup_per_resync(
    kernel: FakeKernel, make_kernel_rig: Any
) -> None:
    npu_node(kernel, count=2, driver="vfio-pci")
    rig = make_kernel_rig(DaemonOptions(resync_interval=60))
    rig.start()
    for _ in range(3):
        rig.step()
    assert kernel.writes == []
    assert rig.loop.waiter.timeouts == [60.0] * 3
    assert rig.loop.reconciles == 4


# -- uevents -------------------------------------------------------------------------------
def test_a_hot_added_function_is_bound_one_debounce_window_after_its_uevent(
    kernel: FakeKernel, make_kernel_rig: Any
) -> None:
    (npu,) = npu_node(kernel, count=1)
    rig = make_kernel_rig()
    rig.start()
    kernel.clear_writes()
    hot_add(kernel)
    added_at = rig.clock.now
    rig.step_until(lambda: kernel.driver_of(NEW) == "vfio-pci")
    assert rig.clock.now - added_at == pytest.approx(0.2), "bound when the window closed"
    assert not writes_for(kernel, npu), "only the named function's group was re-planned"
    assert rig.state(NEW) is State.CONVERGED
    rig.settle()  # its own bind events come back: re-planned, nothing written
    seen = [action for action, bdf in rig.uevents.sent if bdf == NEW]
    assert seen == ["add", "bind", "unbind", "bind"], "the kernel's sequence"
    assert len(writes_for(kernel, NEW)) == 3
    assert rig.ready_doc()["counts"]["converged"] == 2


def test_a_function_removed_during_its_transition_leaves_the_view_and_the_journal(
    kernel: FakeKernel, make_kernel_rig: Any
) -> None:
    npu_node(kernel, count=1)
    rig = make_kernel_rig()
    rig.start()
    hot_add(kernel)
    kernel.remove_function_on_write(f"bus/pci/devices/{NEW}/driver_override", NEW)
    rig.settle()
    assert not kernel.has_function(NEW)
    assert NEW not in rig.loop.view.functions
    assert ("remove", NEW) in rig.uevents.sent
    assert pending_records(rig) == [], "the record of the vanished function was dropped"
    assert rig.loop.view.converged
    assert rig.ready_doc() is not None


def test_drift_back_to_the_native_driver_is_repaired(
    kernel: FakeKernel, make_kernel_rig: Any
) -> None:
    (npu,) = npu_node(kernel, count=1)
    rig = make_kernel_rig(DaemonOptions(listen="127.0.0.1:0"))
    rig.start()
    write(kernel, f"bus/pci/devices/{npu}/driver_override", "\n")  # an admin, by hand
    write(kernel, "bus/pci/drivers/vfio-pci/unbind", npu)
    write(kernel, "bus/pci/drivers/rebellions/bind", npu)
    assert kernel.driver_of(npu) == "rebellions"
    rig.settle()
    assert kernel.driver_of(npu) == "vfio-pci"
    assert rig.loop.view.converged
    assert rig.metric("vfio_manager_transitions_total", direction="vfio", outcome="changed") == 2
    assert rig.metric("vfio_manager_uevents_total", action="bind") >= 2


# -- the admin -----------------------------------------------------------------------------
def test_an_admin_unbind_is_respected_until_bind_clears_it(
    kernel: FakeKernel, make_kernel_rig: Any, real_state_dir: str
) -> None:
    first, second = npu_node(kernel, count=2)
    rig = make_kernel_rig(DaemonOptions(listen="127.0.0.1:0"))
    rig.start()
    result = cli(kernel, real_state_dir, "unbind", first)
    assert result.exit_code == 0, result.stdout
    rig.settle()
    assert kernel.driver_of(first) == "rebellions", "not moved back"
    assert rig.state(first) is State.INTENT_HOST
    assert rig.loop.view.converged, "an intent is a settled state"
    status, body = get(rig, "/readyz")
    assert status == 200
    assert body["counts"]["intent-host"] == 1
    shown = cli(kernel, real_state_dir, "status")
    assert f"intent: {first} left on the host by intent by `" in shown.stdout
    devices = cli(kernel, real_state_dir, "status", "--json").json()["devices"]
    (record,) = [d for d in devices if d["intent"]]
    assert record["bdf"] == first
    assert record["intent"]["pid"] == os.getpid(), "who recorded it"
    kernel.clear_writes()
    rig.loop.request_resync()  # a full resync leaves it alone too
    rig.step()
    assert not writes_for(kernel, first)

    assert cli(kernel, real_state_dir, "bind", first).exit_code == 0
    assert rig.intents() == []
    rig.settle()
    assert rig.state(first) is State.CONVERGED
    assert kernel.driver_of(second) == "vfio-pci"
    assert rig.stop() == 0


def test_a_new_daemon_starts_from_the_intents_it_finds(
    kernel: FakeKernel, make_kernel_rig: Any, real_state_dir: str
) -> None:
    """No init step binds behind the admin's back: the first reconcile reads the intents."""
    first, second = npu_node(kernel, count=2)
    IntentStore(real_state_dir).add(first, command="vfio-manager unbind 0000:01:00.0")
    rig = make_kernel_rig()
    rig.start()
    assert kernel.driver_of(first) == "rebellions"
    assert not writes_for(kernel, first)
    assert rig.state(first) is State.INTENT_HOST
    assert kernel.driver_of(second) == "vfio-pci"


def test_an_unbind_without_a_daemon_records_no_intent(
    kernel: FakeKernel, real_state_dir: str
) -> None:
    (npu,) = npu_node(kernel, count=1, driver="vfio-pci")
    assert cli(kernel, real_state_dir, "unbind", npu).exit_code == 0
    assert IntentStore(real_state_dir).read() == {}


def test_an_unbind_that_is_refused_drops_its_intent(
    fs: FakeFilesystem, kernel: FakeKernel, make_kernel_rig: Any, real_state_dir: str
) -> None:
    (npu,) = npu_node(kernel, count=1, driver="vfio-pci")
    rig = make_kernel_rig()
    rig.start()
    fake_process(fs, kernel, 4242, "qemu-system-x86", fds=(f"/dev/vfio/{kernel.group_of(npu)}",))
    result = cli(kernel, real_state_dir, "unbind", npu)
    assert result.exit_code == 1
    assert kernel.driver_of(npu) == "vfio-pci"
    assert rig.intents() == []
    assert rig.stop() == 0


def test_a_second_daemon_is_refused_naming_the_first(
    kernel: FakeKernel, make_kernel_rig: Any
) -> None:
    npu_node(kernel, count=0)
    make_kernel_rig()
    with pytest.raises(DaemonRunningError, match=f"PID {os.getpid()}"):
        make_kernel_rig(lock_timeout=0.2)


def test_an_excluded_function_is_never_touched_and_counts_as_settled(
    kernel: FakeKernel, make_kernel_rig: Any
) -> None:
    first, second = npu_node(kernel, count=2)
    rig = make_kernel_rig(DaemonOptions(excluding(first)))
    rig.start()
    assert kernel.driver_of(first) == "rebellions"
    assert kernel.driver_of(second) == "vfio-pci"
    assert rig.state(first) is State.EXCLUDED
    assert not writes_for(kernel, first)
    assert rig.ready_doc()["counts"] == {
        "converged": 1,
        "pending": 0,
        "held": 0,
        "excluded": 1,
        "failed": 0,
        "intent-host": 0,
    }


def test_a_held_function_is_never_touched_until_let_go(
    fs: FakeFilesystem, kernel: FakeKernel, make_kernel_rig: Any
) -> None:
    first, _second = npu_node(kernel, count=2)
    native_node(fs, kernel, first)
    fake_process(fs, kernel, 777, "rbln-smi", fds=("/dev/rbln0",))
    rig = make_kernel_rig(DaemonOptions(listen="127.0.0.1:0"))
    rig.start()
    assert kernel.driver_of(first) == "rebellions"
    assert not writes_for(kernel, first)
    assert rig.state(first) is State.HELD
    assert "PID 777 (rbln-smi)" in (rig.loop.view.functions[first].reason or "")
    assert rig.ready_doc() is None
    status, body = get(rig, "/readyz")
    assert status == 200, "the agent works and the host can do VFIO"
    assert body["converged"] is False
    (why,) = body["not_converged"]
    assert why["bdf"] == first
    assert why["state"] == "held"
    assert why["reason"] == "in-use"
    assert "777" not in json.dumps(body), "no other workload's process on the port"
    assert rig.metric("vfio_manager_transitions_total", direction="vfio", outcome="refused") == 1
    assert (
        rig.metric(
            "vfio_manager_function_state",
            bdf=first,
            product="RBLN-CA22",
            state="held",
            reason="in-use",
        )
        == 1
    )
    rig.loop.request_resync()
    rig.step()
    assert rig.metric("vfio_manager_transitions_total", direction="vfio", outcome="refused") == 1, (
        "refused again at the resync: not a new event"
    )
    shutil.rmtree(posixpath.join(kernel.proc_root, "777"))  # the program exits
    rig.loop.request_resync()
    rig.step()
    assert kernel.driver_of(first) == "vfio-pci"
    assert get(rig, "/readyz")[0] == 200
    assert rig.ready_doc() is not None
    labels = {"bdf": first, "product": "RBLN-CA22"}
    assert (
        rig.metric("vfio_manager_function_state", **labels, state="held", reason="in-use") is None
    )
    assert (
        rig.metric("vfio_manager_function_state", **labels, state="converged", reason="none") == 1
    )


def test_a_journal_record_kept_for_an_excluded_function_is_exported(
    kernel: FakeKernel, make_kernel_rig: Any, real_state_dir: str
) -> None:
    first, _second = npu_node(kernel, count=2)
    rig = make_kernel_rig(DaemonOptions(excluding(first), listen="127.0.0.1:0"))
    with Pause(kernel.fs):
        os.makedirs(real_state_dir, mode=0o700, exist_ok=True)
        with open(os.path.join(real_state_dir, f"journal-{first}.json"), "w") as record:
            json.dump(JOURNAL_RECORD | {"bdf": first}, record)
    rig.start()
    assert pending_records(rig) == [first], "kept: the function is excluded"
    assert rig.metric("vfio_manager_journal_records") == 1
    assert rig.metric("vfio_manager_journal_oldest_record_seconds") == WALL - 1714521600


JOURNAL_RECORD = {
    "version": 1,
    "record": "transition",
    "direction": "vfio",
    "vendor_device": None,
    "original_driver": None,
    "original_override": None,
    "steps_done": ["set-override"],
    "started_at": "2024-05-01T00:00:00+00:00",
    "updated_at": "2024-05-01T00:00:00+00:00",
    "pid": 999999,
    "origin_created": False,
}


def test_a_group_blocked_by_a_peer_is_pending(kernel: FakeKernel, make_kernel_rig: Any) -> None:
    first, second = npu_node(kernel, count=2, shared_group=True)
    rig = make_kernel_rig(DaemonOptions(excluding(first)))
    rig.start()
    assert rig.state(second) is State.PENDING
    reason = rig.loop.view.functions[second].reason
    assert reason is not None
    assert "is not viable" in reason
    assert kernel.writes == []


def test_the_nfd_and_validation_files_follow_the_node(
    kernel: FakeKernel, make_kernel_rig: Any, real_state_dir: str
) -> None:
    first, second = npu_node(kernel, count=2)
    base = os.path.dirname(real_state_dir)
    features, validation = f"{base}/features.d/vfio-manager", f"{base}/vfio-pci-ready"
    with Pause(kernel.fs):
        os.makedirs(f"{base}/features.d")

    def read() -> tuple[dict[str, str], Optional[str]]:
        with Pause(kernel.fs):
            when = datetime.datetime.fromtimestamp(WALL, datetime.timezone.utc)
            found = nfd.labels(Path(base) / "features.d", when)
            ready = Path(validation).read_text() if os.path.exists(validation) else None
        return found, ready

    options = DaemonOptions(nfd_features_file=features, validation_file=validation)
    rig = make_kernel_rig(options)
    rig.start()
    labels, ready = read()
    assert ready == f"VFIO_PCI_BOUND_DEVICES={first},{second}\n"
    assert labels[f"{NFD}.converged"] == "true"
    assert labels[f"{NFD}.vfio.RBLN-CA22"] == "2"

    assert cli(kernel, real_state_dir, "unbind", first).exit_code == 0  # the admin's intent
    rig.settle()
    labels, ready = read()
    assert ready == f"VFIO_PCI_BOUND_DEVICES={second}\n", "converged: the one on vfio-pci"
    assert (labels[f"{NFD}.state-intent-host"], labels[f"{NFD}.vfio.RBLN-CA22"]) == ("1", "1")

    kernel.fail_probe("vfio-pci", second, errno.EINVAL)  # it goes wrong for the other one
    write(kernel, f"bus/pci/devices/{second}/driver_override", "\n")
    write(kernel, "bus/pci/drivers/vfio-pci/unbind", second)
    write(kernel, "bus/pci/drivers/rebellions/bind", second)
    rig.settle()
    labels, ready = read()
    assert ready is None, "not converged: no validation file"
    assert labels[f"{NFD}.converged"] == "false"
    assert labels[f"{NFD}.state-failed"] == "1"
    assert f"{NFD}.vfio.RBLN-CA22" not in labels

    assert rig.stop() == 0
    assert read() == ({}, None), "a clean stop removes both"


# -- the node's configuration, live -------------------------------------------------------
NODES = "/etc/vfio-manager/nodes"  # on the fake file system, as a mounted ConfigMap


def configure(**files: str) -> None:
    os.makedirs(NODES, exist_ok=True)
    for name, text in files.items():
        path = posixpath.join(NODES, name)
        with open(f"{path}.new", "w") as handle:
            handle.write(text)
        os.replace(f"{path}.new", path)


def test_the_node_configuration_applies_at_start_and_when_it_changes(
    kernel: FakeKernel, make_kernel_rig: Any
) -> None:
    first, second, third = npu_node(kernel, count=3)
    configure(default=f"VFIO_MANAGER_BDF={first},{second}\nVFIO_MANAGER_EXCLUDE={second}\n")
    rig = make_kernel_rig(DaemonOptions(node_config=NODES, node_name="node-a"))
    rig.start()
    assert [kernel.driver_of(b) for b in (first, second, third)] == [
        "vfio-pci",
        *["rebellions"] * 2,
    ]
    assert rig.state(second) is State.EXCLUDED, "excluded by the node's file at start"
    assert rig.state(third) is None, "never selected: not reported, never touched"
    assert not writes_for(kernel, second)
    assert not writes_for(kernel, third)

    configure(**{"node-a": f"VFIO_MANAGER_BDF={third}\n"})  # the node's own key wins
    rig.step_until(lambda: kernel.driver_of(third) == "vfio-pci")
    assert rig.clock.now - 1000.0 <= 10, "seen within a look at the file or two, no resync"
    assert kernel.driver_of(first) == "rebellions", "left the selection: back to the host"
    assert kernel.override_of(first) is None
    assert kernel.driver_of(second) == "rebellions", "never selected on vfio: not touched"
    assert rig.state(first) is None
    assert rig.loop.view.converged
    assert rig.ready_doc()["counts"]["converged"] == 1


def test_a_node_key_with_none_per_numa_node_returns_all_it_had(
    kernel: FakeKernel, make_kernel_rig: Any
) -> None:
    """The runbook's way to give one node's NPUs back without uninstalling."""
    functions = npu_node(kernel, count=3)
    configure(default="")
    rig = make_kernel_rig(DaemonOptions(node_config=NODES, node_name="node-a"))
    rig.start()
    assert [kernel.driver_of(b) for b in functions] == ["vfio-pci"] * 3

    configure(**{"node-a": "VFIO_MANAGER_PER_NUMA_NODE=0\n"})
    rig.step_until(lambda: all(kernel.driver_of(b) == "rebellions" for b in functions))
    assert [kernel.override_of(b) for b in functions] == [None] * 3
    assert rig.loop.view.converged, "nothing selected is a converged node"


def writers() -> list[threading.Thread]:
    """The writer threads alive (the fake kernel's writes are made from threads)."""
    return [t for t in threading.enumerate() if t.name.startswith("vfio-manager: writer")]


def test_a_release_leaves_no_writer_behind(kernel: FakeKernel, make_kernel_rig: Any) -> None:
    """Two runs under one node lock (bind, then the release) share its writer: none leaks."""
    first, second = npu_node(kernel, count=2)
    configure(default=f"VFIO_MANAGER_BDF={first}\n")
    rig = make_kernel_rig(DaemonOptions(node_config=NODES))
    rig.start()
    configure(default=f"VFIO_MANAGER_BDF={second}\n")  # one reconcile: bind one, return one
    rig.step_until(lambda: kernel.driver_of(first) == "rebellions")
    assert kernel.driver_of(second) == "vfio-pci"
    for thread in writers():
        thread.join(5)
    assert writers() == []


def test_a_held_function_that_left_the_selection_stays_until_released(
    fs: FakeFilesystem, kernel: FakeKernel, make_kernel_rig: Any
) -> None:
    first, second = npu_node(kernel, count=2)
    configure(default="")
    rig = make_kernel_rig(DaemonOptions(node_config=NODES, listen="127.0.0.1:0"))
    rig.start()
    assert kernel.driver_of(first) == kernel.driver_of(second) == "vfio-pci"
    fake_process(fs, kernel, 4242, "qemu-system-x86", fds=(f"/dev/vfio/{kernel.group_of(first)}",))
    configure(default=f"VFIO_MANAGER_BDF={second}\n")
    rig.step_until(lambda: rig.state(first) is State.HELD)
    assert kernel.driver_of(first) == "vfio-pci", "a VM holds it: it stays"
    held = rig.loop.view.functions[first]
    assert held.cause is Reason.LEFT_SELECTION
    assert "PID 4242" in (held.reason or "")
    assert not rig.loop.view.converged
    labels = {"bdf": first, "product": "RBLN-CA22", "state": "held", "reason": "left-selection"}
    assert rig.metric("vfio_manager_function_state", **labels) == 1
    status, body = get(rig, "/readyz")
    assert (status, body["not_converged"][0]["reason"]) == (200, "left-selection")
    rig.loop.request_resync()
    rig.step()
    assert kernel.driver_of(first) == "vfio-pci", "still held at the next resync"

    shutil.rmtree(posixpath.join(kernel.proc_root, "4242"))  # the VM stops
    rig.loop.request_resync()
    rig.step()
    assert kernel.driver_of(first) == "rebellions", "released: it goes back"
    assert rig.state(first) is None
    assert rig.loop.view.converged
    assert rig.metric("vfio_manager_function_state", **labels) is None


def test_a_function_that_fails_to_go_back_is_retried_with_backoff(
    kernel: FakeKernel, make_kernel_rig: Any
) -> None:
    first, second = npu_node(kernel, count=2)
    configure(default="")
    rig = make_kernel_rig(DaemonOptions(node_config=NODES))
    rig.start()
    kernel.fail_probe("rebellions", first, errno.EIO)  # its native driver refuses it
    configure(default=f"VFIO_MANAGER_BDF={second}\n")
    rig.step_until(lambda: rig.state(first) is State.FAILED)
    assert kernel.driver_of(first) == "vfio-pci", "put back as it was"
    assert rig.loop.view.functions[first].cause is Reason.NOT_RESPONDING
    kernel.add_driver("pci-stub", module="pci_stub")  # registers: a full resync while it waits
    rig.settle()
    assert rig.loop.backoff.waiting() == {first}
    waiting = rig.loop.view.functions[first]
    assert (waiting.state, waiting.cause) == (State.FAILED, Reason.NOT_RESPONDING)
    assert "retried automatically" in (waiting.remedy or "")
    kernel.fail_probe("rebellions", first, None)
    rig.step_until(lambda: kernel.driver_of(first) == "rebellions", limit=20)
    assert rig.state(first) is None
    assert rig.loop.view.converged


def test_a_bad_node_configuration_is_logged_and_the_last_good_one_stays(
    kernel: FakeKernel, make_kernel_rig: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vfio_manager.daemon import nodeconfig

    errors: list[dict[str, Any]] = []
    monkeypatch.setattr(nodeconfig.log, "error", lambda event, **kw: errors.append(kw))
    first, second = npu_node(kernel, count=2)
    configure(default=f"VFIO_MANAGER_BDF={first}\n")
    rig = make_kernel_rig(DaemonOptions(node_config=NODES))
    rig.start()
    configure(default="VFIO_MANAGER_VENDOR=0x8086\n")
    for _ in range(3):
        rig.step()
    assert [e["error"] for e in errors] == [f"{NODES}/default: unknown key VFIO_MANAGER_VENDOR"]
    assert "VFIO_MANAGER_BDF" in errors[0]["remedy"]
    assert (kernel.driver_of(first), kernel.driver_of(second)) == ("vfio-pci", "rebellions")


def test_a_bad_node_configuration_at_start_stops_the_daemon_before_anything(
    kernel: FakeKernel, real_state_dir: str
) -> None:
    npu_node(kernel, count=1)
    configure(default="VFIO_MANAGER_NUMA_NODE=zero\n")
    result = cli(kernel, real_state_dir, "daemon", "--node-config", NODES)
    assert result.exit_code == 2
    assert "'zero' is not a NUMA node" in result.stderr
    missing = cli(kernel, real_state_dir, "daemon", "--node-config", "/etc/missing")
    assert missing.exit_code == 2
    assert kernel.writes == []


# -- failures and the host -----------------------------------------------------------------
def test_a_failing_function_backs_off_with_the_kernels_reason_then_recovers(
    kernel: FakeKernel, make_kernel_rig: Any
) -> None:
    first, second = npu_node(kernel, count=2)
    kernel.fail_probe("vfio-pci", second, errno.EINVAL)
    rig = make_kernel_rig(DaemonOptions(listen="127.0.0.1:0"))
    rig.start()
    assert kernel.driver_of(first) == "vfio-pci"
    assert kernel.driver_of(second) == "rebellions", "restored after the failure"
    status = rig.loop.view.functions[second]
    assert status.state is State.FAILED
    assert "EINVAL" in (status.reason or "")
    assert rig.ready_doc() is None
    status, body = get(rig, "/readyz")
    assert status == 200, "one bad device does not make the agent unready"
    assert body["not_converged"][0]["reason"] == "transition-failed"
    assert rig.metric("vfio_manager_transitions_total", direction="vfio", outcome="failed") == 1

    def attempts() -> int:
        overrides = [w for w in writes_for(kernel, second) if w.path.endswith("driver_override")]
        return len([w for w in overrides if w.data.strip() == "vfio-pci"])

    started = rig.clock.now
    while rig.clock.now - started < 30:
        rig.step()
    # tried at 0 s, then 1, 2, 4, 8 and 16 s after each failure: 1, 3, 7, 15 and 31 s.
    # Its own restore's uevents land while it waits: read, never written. No hot loop.
    assert attempts() == 6
    assert rig.loop.view.functions[second].state is State.FAILED
    kernel.fail_probe("vfio-pci", second, None)  # the firmware is fixed
    rig.step_until(lambda: rig.state(second) is State.CONVERGED, limit=20)
    assert kernel.driver_of(second) == "vfio-pci"
    assert rig.ready_doc() is not None
    assert get(rig, "/readyz")[0] == 200


def test_a_host_that_is_not_ready_is_waited_for_then_converged(
    kernel: FakeKernel, make_kernel_rig: Any
) -> None:
    (npu,) = npu_node(kernel, count=1, vfio_loaded=False)
    rig = make_kernel_rig(DaemonOptions(load_modules=False, listen="127.0.0.1:0"))
    rig.start()
    assert kernel.writes == []
    assert rig.state(npu) is State.PENDING
    status, body = get(rig, "/readyz")
    assert status == 503
    assert body["host"]["ready"] is False
    failing = [c["name"] for c in body["host"]["failing"]]
    assert failing == ["vfio-modules", "vfio-pci-driver", "dev-vfio", "vfio-driver"]
    assert all(c["remedy"] for c in body["host"]["failing"])
    assert body["not_converged"][0]["reason"] == "host-not-ready"
    assert rig.loop.view.functions[npu].reason.startswith("the host is not ready (vfio-modules")
    assert rig.metric("vfio_manager_host_ready") == 0
    assert rig.metric("vfio_manager_host_check_failing", check="vfio-modules") == 1
    assert rig.notifications()[-1] == [
        "READY=1",
        "STATUS=host not ready (vfio-modules, vfio-pci-driver, dev-vfio, vfio-driver); 1 pending",
    ], "READY=1 at once: kubelet, ordered after the daemon, is not held"
    rig.step()  # the next resync checks again: still not ready, still nothing written
    assert kernel.writes == []

    kernel.load_module("vfio_pci")  # modules-load.d, an admin, a later init container
    rig.settle()
    assert kernel.driver_of(npu) == "vfio-pci"
    assert rig.loop.view.host.ok
    assert rig.metric("vfio_manager_host_check_failing", check="vfio-modules") == 0
    assert rig.notifications()[-1] == ["STATUS=converged: 1 converged"]


# -- stopping ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", list(OnExit))
def test_sigterm_mid_transition_finishes_it_settles_the_journal_and_applies_on_exit(
    fs: FakeFilesystem, kernel: FakeKernel, make_kernel_rig: Any, mode: OnExit
) -> None:
    first, second, third = npu_node(kernel, count=3)
    write(kernel, f"bus/pci/devices/{third}/driver_override", "vfio-pci")
    write(kernel, "bus/pci/drivers/rebellions/unbind", third)
    write(kernel, "bus/pci/drivers_probe", third)
    assert kernel.driver_of(third) == "vfio-pci"
    fake_process(fs, kernel, 4242, "qemu-system-x86", fds=(f"/dev/vfio/{kernel.group_of(third)}",))
    rig = make_kernel_rig(DaemonOptions(on_exit=mode))
    gate = kernel.block_unbind(second)

    def sigterm_while_blocked() -> None:
        assert gate.entered.wait(10)
        rig.loop.request_stop(15)
        gate.set()

    helper = threading.Thread(target=sigterm_while_blocked)
    helper.start()
    code = rig.daemon.run()
    helper.join(10)
    rig.exit_code = code
    assert pending_records(rig) == [], "every transition finished: nothing left half way"
    assert rig.loop.reconciles == 1
    assert rig.notifications()[-1] == ["STOPPING=1", "STATUS=stopping (SIGTERM)"]
    assert rig.ready_doc() is None
    assert kernel.driver_of(third) == "vfio-pci", "a VM holds it: never yanked"
    if mode is OnExit.KEEP:
        assert code == 0
        assert kernel.driver_of(first) == kernel.driver_of(second) == "vfio-pci"
    elif mode is OnExit.RELEASE_IDLE:
        assert code == 0
        assert kernel.driver_of(first) == kernel.driver_of(second) == "rebellions"
    else:
        assert code == 1, "release has unbind-all's refusals"
        assert kernel.driver_of(first) == kernel.driver_of(second) == "rebellions"


def test_a_dead_function_is_never_written_and_counted_as_not_responding(
    kernel: FakeKernel, make_kernel_rig: Any
) -> None:
    dead, alive = npu_node(kernel, count=2)
    kernel.stop_responding(dead)
    rig = make_kernel_rig(DaemonOptions(listen="127.0.0.1:0"))
    rig.start()
    assert kernel.driver_of(alive) == "vfio-pci"
    assert not writes_for(kernel, dead)
    assert rig.state(dead) is State.PENDING
    function = rig.loop.view.functions[dead]
    assert function.cause is Reason.NOT_RESPONDING
    assert "not responding" in (function.reason or "")
    assert f"/sys/bus/pci/devices/{dead}/reset" in (function.remedy or "")
    labels = {"bdf": dead, "product": "RBLN-CA22", "state": "pending"}
    assert rig.metric("vfio_manager_function_state", **labels, reason="not-responding") == 1
    _status, body = get(rig, "/readyz")
    (why,) = body["not_converged"]
    assert (why["bdf"], why["reason"]) == (dead, "not-responding")
    rig.loop.request_resync()
    rig.step()
    assert not writes_for(kernel, dead), "never written, not even at a resync"


def test_on_exit_release_names_only_what_did_not_go_back(
    fs: FakeFilesystem, kernel: FakeKernel, make_kernel_rig: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The error of --on-exit release lists the functions left on vfio, not those returned."""
    errors: list[dict[str, Any]] = []
    monkeypatch.setattr(loop_module.log, "error", lambda event, **kw: errors.append(kw))
    free, held = npu_node(kernel, count=2)
    assert invoke(kernel, "bind-all").exit_code == 0
    rig = make_kernel_rig(DaemonOptions(on_exit=OnExit.RELEASE))
    fake_process(fs, kernel, 4242, "qemu-system-x86", fds=(f"/dev/vfio/{kernel.group_of(held)}",))
    rig.loop.request_stop(15)
    assert rig.daemon.run() == 1
    assert kernel.driver_of(free) == "rebellions"
    assert kernel.driver_of(held) == "vfio-pci"
    (error,) = [e["error"] for e in errors if "--on-exit release" in str(e.get("error"))]
    assert f"{held} refused" in error
    assert free not in error
