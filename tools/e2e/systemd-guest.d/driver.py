#!/usr/bin/python3
"""The checks of tools/e2e/systemd-guest, run in its guest by vfio-e2e-driver.service.

The guest booted with systemd as PID 1, the release file vfio-manager-VERSION.pyz installed by its
own installer (/usr/local/bin/vfio-manager) and the files of systemd/ with it, as
docs/bare-metal.md says; its python3 is Debian's, with no other Python package. $BOOT names
the boot: which unit is enabled, whether the machine has an IOMMU, and which checks run. The
e1000e at 03:00.0 (8086:10d3) plays the "NPU"; the daemon's boots also select the e1000 at
00:05.0, which shares its IOMMU group with virtio-net on a host driver: refused, so the node
never converges.

BOOT=bind (IOMMU on; vfio-manager-bind.service and vfio-e2e-witness.service enabled)
  boot
    modules      systemd-modules-load.service succeeded and loaded vfio, vfio_pci and
                 vfio_iommu_type1 before vfio-manager-bind.service started.
    bind         vfio-manager-bind.service is active (exited) with status 0 and moved the
                 e1000e to vfio-pci (its /dev/vfio/N exists); nothing else was moved.
    ordering     vfio-e2e-witness.service (After=vfio-manager-bind.service) found the e1000e on
                 vfio-pci when it started, and started after the bind had exited.
  artifact
    installed    /usr/local/bin/vfio-manager links to a .pyz in /usr/local/lib/vfio-manager;
                 the guest's python3 has no pip and no click (the file brings its own).
    version      `vfio-manager --version` names the version, a commit and the lock's digest.
    status       `vfio-manager status --check` (the e1000e selected) exits 0.
  sandbox (each probe is a copy of the installed vfio-manager-bind.service, its command
  replaced and one setting changed by a drop-in; "shipped" changes nothing)
    in-use       two processes hold /dev/vfio/N: one as root with every capability, one as uid
                 65534 (like a VM that libvirt starts). The shipped unit sees both and refuses
                 `unbind-all`; without CAP_SYS_PTRACE it sees neither, without
                 CAP_DAC_READ_SEARCH not the uid 65534 one, with PrivateUsers=yes neither.
    writes       the shipped unit unbinds for real; with no capability at all it binds for
                 real (the sysfs writes need uid 0, not a capability); ProtectKernelTunables=yes
                 and PrivateDevices=yes make the bind fail and the function stays where it was.
    host-nic     with an address on the e1000e's interface the shipped unit refuses the bind
                 (the host needs it); with PrivateNetwork=yes (another network namespace) or
                 ProcSubset=pid (no /proc/net) the guard does not see it and would let it go.

BOOT=daemon (IOMMU on; vfio-manager.service and the kubelet stand-in enabled; WatchdogSec=20s)
  daemon-boot    kubelet.service, a stand-in ordered only by the shipped unit's
                 Before=kubelet.service, starts after READY=1 and within seconds of it, and
                 by then the first reconcile has finished: the e1000e is on vfio-pci, the
                 e1000 still on its driver and STATUS= says the node is not converged.
  daemon         the unit stays active with no restart, pings its watchdog after READY=1,
                 takes a reload (SIGHUP) without a restart, and `systemctl stop` ends it with
                 Result=success and the e1000e still on vfio-pci. retry: started with vfio_pci
                 unloaded, it is active within seconds saying the host is not ready; an admin's
                 `modprobe vfio_pci` (a uevent) makes the same process bind the e1000e.

BOOT=iommu-off (no IOMMU, as with VT-d off in the firmware; the units as in BOOT=daemon)
  iommu-off      kubelet's stand-in starts within seconds of vfio-manager's start; the unit
                 stays active through a reload and a whole watchdog period after it, still
                 pinging, with no restart, its STATUS= saying the host is not ready; nothing
                 is written;
                 vfio-manager-bind.service fails at once (exit 3) and writes nothing.

Writes /out/results.json, /out/summary.txt, /out/journal.txt, /out/status-*.txt (`systemctl
status` of the units, as an admin sees them) and /out/rc, then makes QEMU exit with the status
through the isa-debug-exit port (0: every check passed, 1: one failed).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Optional

E1000E = "0000:03:00.0"
E1000 = "0000:00:05.0"
SELECTION = ["--vendor", "0x8086", "--class", "0x020000", "--device-id", "0x10d3"]
PCI = "/sys/bus/pci/devices"
BIND_UNIT = "vfio-manager-bind.service"
DAEMON_UNIT = "vfio-manager.service"
PROBE_DIR = "/run/systemd/system"
OUT = "/out"
GUEST_FILE = "/etc/vfio-manager-e2e-guest"
SHELL_CMD = "/etc/vfio-e2e-shell-cmd"
NOBODY = 65534
BOOT = os.environ.get("BOOT", "bind")
T0 = time.monotonic()


# ---- results --------------------------------------------------------------------------------
@dataclass
class Check:
    group: str
    name: str
    ok: bool
    detail: str
    at: float = field(default_factory=lambda: round(time.monotonic() - T0, 1))


RESULTS: list[Check] = []
TIMINGS: dict[str, float] = {}


def check(group: str, name: str, ok: bool, detail: str = "") -> bool:
    RESULTS.append(Check(group, name, bool(ok), detail))
    print(f"{'ok  ' if ok else 'FAIL'} {group}/{name}: {detail}", flush=True)
    return bool(ok)


# ---- the guest --------------------------------------------------------------------------------
def run(
    *argv: str, check_status: bool = False, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check_status and done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv)} exited {done.returncode}: {done.stderr.strip()}")
    return done


def show(unit: str, *props: str) -> dict[str, str]:
    """Properties of a unit, or of the manager itself when ``unit`` is empty."""
    args = ["systemctl", "show", *([unit] if unit else [])]
    for prop in props:
        args += ["-p", prop]
    out = run(*args, check_status=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def mono(unit: str, prop: str) -> int:
    """A unit's monotonic timestamp property in microseconds (0 when never reached)."""
    return int(show(unit, prop)[prop] or 0)


