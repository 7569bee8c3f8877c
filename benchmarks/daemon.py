"""Section 6, the daemon's budgets: start to ready, RSS, idle CPU, and the cost of a repair.

``vfio-manager daemon`` runs as a separate process (the console script, as systemd or a pod
starts it) on a generated node already converged (every NPU on vfio-pci, /dev/vfio/N
present), with ``--resync-interval 3600`` so that nothing but this harness wakes it. Read
from outside, never from the daemon's own words: the ready file's appearance (start to
ready), ``/proc/PID/status`` (VmRSS, VmHWM) and ``/proc/PID/stat`` (user + system ticks:
idle CPU over a quiet interval).

Hotplug to bound needs a kernel: the netlink socket the daemon listens on carries only the
kernel's uevents (the daemon ignores datagrams a process sends), and a plain-file tree
cannot bind anything. What can be measured without one is the daemon's own part of a
repair: one NPU is put back on its native driver in the tree (as a rebind by an admin
leaves it: driver link, override, no /dev/vfio/N), the daemon gets SIGHUP (a resync: the
full reconcile a uevent's partial one is a part of), and the clock stops when it has written
the function's BDF to ``drivers/rebellions/unbind``: its plan is made, the override set, and
on a kernel the probe would follow at once. (On plain files the driver link does not
change, so the daemon writes no probe, fails its check, restores the function and retries
later.) On a kernel, hotplug to bound is then: the debounce window (200 ms) + that
reconcile + the kernel's unbind and probe; docs/daemon.md has the QEMU tier's end-to-end
figures. The harness stops the daemon with SIGTERM and times the exit.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from benchmarks import fakenode, report
from benchmarks.context import Context
from benchmarks.runner import child_env, product_argv

_TICKS = os.sysconf("SC_CLK_TCK")
_POLL = 0.002  # seconds between looks at a file the daemon is expected to write
_READY_TIMEOUT = 180.0
_REPAIR_TIMEOUT = 60.0


@dataclass(frozen=True)
class DaemonRun:
    """One daemon process, from its start to its exit."""

    endpoints: int
    start_to_ready: float
    rss_kib: Optional[int]
    hwm_kib: Optional[int]
    idle_cpu: float  # seconds of CPU over ``idle_seconds``
    idle_seconds: float
    signal_to_write: Optional[float]
    repair_cpu: Optional[float]  # CPU from SIGHUP to the unbind write
    term_to_exit: float
    returncode: int


def _cpu_seconds(pid: int) -> float:
    """User + system time of a running process and of its children it has reaped (the
    writer children of a repair)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / _TICKS  # utime, stime, cutime, cstime


