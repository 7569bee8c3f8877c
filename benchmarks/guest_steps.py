"""Runs INSIDE the QEMU guest of tools/e2e/run: the operator's script and vfio-manager, step by
step, timed, with the sysfs writes of each step counted. Standard library only (the guest's
python3). Started by :mod:`benchmarks.guest`, which stages this file and the script.

It refuses to run anywhere but the e2e guest (the same two marks tests/e2e/conftest.py
checks), because it writes to /sys: between the tools' turns it puts the selected functions
back on their boot drivers itself (clear the override, unbind, drivers_probe).

Writes are counted with inotify: every file under /sys/bus/pci (bus files, each driver's
folder, each function's folder) opened for writing and closed raises IN_CLOSE_WRITE, for
bash's ``echo > file`` and Python's ``os.open`` alike. IN_OPEN is watched too, though not
counted: inotify merges an event into the previous one when both are identical and unread,
so two writes in a row to one file (the script clears ``driver_override``, then sets it)
would count once; the open between them keeps them apart.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import statistics
import struct
import subprocess
import sys
import time
from typing import Any, Optional

GUEST_FILE = "/etc/vfio-manager-e2e-guest"
PCI = "/sys/bus/pci"
IN_CLOSE_WRITE = 0x00000008
IN_OPEN = 0x00000020
IN_Q_OVERFLOW = 0x00004000
_EVENT = struct.Struct("iIII")


def _in_guest() -> bool:
    try:
        with open("/proc/cmdline", encoding="utf-8") as handle:
            args = handle.read().split()
    except OSError:
        return False
    return "vfio_e2e.guest=1" in args and os.path.exists(GUEST_FILE)


class WriteCounter:
    """IN_CLOSE_WRITE events on the PCI bus's files, drained between steps."""

    def __init__(self) -> None:
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.dirs: dict[int, str] = {}
        folders = [PCI]
        folders += [os.path.join(PCI, "drivers", d) for d in os.listdir(f"{PCI}/drivers")]
        folders += [os.path.join(PCI, "devices", d) for d in os.listdir(f"{PCI}/devices")]
        for folder in folders:
            wd = self.libc.inotify_add_watch(self.fd, folder.encode(), IN_CLOSE_WRITE | IN_OPEN)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {folder}")
            self.dirs[wd] = folder

    def take(self) -> list[str]:
        """Paths written since the last call, in order."""
        found: list[str] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    return found
                raise
            offset = 0
            while offset < len(data):
                wd, mask, _cookie, size = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size : offset + _EVENT.size + size].rstrip(b"\0")
                offset += _EVENT.size + size
                if mask & IN_Q_OVERFLOW:
                    raise RuntimeError("inotify queue overflow: the write count would be short")
                if mask & IN_CLOSE_WRITE:
                    found.append(os.path.join(self.dirs.get(wd, "?"), name.decode()))


def _driver(bdf: str) -> Optional[str]:
    try:
        return os.path.basename(os.readlink(f"{PCI}/devices/{bdf}/driver"))
    except OSError:
        return None


def _override(bdf: str) -> Optional[str]:
    with open(f"{PCI}/devices/{bdf}/driver_override", encoding="utf-8") as handle:
        value = handle.read().strip()
    return None if value in ("", "(null)") else value