def driver(bdf: str) -> Optional[str]:
    link = f"{PCI}/{bdf}/driver"
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else None


def group(bdf: str) -> int:
    return int(os.path.basename(os.readlink(f"{PCI}/{bdf}/iommu_group")))


def sysfs_write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def to_native_by_hand(bdf: str) -> None:
    """Back to the native driver with plain sysfs writes (no vfio-manager: no intent recorded)."""
    sysfs_write(f"{PCI}/{bdf}/driver_override", "\n")
    if driver(bdf) is not None:
        sysfs_write(f"{PCI}/{bdf}/driver/unbind", bdf)
    sysfs_write("/sys/bus/pci/drivers_probe", bdf)


def netdev(bdf: str) -> str:
    return os.listdir(f"{PCI}/{bdf}/net")[0]


# ---- probes: copies of the installed bind unit ------------------------------------------------
@dataclass
class Probe:
    name: str
    argv: list[str]
    dropin: list[str]
    status: Optional[int] = None
    result: str = ""
    stdout: str = ""
    stderr: str = ""

    @property
    def unit(self) -> str:
        return f"vfio-probe-{self.name}.service"

    def json(self) -> dict[str, object]:
        try:
            doc = json.loads(self.stdout)
        except ValueError as exc:
            raise AssertionError(
                f"probe {self.name}: stdout is not JSON: {self.stdout[:300]!r}"
            ) from exc
        if not isinstance(doc, dict):
            raise AssertionError(f"probe {self.name}: stdout is not a JSON object")
        return doc

    def refusal(self, bdf: str) -> Optional[str]:
        for entry in self.json()["functions"]:  # type: ignore[union-attr]
            if entry["bdf"] == bdf:
                return entry["refused"]  # type: ignore[no-any-return]
        raise AssertionError(f"probe {self.name}: {bdf} is not in the plan")

    def describe(self) -> str:
        tail = (self.stderr.strip().splitlines() or [""])[-1][:200]
        return f"status {self.status} ({self.result}); {' '.join(self.dropin) or 'shipped'}; {tail}"


def write_probe_units(probes: list[Probe]) -> None:
    """One unit per probe: the installed bind unit, its command replaced, one drop-in."""
    with open(f"/etc/systemd/system/{BIND_UNIT}") as f:
        shipped = f.read()
    body = shipped.split("\n[Install]")[0]
    lines = []
    for line in body.splitlines():
        if line.startswith("ExecStart="):
            continue
        lines.append("RemainAfterExit=no" if line.startswith("RemainAfterExit=") else line)
    base = "\n".join(lines)
    os.makedirs("/run/vfio-probe", exist_ok=True)
    for probe in probes:
        unit = f"{base}\nExecStart={shlex.join(probe.argv)}\n"
        unit += f"StandardOutput=truncate:/run/vfio-probe/{probe.name}.out\n"
        unit += f"StandardError=truncate:/run/vfio-probe/{probe.name}.err\n"
        with open(f"{PROBE_DIR}/{probe.unit}", "w") as f:
            f.write(unit)
        os.makedirs(f"{PROBE_DIR}/{probe.unit}.d", exist_ok=True)
        with open(f"{PROBE_DIR}/{probe.unit}.d/probe.conf", "w") as f:
            f.write(f"[Unit]\nDescription=vfio-manager sandbox probe {probe.name}\n[Service]\n")
            f.write("".join(f"{line}\n" for line in probe.dropin))
    run("systemctl", "daemon-reload", check_status=True)