def _memory_kib(pid: int) -> tuple[Optional[int], Optional[int]]:
    rss = hwm = None
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def _wait_for(
    predicate: Callable[[], bool], timeout: float, process: subprocess.Popen[bytes]
) -> bool:
    """Poll ``predicate`` until it holds (True), the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if process.poll() is not None:
            return False
        time.sleep(_POLL)
    return False


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def rebind_native(node: fakenode.FakeNode, fn: fakenode.Function) -> None:
    """Put one converged NPU back on its native driver in the tree, as an admin's rebind
    leaves it: driver links on both sides, override cleared, no vfio-dev, no /dev/vfio/N."""
    fakenode.StoreFunctions(node, probe_delay=0.0).rebind(fn, None)


def run_daemon_once(ctx: Context, node: fakenode.FakeNode, idle_seconds: float) -> DaemonRun:
    ready = os.path.join(node.state_dir, "ready")
    unbind_file = os.path.join(node.sys_root, "bus/pci/drivers", fakenode.NPU[3], "unbind")
    argv = [*product_argv(), *node.cli_args(), "daemon", "--resync-interval", "3600"]
    log_path = ctx.path(f"daemon-{len(node.functions)}.log")
    with open(log_path, "ab") as log:
        started = time.monotonic()
        process = subprocess.Popen(argv, stdout=log, stderr=log, env=child_env())
        try:
            if not _wait_for(lambda: os.path.exists(ready), _READY_TIMEOUT, process):
                raise RuntimeError(f"the daemon did not get ready (log: {log_path})")
            start_to_ready = time.monotonic() - started
            time.sleep(0.5)  # let the start-up reconcile's garbage go
            rss, hwm = _memory_kib(process.pid)
            before = _cpu_seconds(process.pid)
            time.sleep(idle_seconds)
            idle_cpu = _cpu_seconds(process.pid) - before
            victim = node.npus[len(node.npus) // 2]
            rebind_native(node, victim)
            cpu_before = _cpu_seconds(process.pid)
            sent = time.monotonic()
            process.send_signal(signal.SIGHUP)
            wrote = _wait_for(lambda: _read(unbind_file) == victim.bdf, _REPAIR_TIMEOUT, process)
            signal_to_write = time.monotonic() - sent if wrote else None
            repair_cpu = _cpu_seconds(process.pid) - cpu_before if wrote else None
            term = time.monotonic()
            process.send_signal(signal.SIGTERM)
            returncode = process.wait(timeout=60)
            term_to_exit = time.monotonic() - term
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return DaemonRun(
        len(node.functions),
        start_to_ready,
        rss,
        hwm,
        idle_cpu,
        idle_seconds,
        signal_to_write,
        repair_cpu,
        term_to_exit,
        returncode,
    )


def _median(values: list[Optional[float]]) -> Optional[float]:
    found = [v for v in values if v is not None]
    return statistics.median(found) if found else None


def _secs(value: Optional[float]) -> str:
    return report.seconds(value) if value is not None else "not seen"


def run_section(ctx: Context) -> list[report.Table]:
    sizes = (16, 1024)
    reps = 1 if ctx.quick else 3
    idle_seconds = 5.0 if ctx.quick else 20.0
    table = report.Table(
        "Daemon: converged node, separate process",
        ("endpoints", "start to ready", "RSS (peak)", "idle CPU", "idle CPU per hour",
         "SIGHUP to its first unbind", "its CPU", "SIGTERM to exit", "exit"),
    )  # fmt: skip
    for size in sizes:
        runs: list[DaemonRun] = []
        for rep in range(reps):
            # a fresh node each time: the previous run's repair left one NPU half way
            node = fakenode.generate(
                ctx.path(f"daemon-{size}-{rep}"), size, npu_driver=fakenode.VFIO
            )
            runs.append(run_daemon_once(ctx, node, idle_seconds))
        bad = [r for r in runs if r.returncode != 0 or r.signal_to_write is None]
        if bad:
            ctx.problems.append(f"daemon, {size} endpoints: {bad}")
        rss = _median([r.rss_kib for r in runs])
        hwm = _median([r.hwm_kib for r in runs])
        idle = _median([r.idle_cpu for r in runs]) or 0.0
        table.rows.append(
            (
                str(size),
                _secs(_median([r.start_to_ready for r in runs])),
                f"{(rss or 0) / 1024:.1f} MiB ({(hwm or 0) / 1024:.1f} MiB)",
                f"{report.seconds(idle)} in {idle_seconds:.0f} s",
                report.seconds(idle / idle_seconds * 3600),
                _secs(_median([r.signal_to_write for r in runs])),
                _secs(_median([r.repair_cpu for r in runs])),
                _secs(_median([r.term_to_exit for r in runs])),
                report.codes({r.returncode for r in runs}),
            )
        )
        table.data[str(size)] = [r.__dict__ for r in runs]
    table.notes.append(
        f"median of {reps} daemon process(es) per size, each on a fresh generated node (NPUs on "
        "vfio-pci), `--resync-interval 3600`, no `--listen`; CPU from /proc/PID/stat (clock "
        f"ticks of 1/{_TICKS} s), RSS from /proc/PID/status after ready; the repair: one NPU "
        "put back on rebellions in the tree, SIGHUP (a full reconcile), until the daemon has "
        "written its unbind (override set, plan made); hotplug to bound on a kernel adds the "
        "200 ms debounce window, the probe and /dev/vfio/N (not measurable on plain files, see "
        "the module docstring)"
    )
    return [table]