def _write(path: str, data: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def _read_hex(bdf: str, name: str) -> int:
    with open(f"{PCI}/devices/{bdf}/{name}", encoding="utf-8") as handle:
        return int(handle.read().strip(), 16)


def selected(vendor: int, pci_class: int) -> list[str]:
    return sorted(
        bdf
        for bdf in os.listdir(f"{PCI}/devices")
        if _read_hex(bdf, "vendor") == vendor and _read_hex(bdf, "class") == pci_class
    )


def restore(boot: dict[str, Optional[str]]) -> None:
    """Put each function back on its boot driver with no override (harness writes)."""
    for bdf, native in boot.items():
        if _override(bdf) is not None:
            _write(f"{PCI}/devices/{bdf}/driver_override", "\n")
        current = _driver(bdf)
        if current is not None and current != native:
            _write(f"{PCI}/drivers/{current}/unbind", bdf)
        if _driver(bdf) is None and native is not None:
            _write(f"{PCI}/drivers_probe", bdf)
        if _driver(bdf) != native or _override(bdf) is not None:
            raise RuntimeError(f"{bdf}: could not restore {native} (now {_driver(bdf)})")


def timed(argv: list[str], env: dict[str, str], counter: WriteCounter) -> dict[str, Any]:
    counter.take()
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    seconds = time.perf_counter() - start
    writes = counter.take()
    return {
        "seconds": seconds,
        "exit": proc.returncode,
        "writes": writes,
        "stdout": proc.stdout.decode("utf-8", "replace")[-2000:],
        "stderr": proc.stderr.decode("utf-8", "replace")[-2000:],
    }


STEPS = ("bind-all (first)", "bind-all again (converged)", "check", "unbind-all")


# What pip writes for the `vfio-manager` console script (pyproject's [project.scripts]):
# users run that, not `python -m vfio_manager` (runpy and importlib.util are imports of its own).
LAUNCHER = """#!{python}
import sys
from vfio_manager.cli.main import main
if __name__ == "__main__":
    sys.exit(main())
"""


def write_launcher(folder: str) -> str:
    path = os.path.join(folder, "vfio-manager")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(LAUNCHER.format(python=sys.executable))
    os.chmod(path, 0o755)  # noqa: S103 - the guest's own throwaway RAM disk
    return path


def tool_steps(script: str, launcher: str, selection: list[str]) -> dict[str, dict[str, list[str]]]:
    vm = [launcher]
    return {
        "vfio-manage.sh": {
            STEPS[0]: [script, "bind", "--all"],
            STEPS[1]: [script, "bind", "--all"],
            STEPS[2]: [script, "check_bind", "--all"],
            STEPS[3]: [script, "unbind", "--all"],
        },
        "vfio-manager": {
            STEPS[0]: [*vm, "bind-all", *selection],
            STEPS[1]: [*vm, "bind-all", *selection],
            STEPS[2]: [*vm, "status", "--check", *selection],
            STEPS[3]: [*vm, "unbind-all", *selection],
        },
    }


def floors(env: dict[str, str], reps: int, counter: WriteCounter) -> dict[str, list[float]]:
    codes = {
        "python3 -c pass": "pass",
        "python3 -c 'import click'": "import click",
        "python3 -c 'import click, structlog'": "import click, structlog",
    }
    found: dict[str, list[float]] = {label: [] for label in codes}
    for _ in range(reps + 1):  # the first round warms the page cache
        for label, code in codes.items():
            found[label].append(timed([sys.executable, "-c", code], env, counter)["seconds"])
    return {label: times[1:] for label, times in found.items()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--script", required=True)
    parser.add_argument("--site", required=True, help="the project installed on the RAM disk")
    parser.add_argument("--vendor", default="0x8086")
    parser.add_argument("--class", dest="pci_class", default="0x020000")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if not _in_guest():
        print(
            "guest_steps.py runs only inside the e2e QEMU guest: it writes to /sys", file=sys.stderr
        )
        return 2
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = args.site
    os.makedirs("/host", exist_ok=True)
    if not os.path.ismount("/host"):  # the script runs `chroot /host modprobe vfio-pci`
        subprocess.run(["mount", "--bind", "/", "/host"], check=True)  # noqa: S607 - guest PATH
    subprocess.run(["modprobe", "vfio-pci"], check=True)  # noqa: S607 - guest PATH
    bdfs = selected(int(args.vendor, 16), int(args.pci_class, 16))
    boot = {bdf: _driver(bdf) for bdf in bdfs}
    selection = ["--vendor", args.vendor, "--class", args.pci_class]
    counter = WriteCounter()
    result: dict[str, Any] = {
        "kernel": os.uname().release,
        "selection": {"vendor": args.vendor, "class": args.pci_class, "functions": boot},
        "floors": floors(env, args.reps, counter),
        "runs": {tool: {step: [] for step in STEPS} for tool in ("vfio-manage.sh", "vfio-manager")},
    }
    steps = tool_steps(args.script, write_launcher(os.path.dirname(args.script)), selection)
    for rep in range(args.reps + 1):  # round 0 warms up; its figures are kept apart
        order = list(steps) if rep % 2 else list(reversed(steps))
        for tool in order:
            restore(boot)
            counter.take()
            for step, argv in steps[tool].items():
                outcome = timed(argv, env, counter)
                outcome["drivers"] = {bdf: _driver(bdf) for bdf in bdfs}
                if rep:
                    result["runs"][tool][step].append(outcome)
                else:
                    result.setdefault("warmup", {}).setdefault(tool, {})[step] = outcome
    restore(boot)
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=1)
    for tool, by_step in result["runs"].items():
        for step, outcomes in by_step.items():
            median = statistics.median(o["seconds"] for o in outcomes)
            writes = sorted({len(o["writes"]) for o in outcomes})
            print(f"{tool:15s} {step:28s} {median:7.3f} s  writes {writes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