def start(*probes: Probe) -> None:
    """Run the probes side by side (one systemctl transaction: it returns when all have run);
    only probes whose outcome cannot depend on each other share a call."""
    run("systemctl", "start", *(p.unit for p in probes), timeout=600)
    for probe in probes:
        props = show(probe.unit, "Result", "ExecMainStatus")
        probe.status = int(props["ExecMainStatus"] or -1)
        probe.result = props["Result"]
        with open(f"/run/vfio-probe/{probe.name}.out") as f:
            probe.stdout = f.read()
        with open(f"/run/vfio-probe/{probe.name}.err") as f:
            probe.stderr = f.read()


class Holders:
    """Two processes holding /dev/vfio/N through one open file: root with every capability,
    and a child that drops to ``uid`` and execs, like a VM that libvirt starts (dumpable
    again, so its /proc entries belong to that uid)."""

    def __init__(self, node: str, uid: int) -> None:
        code = (
            "import os, sys\n"
            f"fd = os.open({node!r}, os.O_RDWR)\n"
            "os.set_inheritable(fd, True)\n"
            "child = os.fork()\n"
            "if child == 0:\n"
            "    os.setgroups([])\n"
            f"    os.setresgid({uid}, {uid}, {uid})\n"
            f"    os.setresuid({uid}, {uid}, {uid})\n"
            "else:\n"
            "    print(child, flush=True)\n"
            "os.execv('/usr/bin/sleep', ['sleep', '600'])\n"
        )
        self.root = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True
        )
        if self.root.stdout is None:
            raise RuntimeError("no pipe from the holder")
        self.uid_pid = int(self.root.stdout.readline())
        for _ in range(200):  # until both run sleep with the node open
            if all(self._holds(pid, node) for pid in (self.root.pid, self.uid_pid)):
                return
            time.sleep(0.05)
        raise RuntimeError(f"the holders of {node} did not start")

    @staticmethod
    def _holds(pid: int, node: str) -> bool:
        try:
            with open(f"/proc/{pid}/comm") as f:
                if f.read().strip() != "sleep":
                    return False
            return any(
                os.readlink(f"/proc/{pid}/fd/{fd}") == node for fd in os.listdir(f"/proc/{pid}/fd")
            )
        except OSError:
            return False

    def seen_in(self, refusal: Optional[str]) -> list[str]:
        """Which holders a refusal names."""
        text = refusal or ""
        return [
            who
            for who, pid in (("root", self.root.pid), ("uid", self.uid_pid))
            if f"PID {pid} " in text
        ]

    def stop(self) -> None:
        for pid in (self.uid_pid, self.root.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        self.root.wait()


# ---- boot ---------------------------------------------------------------------------------------
def wait_active(unit: str, limit: float) -> None:
    while show(unit, "ActiveState")["ActiveState"] != "active" and time.monotonic() - T0 < limit:
        time.sleep(1)


def check_boot() -> None:
    g = "boot"
    wait_active("multi-user.target", 300)
    ml = show(
        "systemd-modules-load.service", "Result", "ActiveState", "ExecMainExitTimestampMonotonic"
    )
    check(
        g,
        "modules-load",
        ml["Result"] == "success" and ml["ActiveState"] == "active",
        f"systemd-modules-load.service {ml['ActiveState']} ({ml['Result']})",
    )
    missing = [
        m for m in ("vfio", "vfio_pci", "vfio_iommu_type1") if not os.path.isdir(f"/sys/module/{m}")
    ]
    check(
        g,
        "modules",
        not missing,
        f"loaded: vfio vfio_pci vfio_iommu_type1; missing: {missing or 'none'}",
    )

    b = show(
        BIND_UNIT,
        "ActiveState",
        "SubState",
        "Result",
        "ExecMainStatus",
        "ExecMainStartTimestampMonotonic",
        "ExecMainExitTimestampMonotonic",
        "UnitFileState",
    )
    check(
        g,
        "bind-unit",
        (b["ActiveState"], b["SubState"], b["Result"], b["ExecMainStatus"])
        == ("active", "exited", "success", "0"),
        f"{BIND_UNIT}: {b['ActiveState']}/{b['SubState']}, {b['Result']},"
        f" status {b['ExecMainStatus']}, {b['UnitFileState']}",
    )
    bind_start, bind_exit = (
        int(b["ExecMainStartTimestampMonotonic"]),
        int(b["ExecMainExitTimestampMonotonic"]),
    )
    ml_exit = int(ml["ExecMainExitTimestampMonotonic"] or 0)
    check(
        g,
        "after-modules-load",
        0 < ml_exit <= bind_start,
        f"modules-load exited at {ml_exit / 1e6:.2f}s, the bind started at {bind_start / 1e6:.2f}s",
    )
    TIMINGS["bind_unit_start_s"] = round(bind_start / 1e6, 2)
    TIMINGS["bind_unit_run_s"] = round((bind_exit - bind_start) / 1e6, 2)

    drv = driver(E1000E)
    node = f"/dev/vfio/{group(E1000E)}" if drv == "vfio-pci" else "(none)"
    check(g, "bound", drv == "vfio-pci" and os.path.exists(node), f"{E1000E} on {drv}, {node}")
    check(
        g,
        "selection",
        driver(E1000) == "e1000",
        f"{E1000} (e1000, not selected) on {driver(E1000)}",
    )

    w = show("vfio-e2e-witness.service", "Result", "ExecMainStartTimestampMonotonic")
    with open("/run/vfio-e2e/witness-driver") as f:
        seen = os.path.basename(f.read().strip())
    w_start = int(w["ExecMainStartTimestampMonotonic"])
    check(
        g,
        "ordering",
        seen == "vfio-pci" and bind_exit <= w_start,
        f"the witness (After={BIND_UNIT}) started at {w_start / 1e6:.2f}s"
        f" and saw {E1000E} on {seen};"
        f" the bind ran {bind_start / 1e6:.2f}s..{bind_exit / 1e6:.2f}s",
    )


def check_artifact() -> None:
    g = "artifact"
    program = os.path.realpath("/usr/local/bin/vfio-manager")
    bare = [m for m in ("pip", "click") if run("python3", "-c", f"import {m}").returncode == 0]
    check(
        g,
        "installed",
        program.startswith("/usr/local/lib/vfio-manager/vfio-manager-")
        and program.endswith(".pyz")
        and not bare,
        f"vfio-manager -> {program}; the system python3 imports {bare or 'neither pip nor click'}",
    )
    version = run("vfio-manager", "--version")
    words = version.stdout.split()
    check(
        g,
        "version",
        version.returncode == 0
        and version.stdout.startswith("vfio-manager, version ")
        and len(words) == 7
        and words[4] not in {"unknown,", "unknown-dirty,"}
        and words[6].startswith("sha256:"),
        version.stdout.strip() or version.stderr.strip(),
    )
    status = run("vfio-manager", "status", "--check", *SELECTION)
    check(g, "status", status.returncode == 0, f"status --check exited {status.returncode}")


# ---- sandbox ------------------------------------------------------------------------------------
def check_sandbox() -> None:
    g = "sandbox"
    vm = ["vfio-manager"]
    unbind_dry = [*vm, "unbind-all", "--dry-run", "--json", *SELECTION]
    bind_dry = [*vm, "bind-all", "--dry-run", "--json", "--no-load-modules", *SELECTION]
    bind = [*vm, "--timeout", "5", "bind-all", "--no-load-modules", *SELECTION]
    no_ptrace = ["CapabilityBoundingSet=~CAP_SYS_PTRACE"]
    no_dac = ["CapabilityBoundingSet=~CAP_DAC_READ_SEARCH"]
    # name, command, drop-in, expectation (holders seen / refused)
    in_use = [
        ("in-use", [], ["root", "uid"]),
        ("in-use-no-ptrace", no_ptrace, []),
        ("in-use-no-dac", no_dac, ["root"]),
        ("in-use-privateusers", ["PrivateUsers=yes"], []),
    ]
    nic = [
        ("nic", [], True),
        ("nic-privatenetwork", ["PrivateNetwork=yes"], False),
        ("nic-procsubset", ["ProcSubset=pid"], False),
    ]
    probes = {
        p.name: p
        for p in [
            *(Probe(name, unbind_dry, dropin) for name, dropin, _ in in_use),
            Probe("unbind", [*vm, "unbind-all", *SELECTION], []),
            Probe("bind-tunables", bind, ["ProtectKernelTunables=yes"]),
            Probe("bind-privatedevices", bind, ["PrivateDevices=yes"]),
            *(Probe(name, bind_dry, dropin) for name, dropin, _ in nic),
            Probe("bind-no-caps", bind, ["CapabilityBoundingSet="]),
        ]
    }
    t = time.monotonic()
    write_probe_units(list(probes.values()))
    node = f"/dev/vfio/{group(E1000E)}"

    # in-use: who holds the group, and which sandbox still sees them
    holders = Holders(node, NOBODY)
    try:
        start(*(probes[name] for name, _, _ in in_use))  # dry runs
        for name, _, expected in in_use:
            p = probes[name]
            refused = p.refusal(E1000E) if p.status in (0, 1) else None
            seen = holders.seen_in(refused)
            check(
                g,
                name,
                p.status in (0, 1) and seen == expected,
                f"holders root (PID {holders.root.pid}) and uid {NOBODY} (PID {holders.uid_pid});"
                f" seen: {', '.join(seen) or 'none, the unbind would go ahead'}; {p.describe()}",
            )
    finally:
        holders.stop()

    # writes: the shipped unbind, binds that must fail, a bind with no capability at all
    start(p := probes["unbind"])
    check(
        g,
        "unbind",
        p.status == 0 and driver(E1000E) == "e1000e",
        f"shipped unit, real unbind-all: {E1000E} on {driver(E1000E)}; {p.describe()}",
    )
    start(probes["bind-tunables"], probes["bind-privatedevices"])  # both fail, the lock orders them
    for name in ("bind-tunables", "bind-privatedevices"):
        p = probes[name]
        check(
            g,
            name,
            p.status != 0 and driver(E1000E) == "e1000e",
            f"the bind fails, {E1000E} still on {driver(E1000E)}; {p.describe()}",
        )

    # host-nic: an address on the e1000e's interface; the guard must see it
    dev = netdev(E1000E)
    run("ip", "link", "set", dev, "up", check_status=True)
    run("ip", "addr", "add", "192.0.2.10/24", "dev", dev, check_status=True)
    try:
        start(*(probes[name] for name, _, _ in nic))  # dry runs
        for name, _, expect_seen in nic:
            p = probes[name]
            refused = p.refusal(E1000E) if p.status in (0, 1) else None
            seen = refused is not None and "host needs it" in refused
            check(
                g,
                name,
                p.status in (0, 1) and seen == expect_seen,
                f"{dev} has 192.0.2.10/24: "
                + (f"refused: {refused}" if seen else "NOT seen, the bind would go ahead")
                + f"; {p.describe()}",
            )
    finally:
        run("ip", "addr", "flush", "dev", dev)
        run("ip", "link", "set", dev, "down")

    start(p := probes["bind-no-caps"])
    check(
        g,
        "bind-no-caps",
        p.status == 0 and driver(E1000E) == "vfio-pci",
        f"CapabilityBoundingSet= (none): {E1000E} on {driver(E1000E)}; {p.describe()}",
    )
    TIMINGS["sandbox_probes_s"] = round(time.monotonic() - t, 1)
    TIMINGS["sandbox_probes"] = len(probes)


# ---- daemon -------------------------------------------------------------------------------------
KUBELET = "kubelet.service"
HOLD_LIMIT = 120.0  # s after vfio-manager's start: kubelet not started by then is held
AFTER_READY_MAX = 5.0  # s from READY=1 to kubelet's start: systemd starts it at once
OFF_READY_MAX = 30.0  # s from vfio-manager's start to READY=1 with no IOMMU (Python under TCG)


def since_boot(usec: int) -> float:
    return round(usec / 1e6, 2)


def at(usec: int) -> str:
    return f"at {since_boot(usec)}s" if usec else "never"


def wait_for_kubelet(group_name: str) -> tuple[dict[str, str], dict[str, str]]:
    """Wait until kubelet's stand-in has run, or vfio-manager has held it HOLD_LIMIT s;
    then check the order: kubelet after READY=1 and within AFTER_READY_MAX s of it."""
    props = ("ExecMainStartTimestampMonotonic", "ActiveEnterTimestampMonotonic", "ActiveState")
    while True:
        d = show(DAEMON_UNIT, *props, "SubState", "StatusText", "MainPID", "NRestarts")
        k = show(KUBELET, *props)
        d_start, k_start = int(d[props[0]] or 0), int(k[props[0]] or 0)
        held = (time.monotonic() * 1e6 - d_start) / 1e6 if d_start else 0.0
        done = k["ActiveState"] in ("active", "failed")  # the stand-in has written its record
        if done or held > HOLD_LIMIT or time.monotonic() - T0 > 2 * HOLD_LIMIT:
            break
        time.sleep(1)
    d_ready = int(d[props[1]] or 0)
    TIMINGS["daemon_start_s"] = since_boot(d_start)
    if d_ready:
        TIMINGS["ready_after_start_s"] = since_boot(d_ready - d_start)
    if k_start:
        TIMINGS["kubelet_after_daemon_start_s"] = since_boot(k_start - d_start)
    if k_start and d_ready:
        TIMINGS["kubelet_after_ready_s"] = since_boot(k_start - d_ready)
    state = f"vfio-manager {d['ActiveState']}/{d['SubState']}, StatusText={d['StatusText']!r}"
    check(
        group_name,
        "kubelet-started",
        k_start > 0,
        f"kubelet's stand-in started {since_boot(k_start - d_start)}s after vfio-manager"
        if k_start
        else f"kubelet's stand-in NOT started {held:.0f}s after vfio-manager started: {state}",
    )
    check(
        group_name,
        "kubelet-after-ready",
        0 < d_ready <= k_start <= d_ready + AFTER_READY_MAX * 1e6,
        f"vfio-manager started {at(d_start)}, READY=1 {at(d_ready)},"
        f" kubelet's stand-in started {at(k_start)}"
        f" (limit: {AFTER_READY_MAX:g}s after READY=1)",
    )
    return d, kubelet_saw()


def kubelet_saw() -> dict[str, str]:
    """What kubelet-standin.sh recorded when it started: drivers and vfio-manager's state."""
    seen: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError), open("/run/vfio-e2e/kubelet") as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("=")
            seen[key] = value
    return seen


