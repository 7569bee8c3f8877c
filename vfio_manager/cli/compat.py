"""``vfio-manage``: the drop-in for the RBLN NPU Operator's ``vfio-manage.sh``.

The operator's DaemonSet runs ``vfio-manage.sh bind --all``, its preStop hook ``cleanup
--all`` (older: ``unbind --all``), and the sandbox device plugin's init container loops on
``check_bind --all`` until it exits 0; admins' runbooks grep the script's lines. This
module gives that interface (commands, ``-a/--all``, ``-d/--device-id BDF``, exit codes 0, 1
and 2, the per-device lines on stdout) on top of the same pipeline as ``vfio-manager``: the
writes go through :func:`~vfio_manager.pipeline.transition.run_transition` (lock, journal, readiness
gate, refusals, verification, rollback), ``check_bind`` reads what ``status`` reads. Only
argv parsing and the wording of the lines live here.

Deliberate differences from the script (docs/cli.md lists them for users): a usage error
(unknown option, command or argument, a command without a target, a malformed BDF) exits 2
instead of printing the usage and exiting 0; ``unbind`` and ``cleanup`` return functions to
their native driver rather than leaving them driverless; one failing NPU does not stop the
others; a non-viable IOMMU group is refused; a BDF that does not exist exits 1 (the script
took it for "not an NPU" and exited 0); a host that is not ready exits 1, as the script's
failed ``modprobe`` did (``vfio-manager`` says 3).

Configuration comes from the environment ``vfio-manager`` reads (the script had no options
for it): ``VFIO_MANAGER_VENDOR``/``_CLASS``/``_DEVICE_ID`` select (default Rebellions NPUs),
``VFIO_MANAGER_SYSFS_ROOT``, ``VFIO_MANAGER_DEV_ROOT``, ``HOST_ROOT``,
``VFIO_MANAGER_STATE_DIR`` and ``VFIO_MANAGER_PROC_ROOT`` place the node. Without
``HOST_ROOT``, a host root mounted at ``/host`` (the script's ``chroot /host``) is used when
present. Logs (structlog) go to stderr; stdout carries only the script's kind of lines.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, TextIO

from vfio_manager.errors import ExitCode, UsageError, VfioManagerError
from vfio_manager.kernel.address import PciAddress
from vfio_manager.log import get_logger

if TYPE_CHECKING:
    from vfio_manager.pipeline.engine import Outcome
    from vfio_manager.pipeline.node import Node
    from vfio_manager.pipeline.plan import FunctionPlan
    from vfio_manager.pipeline.selection import Selector
    from vfio_manager.pipeline.transition import TransitionResult

log = get_logger("vfio_manager.cli.compat")

PROG = "vfio-manage"
COMMANDS = ("bind", "unbind", "check_bind", "cleanup", "help")
SCRIPT_HOST_ROOT = "/host"
"""Where the operator's pod mounts the host's / (the script runs ``chroot /host modprobe``)."""

USAGE = f"""\
Usage: {PROG} COMMAND [-a|--all] [-d|--device-id BDF]

Drop-in for the RBLN NPU Operator's vfio-manage.sh, run by vfio-manager's pipeline.

Commands:
  bind        move the NPUs to vfio-pci (loads the vfio modules first if needed)
  unbind      return the NPUs from vfio-pci to their native driver
  cleanup     the same as unbind; reports NPUs that did not rebind with WARNING lines
  check_bind  exit 0 when every NPU is on vfio-pci (read-only)
  help        print this text

Targets (one is required):
  -a, --all             every selected NPU
  -d, --device-id BDF   one function, e.g. 0000:3b:00.0 (wins over --all)

Selection and roots come from the environment: VFIO_MANAGER_VENDOR (default 0x1eff),
VFIO_MANAGER_CLASS (0x120000), VFIO_MANAGER_DEVICE_ID (all), VFIO_MANAGER_SYSFS_ROOT,
VFIO_MANAGER_DEV_ROOT, HOST_ROOT, VFIO_MANAGER_STATE_DIR.

