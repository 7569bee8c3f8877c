"""``vfio-manage``, the drop-in for the RBLN NPU Operator's ``vfio-manage.sh``: its command
line, exit codes (0, 1, 2) and stdout lines over ``vfio-manager``'s pipeline. docs/cli.md
lists where it differs from the script on purpose."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, Optional

import click

from vfio_manager.errors import ExitCode, UsageError, VfioManagerError
from vfio_manager.kernel.address import PciAddress
from vfio_manager.kernel.drivers import STAY_UNBOUND, Direction, is_vfio_driver
from vfio_manager.log import get_logger

if TYPE_CHECKING:
    from vfio_manager.pipeline.engine import Outcome
    from vfio_manager.pipeline.node import Node
    from vfio_manager.pipeline.plan import FunctionPlan
    from vfio_manager.pipeline.selection import Selector

    _Handler = Callable[[Node, Selector, Optional[PciAddress]], int]

log = get_logger("vfio_manager.cli.compat")

PROG = "vfio-manage"
SCRIPT_HOST_ROOT = "/host"
"""Where the operator's pod mounts the host's / (the script runs ``chroot /host modprobe``)."""

SYNOPSIS = f"Usage: {PROG} COMMAND [-a|--all] [-d|--device-id BDF]"
USAGE = f"""\
{SYNOPSIS}

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
VFIO_MANAGER_CLASS (0x120000), VFIO_MANAGER_DEVICE_ID (all), VFIO_MANAGER_PRODUCT,
VFIO_MANAGER_BDF, VFIO_MANAGER_NUMA_NODE, VFIO_MANAGER_PER_NUMA_NODE, VFIO_MANAGER_EXCLUDE
(never touched), VFIO_MANAGER_SYSFS_ROOT, VFIO_MANAGER_DEV_ROOT, HOST_ROOT,
VFIO_MANAGER_STATE_DIR.

Exit codes: 0 done (or nothing to do), 1 a device failed, was refused or is not on vfio-pci,
2 usage error.  See `vfio-manager --help` for the full command line.
"""


def _fail(err: VfioManagerError, *, usage: bool = False) -> NoReturn:
    """Report as the script's exit codes allow: a host that is not ready exits 1, not 3."""
    click.echo(f"{PROG}: error: {err.message}", err=True)
    if err.remedy:
        click.echo(f"  remedy: {err.remedy}", err=True)
    if usage:
        click.echo(f"{SYNOPSIS}; see `{PROG} help`", err=True)
    sys.exit(int(ExitCode.FAILED if err.exit_code is ExitCode.HOST_NOT_READY else err.exit_code))


class _Script(click.Command):
    """Click's parse errors in the script's words."""

    def make_context(
        self, info_name: Optional[str], args: list[str], *rest: Any, **extra: Any
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, *rest, **extra)
        except click.UsageError as err:
            name, remedy = getattr(err, "option_name", None), f"see `{PROG} help`"
            if isinstance(err, click.NoSuchOption):
                message = f"unknown option {name!r}"
            elif name in ("-d", "--device-id"):  # given without its BDF
                message = f"{name} needs a PCI address"
                remedy = f"e.g. `{PROG} bind {name} 0000:3b:00.0`"
            else:
                message = err.format_message()
        _fail(UsageError(message, remedy=remedy), usage=True)


@click.command(PROG, cls=_Script, add_help_option=False)
@click.argument("words", nargs=-1)
@click.option("-a", "--all", "all_devices", is_flag=True)
@click.option("-d", "--device-id", "device")
@click.option("-h", "--help", "help_asked", is_flag=True)
def cli(words: tuple[str, ...], all_devices: bool, device: Optional[str], help_asked: bool) -> None:
    """``COMMAND`` and its options in any order; ``-d`` wins over ``--all``, as in the script."""
    from vfio_manager import log as logsetup

    if not words and not (all_devices or device):
        words = ("help",)
    command = words[0] if words else ""
    try:
        if words[1:]:
            raise UsageError(f"unexpected argument {words[1]!r}", remedy=f"see `{PROG} help`")
        bdf = PciAddress.parse(device) if device is not None else None
        if help_asked or command == "help":
            click.echo(USAGE, nl=False)
            return
        if command not in _COMMANDS:
            raise UsageError(
                f"unknown command {command!r}",
                remedy=f"one of {', '.join([*_COMMANDS, 'help'])}; see `{PROG} help`",
            )
        if bdf is None and not all_devices:
            raise UsageError(
                f"{command} needs a target",
                remedy="add -a/--all for every NPU or -d/--device-id BDF for one",
            )
    except UsageError as err:
        _fail(err, usage=True)
    logsetup.configure("auto", 0)
    try:
        code = _COMMANDS[command](*node_and_selector(), bdf)
    except VfioManagerError as err:
        _fail(err)
    sys.exit(code)


def node_and_selector(host_mounted: Callable[[str], bool] = os.path.isdir) -> tuple[Node, Selector]:
    """``vfio-manager``'s node and selection from the environment; without ``HOST_ROOT``, the
    host's / mounted at /host (the script's ``chroot /host``) when it is there."""
    from vfio_manager.cli.main import node_from_environment

    if host_mounted(os.path.join(SCRIPT_HOST_ROOT, "lib", "modules")):
        return node_from_environment(host_root=SCRIPT_HOST_ROOT)
    return node_from_environment()


# -- commands --------------------------------------------------------------------------------
def _detail(outcome: Outcome) -> str:
    text = outcome.reason or outcome.result.value
    if outcome.restored_to:
        text += f" (restored to {outcome.restored_to})"
    if outcome.remedy:
        text += f"; remedy: {outcome.remedy}"
    return text