def daemon_state() -> dict[str, str]:
    return show(DAEMON_UNIT, "ActiveState", "SubState", "StatusText", "MainPID", "NRestarts")


def same_process(before: dict[str, str], now: dict[str, str]) -> bool:
    return (
        (now["ActiveState"], now["SubState"]) == ("active", "running")
        and now["MainPID"] == before["MainPID"]
        and now["NRestarts"] == "0"
    )


def save_status(name: str, *units: str) -> None:
    """`systemctl status` as an admin sees it, for docs/bare-metal.md."""
    out = run("systemctl", "status", "--no-pager", "--lines=5", "--full", *units).stdout
    with open(f"{OUT}/status-{name}.txt", "w") as f:
        f.write(out)


def check_daemon_boot() -> bool:
    """IOMMU on: kubelet waits for the first reconcile, and no longer."""
    g = "daemon-boot"
    d, seen = wait_for_kubelet(g)
    status = seen.get("StatusText", "")
    check(
        g,
        "first-reconcile-done",
        seen.get(E1000E) == "vfio-pci"
        and seen.get(E1000) == "e1000"
        and status.startswith("not converged"),
        f"when kubelet's stand-in started: {E1000E} on {seen.get(E1000E)}, {E1000} (refused:"
        f" group peer on a host driver) on {seen.get(E1000)}, StatusText={status!r}",
    )
    check(
        g,
        "active",
        (d["ActiveState"], d["SubState"], d["NRestarts"]) == ("active", "running", "0"),
        f"{d['ActiveState']}/{d['SubState']}, {d['NRestarts']} restarts",
    )
    save_status("daemon", DAEMON_UNIT)
    return d["ActiveState"] == "active"