Exit codes: 0 done (or nothing to do), 1 a device failed, was refused or is not on vfio-pci,
2 usage error.  See `vfio-manager --help` for the full command line.
"""

_ROOT_VARIABLES = {
    "sysfs_root": ("VFIO_MANAGER_SYSFS_ROOT", "/sys"),
    "dev_root": ("VFIO_MANAGER_DEV_ROOT", "/dev"),
    "host_root": ("HOST_ROOT", "/"),
    "state_dir": ("VFIO_MANAGER_STATE_DIR", "/run/vfio-manager"),
    "proc_root": ("VFIO_MANAGER_PROC_ROOT", "/proc"),
}
_WRITERS = ("process", "thread")


# -- argv ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Invocation:
    """What the command line asks for; ``device`` wins over ``all_devices``, as in the script."""

    command: str
    all_devices: bool = False
    device: Optional[PciAddress] = None


class _HelpAsked(Exception):
    """``help``, ``-h``/``--help`` or no argument at all: the usage on stdout, exit 0."""


def parse(argv: Sequence[str]) -> Invocation:
    """``COMMAND [OPTIONS]``; raises :class:`UsageError` (exit 2) or :class:`_HelpAsked`."""
    if not argv or argv[0] in ("-h", "--help"):
        raise _HelpAsked
    command = argv[0]
    all_devices, device = _parse_options(list(argv[1:]))
    if command == "help":
        raise _HelpAsked
    if command not in COMMANDS:
        raise UsageError(
            f"unknown command {command!r}",
            remedy=f"one of {', '.join(COMMANDS)}; see `{PROG} help`",
        )
    if device is None and not all_devices:
        raise UsageError(
            f"{command} needs a target",
            remedy="add -a/--all for every NPU or -d/--device-id BDF for one",
        )
    return Invocation(command, all_devices=all_devices, device=device)


def _parse_options(rest: list[str]) -> tuple[bool, Optional[PciAddress]]:
    """``-a``/``--all``, ``-d``/``--device-id`` BDF (also ``--device-id=BDF``), ``-h``, ``--``."""
    all_devices = False
    device: Optional[PciAddress] = None
    while rest:
        arg = rest.pop(0)
        if arg in ("-a", "--all"):
            all_devices = True
        elif arg in ("-d", "--device-id") or arg.startswith("--device-id="):
            if "=" in arg:
                value = arg.split("=", 1)[1]
            elif rest:
                value = rest.pop(0)
            else:
                raise UsageError(
                    f"{arg} needs a PCI address", remedy=f"e.g. `{PROG} bind {arg} 0000:3b:00.0`"
                )
            device = PciAddress.parse(value)
        elif arg in ("-h", "--help"):
            raise _HelpAsked
        elif arg.startswith("-") and arg != "--":
            raise UsageError(f"unknown option {arg!r}", remedy=f"see `{PROG} help`")
        elif arg != "--" or rest:
            extra = rest[0] if arg == "--" else arg
            raise UsageError(f"unexpected argument {extra!r}", remedy=f"see `{PROG} help`")
    return all_devices, device


# -- environment -----------------------------------------------------------------------------
def node_from_env(
    environ: Mapping[str, str], *, host_mounted: Callable[[str], bool] = os.path.isdir
) -> Node:
    """The node as ``vfio-manager`` builds it from the same variables (its option defaults
    otherwise). A variable set to "" is refused, as ``vfio-manager`` refuses it: an emptied
    variable must not point the run at the real /sys. ``host_mounted``: whether a directory
    exists (the ``/host`` fallback; the tests pass their own)."""
    from vfio_manager.pipeline.node import Node

    roots: dict[str, str] = {}
    for field, (variable, default) in _ROOT_VARIABLES.items():
        value = environ.get(variable)
        if value == "" or (value is not None and "\0" in value):
            raise UsageError(
                f"the environment variable {variable} is set but empty or not a path",
                remedy=f"unset {variable} to use the default ({default}), or set it to a path",
            )
        roots[field] = value if value is not None else default
    if "HOST_ROOT" not in environ and host_mounted(
        os.path.join(SCRIPT_HOST_ROOT, "lib", "modules")
    ):
        roots["host_root"] = SCRIPT_HOST_ROOT
    writer = environ.get("VFIO_MANAGER_WRITER") or "process"
    if writer not in _WRITERS:
        raise UsageError(
            f"VFIO_MANAGER_WRITER={writer!r} is not one of {', '.join(_WRITERS)}",
            remedy="unset VFIO_MANAGER_WRITER",
        )
    return Node(
        sysfs_root=roots["sysfs_root"],
        dev_root=roots["dev_root"],
        host_root=roots["host_root"],
        proc_root=roots["proc_root"],
        state_dir=roots["state_dir"],
        writer=writer,
    )


def selector_from_env(environ: Mapping[str, str]) -> Selector:
    """``VFIO_MANAGER_VENDOR``/``_CLASS``/``_DEVICE_ID`` (comma-separated), as ``vfio-manager``
    reads them; unset or empty means the default (Rebellions NPUs, every device ID)."""
    from vfio_manager.pipeline.selection import Selector

    vendor = environ.get("VFIO_MANAGER_VENDOR") or "0x1eff"
    pci_class = environ.get("VFIO_MANAGER_CLASS") or "0x120000"
    ids = environ.get("VFIO_MANAGER_DEVICE_ID") or ""
    device_ids = tuple(part.strip() for part in ids.split(",") if part.strip())
    return Selector.from_options(vendor, pci_class, device_ids)


# -- commands --------------------------------------------------------------------------------
class _Lines:
    """stdout of one run: the script's kind of lines."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()