def _bind_lines(entry: FunctionPlan, outcome: Outcome) -> list[str]:
    from vfio_manager.pipeline.engine import Result

    bdf, before = entry.function.bdf, entry.function.driver
    if outcome.result in (Result.CHANGED, Result.CONVERGED) and is_vfio_driver(before):
        return [f"device {bdf} already bound to {before}"]
    if outcome.result is Result.CHANGED:
        unbound = [] if before is None else [f"unbinding device {bdf} from driver {before}"]
        return [*unbound, f"binding device {bdf}"]
    if outcome.result is Result.CONVERGED:  # a settled journal record: now on vfio
        return [f"device {bdf} already bound to {outcome.driver}"]
    return [f"ERROR: device {bdf} was not bound to vfio-pci: {_detail(outcome)}"]


def _unbind_lines(entry: FunctionPlan, outcome: Outcome) -> list[str]:
    from vfio_manager.pipeline.engine import Result

    bdf, before = entry.function.bdf, entry.function.driver
    lines = [f"unbinding device {bdf}"]
    if outcome.result is Result.CHANGED:
        if before is not None:
            lines.append(f"unbinding device {bdf} from driver {before}")
        if outcome.driver is None:
            return [*lines, f"device {bdf} left with no driver (it had none before vfio-pci)"]
        return [*lines, f"device {bdf} returned to driver {outcome.driver}"]
    if outcome.result is Result.CONVERGED:
        left_on = outcome.driver or "no driver"
        return [*lines, f"device {bdf} is not bound to vfio-pci; left on {left_on}"]
    return [*lines, f"ERROR: device {bdf} was not returned to the host: {_detail(outcome)}"]


def _cleanup_lines(entry: FunctionPlan, outcome: Outcome) -> list[str]:
    from vfio_manager.pipeline.engine import Result

    bdf = entry.function.bdf
    if outcome.result is Result.CHANGED:
        if outcome.driver is None:
            return [f"device {bdf} released from vfio-pci (it had no driver before)"]
        return [f"device {bdf} rebound to {outcome.driver}"]
    if outcome.result is Result.CONVERGED:
        return []
    native = entry.target_driver
    target = native if native not in (None, STAY_UNBOUND) else "its native driver"
    return [f"WARNING: device {bdf} did not rebind to {target}: {_detail(outcome)}"]


def _transition(
    to_vfio: bool, lines: Callable[[FunctionPlan, Outcome], list[str]], not_selected: str = ""
) -> _Handler:
    """A command that writes as ``vfio-manager bind``/``bind-all`` (or ``unbind``) do. A
    ``-d`` outside the selection is the script's "not an NPU": exit 0, nothing written."""

    def run(node: Node, selector: Selector, bdf: Optional[PciAddress]) -> int:
        from vfio_manager.errors import NotSelectedError
        from vfio_manager.pipeline.engine import Interruption
        from vfio_manager.pipeline.transition import TransitionRequest, run_transition

        direction = Direction.TO_VFIO if to_vfio else Direction.TO_HOST
        named = () if bdf is None else (bdf,)
        try:
            request = TransitionRequest(selector, direction, named=named, admin=True)
            with Interruption.caught() as interruption:
                result = run_transition(node, request, interruption=interruption)
        except NotSelectedError as err:
            log.warning("not selected", bdf=err.bdf, reason=err.message)
            if not_selected:
                click.echo(not_selected.format(bdf))
            return 0
        if result.report is not None:
            for entry, outcome in zip(result.plan.entries, result.report.outcomes):
                for line in lines(entry, outcome):
                    click.echo(line)
        for note in result.notes:  # modules loaded, journal records settled
            log.info("note", note=note)
        for problem in result.journal_errors:
            log.error("journal not updated", reason=problem)
        return int(result.exit_code)

    return run


def _check_bind(node: Node, selector: Selector, bdf: Optional[PciAddress]) -> int:
    if bdf is not None:
        from vfio_manager.errors import NotSelectedError
        from vfio_manager.kernel.inventory import read_topology
        from vfio_manager.pipeline.selection import named_functions

        try:
            (function,) = named_functions(read_topology(node.sysfs()), selector, (bdf,))
        except NotSelectedError:
            click.echo(f"device {bdf} is not a Rebellions NPU!")
            return 0
        drivers = [(function.bdf, function.driver)]
    else:
        from vfio_manager.pipeline.queries import status

        drivers = [(r["bdf"], r["driver"]) for r in status(node, selector).records]
        if not drivers:
            click.echo("No Rebellions NPU devices found.")
            return 0
    for found, driver in drivers:
        where = f"is bound to {driver}" if is_vfio_driver(driver) else "is not bound to vfio-pci"
        click.echo(f"Device {found} {where}")
    if not all(is_vfio_driver(driver) for _found, driver in drivers):
        return 1
    if bdf is None:
        click.echo(f"All {len(drivers)} Rebellions NPU devices are bound to VFIO-PCI.")
    return 0


_COMMANDS: dict[str, _Handler] = {
    "bind": _transition(True, _bind_lines, "device {} is not a npu!"),
    "unbind": _transition(False, _unbind_lines),  # the script says nothing of a non-NPU here
    "check_bind": _check_bind,
    "cleanup": _transition(False, _cleanup_lines),
}


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console-script entry point (``vfio-manage``, linked as /bin/vfio-manage.sh)."""
    cli.main(args=list(argv) if argv is not None else None, prog_name=PROG)