def check_daemon() -> None:
    """The boot's daemon (WatchdogSec=20s): watchdog, reload, stop; then a host that becomes
    ready on an event."""
    g = "daemon"
    s = show(DAEMON_UNIT, "MainPID", "NRestarts", "ActiveEnterTimestampMonotonic")
    pid, active_at = s["MainPID"], int(s["ActiveEnterTimestampMonotonic"])
    # with WatchdogSec=20s a ping is due every 10 s: one must come well after the first (which
    # may go out with READY=1), and nothing may restart the daemon
    time.sleep(max(0.0, active_at / 1e6 + 15 - time.monotonic()))
    s = show(DAEMON_UNIT, "ActiveState", "MainPID", "NRestarts", "WatchdogTimestampMonotonic")
    last_ping = (int(s["WatchdogTimestampMonotonic"] or 0) - active_at) / 1e6
    check(
        g,
        "watchdog",
        s["ActiveState"] == "active"
        and s["MainPID"] == pid
        and s["NRestarts"] == "0"
        and last_ping >= 5,
        f"{time.monotonic() - active_at / 1e6:.0f}s after READY=1 with WatchdogSec=20s:"
        f" {s['ActiveState']}, PID {pid} -> {s['MainPID']}, {s['NRestarts']} restarts,"
        f" last ping {last_ping:.1f}s after READY=1",
    )

    # reload: SIGHUP (resync now), the same process goes on
    before = daemon_state()
    reload = run("systemctl", "reload", DAEMON_UNIT)
    time.sleep(3)
    s = daemon_state()
    check(
        g,
        "reload",
        reload.returncode == 0 and same_process(before, s),
        f"systemctl reload exited {reload.returncode}: {s['ActiveState']}, PID {pid} ->"
        f" {s['MainPID']}, StatusText={s['StatusText']!r}",
    )

    t = time.monotonic()
    stopped = run("systemctl", "stop", DAEMON_UNIT, timeout=120)
    TIMINGS["daemon_stop_s"] = round(time.monotonic() - t, 1)
    s = show(DAEMON_UNIT, "ActiveState", "Result", "ExecMainStatus")
    check(
        g,
        "stop",
        stopped.returncode == 0 and s["ActiveState"] == "inactive" and s["Result"] == "success",
        f"systemctl stop took {TIMINGS['daemon_stop_s']}s: {s['ActiveState']}, {s['Result']},"
        f" status {s['ExecMainStatus']}",
    )
    check(g, "kept", driver(E1000E) == "vfio-pci", f"{E1000E} on {driver(E1000E)} after the stop")
    check_retry()