def _detail(outcome: Outcome) -> str:
    text = outcome.reason or outcome.status.value
    if outcome.restored_to:
        text += f" (restored to {outcome.restored_to})"
    if outcome.remedy:
        text += f"; remedy: {outcome.remedy}"
    return text


def _pairs(result: TransitionResult) -> list[tuple[FunctionPlan, Outcome]]:
    """Each plan entry with its outcome (the report lists them in the plan's order)."""
    if result.report is None:
        return []
    return list(zip(result.plan.entries, result.report.outcomes))


def _transition(
    node: Node, selector: Selector, invocation: Invocation, *, to_vfio: bool
) -> Optional[TransitionResult]:
    """Run the writes as ``vfio-manager bind``/``bind-all`` (or ``unbind``/``unbind-all``)
    do; ``None`` when ``-d`` names a function outside the selection (the script's "not an
    NPU", exit 0: nothing is read further, nothing written)."""
    from vfio_manager.errors import NotSelectedError
    from vfio_manager.kernel.drivers import Direction
    from vfio_manager.pipeline.transition import TransitionRequest, run_transition

    request = TransitionRequest(
        selector,
        Direction.TO_VFIO if to_vfio else Direction.TO_HOST,
        named=(invocation.device,) if invocation.device is not None else (),
        admin=True,
    )
    try:
        return run_transition(node, request)
    except NotSelectedError as err:
        log.warning("not selected", bdf=err.bdf, reason=err.message)
        return None


def _bind(node: Node, selector: Selector, invocation: Invocation, out: _Lines) -> int:
    from vfio_manager.kernel.drivers import is_vfio_driver
    from vfio_manager.pipeline.engine import Status

    result = _transition(node, selector, invocation, to_vfio=True)
    if result is None:
        out(f"device {invocation.device} is not a npu!")
        return 0
    for entry, outcome in _pairs(result):
        bdf, before = entry.function.bdf, entry.function.driver
        if outcome.status in (Status.CHANGED, Status.CONVERGED) and is_vfio_driver(before):
            out(f"device {bdf} already bound to {before}")
        elif outcome.status is Status.CHANGED:
            if before is not None:
                out(f"unbinding device {bdf} from driver {before}")
            out(f"binding device {bdf}")
        elif outcome.status is Status.CONVERGED:  # a settled journal record: now on vfio
            out(f"device {bdf} already bound to {outcome.driver}")
        else:
            out(f"ERROR: device {bdf} was not bound to vfio-pci: {_detail(outcome)}")
    return _exit_code(result)


def _unbind(node: Node, selector: Selector, invocation: Invocation, out: _Lines) -> int:
    from vfio_manager.pipeline.engine import Status

    result = _transition(node, selector, invocation, to_vfio=False)
    if result is None:
        return 0  # the script says nothing about a non-NPU here either
    for entry, outcome in _pairs(result):
        bdf, before = entry.function.bdf, entry.function.driver
        out(f"unbinding device {bdf}")
        if outcome.status is Status.CHANGED:
            if before is not None:
                out(f"unbinding device {bdf} from driver {before}")
            if outcome.driver is None:
                out(f"device {bdf} left with no driver (it had none before vfio-pci)")
            else:
                out(f"device {bdf} returned to driver {outcome.driver}")
        elif outcome.status is Status.CONVERGED:
            out(f"device {bdf} is not bound to vfio-pci; left on {outcome.driver or 'no driver'}")
        else:
            out(f"ERROR: device {bdf} was not returned to the host: {_detail(outcome)}")
    return _exit_code(result)