def check_retry() -> None:
    """vfio_pci unloaded: the unit is active within seconds, host not ready; an admin's
    modprobe (a driver uevent) makes the same process bind the e1000e."""
    g = "daemon"
    to_native_by_hand(E1000E)
    run("modprobe", "-r", "vfio_pci", check_status=True)
    t = time.monotonic()
    try:
        started = run("systemctl", "start", DAEMON_UNIT, timeout=HOLD_LIMIT)
        took = f"systemctl start returned {started.returncode} after {time.monotonic() - t:.1f}s"
    except subprocess.TimeoutExpired:
        took = f"systemctl start still waiting for READY=1 after {HOLD_LIMIT:g}s"
    TIMINGS["retry_start_s"] = round(time.monotonic() - t, 1)
    before = daemon_state()
    check(
        g,
        "retry-ready",
        before["ActiveState"] == "active" and before["StatusText"].startswith("host not ready"),
        f"vfio_pci not loaded: {took}; {before['ActiveState']}/{before['SubState']},"
        f" StatusText={before['StatusText']!r}",
    )
    if before["ActiveState"] != "active":
        return
    t = time.monotonic()
    run("modprobe", "vfio_pci", check_status=True)
    while driver(E1000E) != "vfio-pci" and time.monotonic() - t < 60:
        time.sleep(0.5)
    TIMINGS["retry_bound_after_modprobe_s"] = round(time.monotonic() - t, 1)
    time.sleep(1)  # the STATUS= of that reconcile
    s = daemon_state()
    check(
        g,
        "retry-event",
        driver(E1000E) == "vfio-pci" and same_process(before, s),
        f"modprobe vfio_pci: {E1000E} on {driver(E1000E)} after"
        f" {TIMINGS['retry_bound_after_modprobe_s']}s; PID {before['MainPID']} ->"
        f" {s['MainPID']}, {s['NRestarts']} restarts, StatusText={s['StatusText']!r}",
    )
    run("systemctl", "stop", DAEMON_UNIT, timeout=120)


def check_iommu_off() -> None:
    """No IOMMU: kubelet is not held, the unit stays active and says why; the oneshot fails
    at once."""
    g = "iommu-off"
    d, seen = wait_for_kubelet(g)
    ready_after = TIMINGS.get("ready_after_start_s")
    check(
        g,
        "ready-at-once",
        ready_after is not None and ready_after <= OFF_READY_MAX,
        (f"READY=1 {ready_after}s after vfio-manager's start" if ready_after else "no READY=1")
        + f" (limit {OFF_READY_MAX:g}s)",
    )
    status = seen.get("StatusText", "")
    check(
        g,
        "status",
        status.startswith("host not ready") and seen.get("ActiveState") == "active",
        f"when kubelet's stand-in started: vfio-manager {seen.get('ActiveState')},"
        f" StatusText={status!r}",
    )
    if d["ActiveState"] != "active":
        return
    save_status("iommu-off", DAEMON_UNIT)
    # a reload (a resync that fails at the gate again), then a whole watchdog period
    # (WatchdogSec=20s): still pinging, the same process, no restart
    reload = run("systemctl", "reload", DAEMON_UNIT)
    reloaded = time.monotonic()
    time.sleep(25)
    s = show(
        DAEMON_UNIT,
        "ActiveState",
        "SubState",
        "StatusText",
        "MainPID",
        "NRestarts",
        "WatchdogTimestampMonotonic",
    )
    ping = int(s["WatchdogTimestampMonotonic"] or 0) / 1e6 - reloaded
    check(
        g,
        "stays-active",
        reload.returncode == 0
        and same_process(d, s)
        and ping > 0
        and s["StatusText"].startswith("host not ready"),
        f"systemctl reload exited {reload.returncode}; 25s later (WatchdogSec=20s):"
        f" {s['ActiveState']}/{s['SubState']}, PID {d['MainPID']} -> {s['MainPID']},"
        f" {s['NRestarts']} restarts, last ping {ping:.1f}s after the reload,"
        f" StatusText={s['StatusText']!r}",
    )
    check(
        g,
        "nothing-written",
        driver(E1000E) == "e1000e" and driver(E1000) == "e1000",
        f"{E1000E} on {driver(E1000E)}, {E1000} on {driver(E1000)}",
    )
    run("systemctl", "stop", DAEMON_UNIT, timeout=120)

    # the oneshot: preflight fails before any write, exit 3, kubelet's order released at once
    t = time.monotonic()
    run("systemctl", "start", BIND_UNIT, timeout=HOLD_LIMIT)
    TIMINGS["bind_unit_run_s"] = round(time.monotonic() - t, 1)
    b = show(BIND_UNIT, "ActiveState", "Result", "ExecMainStatus")
    check(
        g,
        "bind-unit",
        (b["ActiveState"], b["ExecMainStatus"]) == ("failed", "3") and driver(E1000E) == "e1000e",
        f"{BIND_UNIT}: {b['ActiveState']} ({b['Result']}), status {b['ExecMainStatus']},"
        f" after {TIMINGS['bind_unit_run_s']}s; {E1000E} on {driver(E1000E)}",
    )
    save_status("iommu-off-bind", BIND_UNIT)