def _cleanup(node: Node, selector: Selector, invocation: Invocation, out: _Lines) -> int:
    from vfio_manager.kernel.drivers import STAY_UNBOUND
    from vfio_manager.pipeline.engine import Status

    result = _transition(node, selector, invocation, to_vfio=False)
    if result is None:
        return 0
    for entry, outcome in _pairs(result):
        bdf = entry.function.bdf
        if outcome.status is Status.CHANGED:
            if outcome.driver is None:
                out(f"device {bdf} released from vfio-pci (it had no driver before)")
            else:
                out(f"device {bdf} rebound to {outcome.driver}")
        elif outcome.status is not Status.CONVERGED:
            native = entry.target_driver
            target = native if native not in (None, STAY_UNBOUND) else "its native driver"
            out(f"WARNING: device {bdf} did not rebind to {target}: {_detail(outcome)}")
    return _exit_code(result)


def _check_bind(node: Node, selector: Selector, invocation: Invocation, out: _Lines) -> int:
    from vfio_manager.kernel.drivers import is_vfio_driver

    if invocation.device is not None:
        from vfio_manager.errors import NotSelectedError
        from vfio_manager.kernel.inventory import read_topology
        from vfio_manager.pipeline.selection import named_functions

        topology = read_topology(node.sysfs())
        try:
            (function,) = named_functions(topology, selector, (invocation.device,))
        except NotSelectedError:
            out(f"device {invocation.device} is not a Rebellions NPU!")
            return 0
        drivers = [(function.bdf, function.driver)]
    else:
        from vfio_manager.pipeline.queries import status

        drivers = [(r["bdf"], r["driver"]) for r in status(node, selector).records]
        if not drivers:
            out("No Rebellions NPU devices found.")
            return 0
    for bdf, driver in drivers:
        if is_vfio_driver(driver):
            out(f"Device {bdf} is bound to {driver}")
        else:
            out(f"Device {bdf} is not bound to vfio-pci")
    if not all(is_vfio_driver(driver) for _bdf, driver in drivers):
        return 1
    if invocation.device is None:
        out(f"All {len(drivers)} Rebellions NPU devices are bound to VFIO-PCI.")
    return 0


def _exit_code(result: TransitionResult) -> int:
    """The run's exit code; its notes (modules loaded, journal records settled) are logged,
    as ``vfio-manager`` prints them, and a journal record left unupdated as an error."""
    for note in result.notes:
        log.info("note", note=note)
    for problem in result.journal_errors:
        log.error("journal not updated", reason=problem)
    return int(result.exit_code)


_HANDLERS: dict[str, Callable[[Node, Selector, Invocation, _Lines], int]] = {
    "bind": _bind,
    "unbind": _unbind,
    "cleanup": _cleanup,
    "check_bind": _check_bind,
}


# -- entry -----------------------------------------------------------------------------------
def run(
    argv: Sequence[str],
    environ: Mapping[str, str],
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    """One invocation: parse, build the node and the selection, run, return the exit code.

    Errors become a message and a remedy on stderr; a host that is not ready exits 1 (the
    script's three codes are 0, 1 and 2).
    """
    from vfio_manager import log as logsetup

    try:
        invocation = parse(argv)
    except _HelpAsked:
        stdout.write(USAGE)
        return 0
    except UsageError as err:
        _report(err, stderr)
        stderr.write(f"Usage: {PROG} COMMAND [-a|--all] [-d|--device-id BDF]; see `{PROG} help`\n")
        return int(ExitCode.USAGE)
    logsetup.configure("auto", 0, stream=stderr)
    try:
        node = node_from_env(environ)
        selector = selector_from_env(environ)
        return _HANDLERS[invocation.command](node, selector, invocation, _Lines(stdout))
    except VfioManagerError as err:
        _report(err, stderr)
        code = err.exit_code
        return int(ExitCode.FAILED if code is ExitCode.HOST_NOT_READY else code)


def _report(err: VfioManagerError, stderr: TextIO) -> None:
    stderr.write(f"{PROG}: error: {err.message}\n")
    if err.remedy:
        stderr.write(f"  remedy: {err.remedy}\n")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console-script entry point (``vfio-manage``, linked as /bin/vfio-manage.sh)."""
    args = list(argv) if argv is not None else sys.argv[1:]
    sys.exit(run(args, os.environ, sys.stdout, sys.stderr))