# ---- main ---------------------------------------------------------------------------------------
def timings_of_boot() -> None:
    """Seconds since the kernel started: systemd's start, multi-user.target, this driver."""
    TIMINGS["systemd_start_s"] = round(mono("", "UserspaceTimestampMonotonic") / 1e6, 1)
    TIMINGS["multi_user_s"] = round(
        mono("multi-user.target", "ActiveEnterTimestampMonotonic") / 1e6, 1
    )
    with open("/proc/uptime") as f:
        TIMINGS["driver_start_s"] = round(float(f.read().split()[0]) - (time.monotonic() - T0), 1)


def mount_out() -> None:
    run("modprobe", "-a", "9pnet_virtio", "9p", check_status=True)
    os.makedirs(OUT, exist_ok=True)
    run(
        "mount",
        "-t",
        "9p",
        "-o",
        "trans=virtio,version=9p2000.L,msize=512000",
        "out",
        OUT,
        check_status=True,
    )


def finish(rc: int) -> None:
    summary = [f"{'ok  ' if c.ok else 'FAIL'} {c.group}/{c.name}: {c.detail}" for c in RESULTS]
    summary.append("timings: " + json.dumps(TIMINGS))
    passed = sum(1 for c in RESULTS if c.ok)
    summary.append(f"{BOOT}: {passed} passed, {len(RESULTS) - passed} failed")
    text = "\n".join(summary) + "\n"
    print(text, flush=True)
    try:
        with open(f"{OUT}/summary.txt", "w") as f:
            f.write(text)
        with open(f"{OUT}/results.json", "w") as f:
            json.dump({"checks": [c.__dict__ for c in RESULTS], "timings": TIMINGS}, f, indent=1)
        with open(f"{OUT}/journal.txt", "w") as f:
            f.write(run("journalctl", "-b", "--no-pager", "-o", "short-monotonic").stdout)
        with open(f"{OUT}/rc", "w") as f:
            f.write(f"{rc}\n")
        os.sync()
        run("umount", OUT)
    finally:
        # isa-debug-exit: QEMU exits with (value << 1) | 1, value = rc + 1 (tools/e2e/run)
        with open("/dev/port", "r+b", buffering=0) as port:
            port.seek(0xF4)
            port.write(bytes([min(rc + 1, 127)]))


def check_daemon_at_boot() -> None:
    if check_daemon_boot():
        check_daemon()


BOOTS = {
    "bind": (check_boot, check_artifact, check_sandbox),
    "daemon": (check_daemon_at_boot,),
    "iommu-off": (check_iommu_off,),
}


def main() -> int:
    with open("/proc/cmdline") as f:
        if "vfio_e2e.guest=1" not in f.read().split() or not os.path.exists(GUEST_FILE):
            print("driver.py runs only in the guest of tools/e2e/systemd-guest", file=sys.stderr)
            return 4
    mount_out()
    rc = 1
    try:
        if os.path.exists(SHELL_CMD):  # --shell-cmd: that instead of the checks
            done = subprocess.run(
                ["/bin/sh", SHELL_CMD], capture_output=True, text=True, check=False
            )
            print(done.stdout + done.stderr, flush=True)
            check("shell", "cmd", done.returncode == 0, f"exit {done.returncode}")
        else:
            for part in BOOTS[BOOT]:
                try:
                    part()
                except Exception:  # noqa: BLE001  (any error is a failed check, not a crash)
                    check(
                        part.__name__,
                        "error",
                        False,
                        traceback.format_exc().strip().replace("\n", " | "),
                    )
        rc = 0 if all(c.ok for c in RESULTS) else 1
    finally:
        timings_of_boot()
        finish(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main())
