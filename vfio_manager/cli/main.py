"""The click command line; the only module that knows about click, argv and exit codes.

Options become a :class:`~vfio_manager.pipeline.node.Node` (where the node's files are) and
a request; the pipeline returns a result; :func:`_finish` prints it and maps it to the exit
code. Errors below this layer are :class:`~vfio_manager.errors.VfioManagerError` values;
here they become a message, a remedy and an exit code on stderr, never a traceback. With
``--json``, every error is also one JSON document on stdout (``{"error": {...}}``), click's
own usage errors included (:class:`_Cli`), so stdout is always exactly one document.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Optional, TypeVar

import click

from vfio_manager import __version__
from vfio_manager.errors import ExitCode, UsageError, VfioManagerError
from vfio_manager.kernel.address import PciAddress

if TYPE_CHECKING:
    from vfio_manager.pipeline.node import Node

F = TypeVar("F", bound=Callable[..., Any])

EXIT_CODES_HELP = """\b
Exit codes:
  0  success: every selected function is where it was asked to be
  1  a function failed, was refused, or is not converged
  2  usage error (unknown option, malformed BDF or ID); nothing was read or written
  3  the host is not ready (IOMMU off, vfio missing); nothing was written
"""


class _BadValue(click.BadParameter):
    """A bad option or argument value, with its remedy kept apart for the JSON document."""

    def __init__(
        self,
        message: str,
        remedy: Optional[str],
        param: Optional[click.Parameter] = None,
        ctx: Optional[click.Context] = None,
    ) -> None:
        super().__init__(f"{message}; {remedy}" if remedy else message, ctx=ctx, param=param)
        self.remedy = remedy


class _BadSelection(click.UsageError):
    """A --vendor/--class/--device-id value the selection cannot use (exit 2)."""

    def __init__(self, err: UsageError, ctx: Optional[click.Context] = None) -> None:
        super().__init__(f"{err.message}; {err.remedy}" if err.remedy else err.message, ctx)
        self.remedy = err.remedy


class _BdfType(click.ParamType):  # type: ignore[type-arg]
    name = "BDF"

    def convert(
        self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]
    ) -> PciAddress:
        if isinstance(value, PciAddress):
            return value
        try:
            return PciAddress.parse(str(value))
        except UsageError as err:
            raise _BadValue(err.message, err.remedy, param, ctx) from err


BDF = _BdfType()


class _Location(click.ParamType):  # type: ignore[type-arg]
    """A root or directory option: an empty path is refused, never read as the default.

    (An empty environment variable never reaches here: click treats it as unset, which
    :func:`_refuse_empty_variables` refuses.)
    """

    name = "PATH"

    def convert(
        self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]
    ) -> str:
        text = str(value)
        if not text or "\0" in text:
            default = param.default if param is not None else None
            raise _BadValue(
                f"{text!r} is not a path",
                f"give a path (default {default})" if default else "give a path",
                param,
                ctx,
            )
        return text


LOCATION = _Location()


def _refuse_empty_variables(ctx: click.Context) -> None:
    """An option's environment variable set to "" is refused (exit 2), as an empty option
    is: click would take it for unset and use the default (/sys, /run/vfio-manager), so a
    variable emptied by mistake would point the run at the real node."""
    from click.core import ParameterSource

    for param in ctx.command.params:
        envvar = getattr(param, "envvar", None)
        if not isinstance(envvar, str) or param.name is None:
            continue
        if ctx.get_parameter_source(param.name) is not ParameterSource.DEFAULT:
            continue
        if os.environ.get(envvar) == "":
            raise _BadValue(
                f"the environment variable {envvar} is set but empty",
                f"unset {envvar} to use the default ({param.default}), or set it to a value",
                param,
                ctx,
            )


class _HexList(click.ParamType):  # type: ignore[type-arg]
    """A hex ID of a repeatable option; from the environment, a comma-separated list."""

    name = "HEX"
    envvar_list_splitter = ","

    def convert(
        self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]
    ) -> str:
        return str(value).strip()


class _BdfList(_BdfType):
    """A BDF of a repeatable option; from the environment, a comma-separated list."""

    envvar_list_splitter = ","


HEX_LIST = _HexList()
BDF_LIST = _BdfList()


class _Seconds(click.ParamType):  # type: ignore[type-arg]
    """A finite number of seconds within bounds: inf and nan would disable a deadline."""

    name = "SECONDS"

    def __init__(self, minimum: float, maximum: float = 86400.0) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def convert(
        self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]
    ) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or not self.minimum <= seconds <= self.maximum:
            self.fail(
                f"{value!r} is not between {self.minimum:g} and {self.maximum:g} seconds",
                param,
                ctx,
            )
        return seconds


def _selection_options(func: F) -> F:
    options = [
        click.option(
            "--vendor",
            envvar="VFIO_MANAGER_VENDOR",
            default="0x1eff",
            show_default=True,
            metavar="HEX",
            help="PCI vendor ID to select (env VFIO_MANAGER_VENDOR).",
        ),
        click.option(
            "--class",
            "pci_class",
            envvar="VFIO_MANAGER_CLASS",
            default="0x120000",
            show_default=True,
            metavar="HEX",
            help="PCI class to select (0x1200 ignores the programming interface; env "
            "VFIO_MANAGER_CLASS).",
        ),
        click.option(
            "--device-id",
            "device_ids",
            envvar="VFIO_MANAGER_DEVICE_ID",
            type=HEX_LIST,
            multiple=True,
            metavar="HEX",
            help="PCI device ID to select; repeatable. Default: every device ID (env "
            "VFIO_MANAGER_DEVICE_ID, comma-separated).",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _load_modules_option(default: bool) -> Callable[[F], F]:
    if default:
        help_text = (
            "Load the missing vfio modules with the host's modprobe before binding "
            "(default); --no-load-modules refuses instead."
        )
    else:
        help_text = "Load the missing vfio modules with the host's modprobe, then check again."
    return click.option(
        "--load-modules/--no-load-modules", default=default, show_default=True, help=help_text
    )


def _selector(vendor: str, pci_class: str, device_ids: Sequence[str]) -> Any:
    from vfio_manager.pipeline.selection import Selector

    try:
        return Selector.from_options(vendor, pci_class, tuple(device_ids))
    except UsageError as err:
        raise _BadSelection(err, click.get_current_context(silent=True)) from err


def _report_error(err: VfioManagerError) -> None:
    click.echo(f"vfio-manager: error: {err.message}", err=True)
    if err.remedy:
        click.echo(f"  remedy: {err.remedy}", err=True)


def _error_details(err: VfioManagerError) -> dict[str, Any]:
    """What the JSON error document adds for some errors: the failing checks, the holder."""
    from vfio_manager.host.preflight import PreflightFailed
    from vfio_manager.safety.lock import LockTimeoutError

    details: dict[str, Any] = {}
    if err.bdf is not None:
        details["bdf"] = err.bdf
    if isinstance(err, PreflightFailed):
        details["checks"] = [check.to_json() for check in err.failing]
    if isinstance(err, LockTimeoutError):
        holder = err.holder
        details["holder"] = (
            None
            if holder is None
            else {
                "pid": holder.pid,
                "command": holder.command,
                "running": holder.running,
                "state": holder.state,
            }
        )
    return details


def _handles_errors(func: F) -> F:
    """Turn a VfioManagerError into its message, remedy and exit code (and, with
    ``--json``, the error document on stdout)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except VfioManagerError as err:
            if kwargs.get("as_json"):
                from vfio_manager.cli import render

                for line in render.error_json(
                    int(err.exit_code), err.message, err.remedy, _error_details(err)
                ):
                    click.echo(line)
            _report_error(err)
            sys.exit(int(err.exit_code))

    return wrapper  # type: ignore[return-value]


class _JsonUsageError(click.ClickException):
    """Click's own error (a usage error, a bad value) when ``--json`` was asked for: the
    error document on stdout, click's usual message (usage and error) on stderr."""

    def __init__(self, original: click.ClickException, remedy: str) -> None:
        message = original.format_message()
        if message.endswith(f"; {remedy}"):  # our own values carry their remedy apart
            message = message[: -len(remedy) - 2]
        super().__init__(message)
        self.original = original
        setattr(self, "exit_code", original.exit_code)  # noqa: B010 - a ClassVar in click
        self.remedy = remedy

    def show(self, file: Any = None) -> None:
        from vfio_manager.cli import render

        for line in render.error_json(self.exit_code, self.message, self.remedy):
            click.echo(line)
        self.original.show(file)


def _wants_json(args: Sequence[str]) -> bool:
    """``--json`` among the arguments (before a ``--``): every command has the flag, and
    no option takes a value that could be the word ``--json``."""
    for arg in args:
        if arg == "--":
            return False
        if arg == "--json":
            return True
    return False


def _remedy_for(err: click.ClickException) -> str:
    remedy = getattr(err, "remedy", None)
    if isinstance(remedy, str) and remedy:
        return remedy
    ctx = getattr(err, "ctx", None)
    where = ctx.command_path if isinstance(ctx, click.Context) else "vfio-manager"
    return f"see `{where} --help`"


class _Cli(click.Group):
    """The command group; with ``--json``, click's errors become the JSON error document."""

    def make_context(
        self,
        info_name: Optional[str],
        args: list[str],
        parent: Optional[click.Context] = None,
        **extra: Any,
    ) -> click.Context:
        json_errors = _wants_json(args)
        try:
            ctx = super().make_context(info_name, args, parent, **extra)
        except click.ClickException as err:
            raise self._as_json(err, json_errors) from err
        ctx.meta["vfio_manager.json_errors"] = json_errors
        return ctx

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as err:
            raise self._as_json(err, bool(ctx.meta.get("vfio_manager.json_errors"))) from err

    @staticmethod
    def _as_json(err: click.ClickException, json_errors: bool) -> click.ClickException:
        if not json_errors or isinstance(err, _JsonUsageError):
            return err
        return _JsonUsageError(err, _remedy_for(err))


@click.group(
    cls=_Cli, epilog=EXIT_CODES_HELP, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.version_option(__version__, prog_name="vfio-manager")
@click.option(
    "--sysfs-root",
    envvar="VFIO_MANAGER_SYSFS_ROOT",
    type=LOCATION,
    default="/sys",
    show_default=True,
    help="Where sysfs is mounted (env VFIO_MANAGER_SYSFS_ROOT).",
)
@click.option(
    "--dev-root",
    envvar="VFIO_MANAGER_DEV_ROOT",
    type=LOCATION,
    default="/dev",
    show_default=True,
    help="Where the host's /dev is mounted (env VFIO_MANAGER_DEV_ROOT).",
)
@click.option(
    "--host-root",
    envvar="HOST_ROOT",
    type=LOCATION,
    default="/",
    show_default=True,
    help="The host's root filesystem, for /proc/cmdline and /lib/modules (env HOST_ROOT).",
)
@click.option(
    "--timeout",
    type=_Seconds(0.1),
    default=30.0,
    show_default=True,
    help="Deadline in seconds for each function's writes (an unbind can hang while a process "
    "holds the device) and for its /dev/vfio node to appear.",
)
@click.option(
    "--state-dir",
    envvar="VFIO_MANAGER_STATE_DIR",
    type=LOCATION,
    default="/run/vfio-manager",
    show_default=True,
    help="Lock and journal directory (env VFIO_MANAGER_STATE_DIR); in Kubernetes a hostPath, "
    "so the DaemonSet pod and its preStop hook share it.",
)
@click.option(
    "--lock-timeout",
    type=_Seconds(0.0),
    default=60.0,
    show_default=True,
    help="Seconds a writing command waits for another vfio-manager run to finish.",
)
@click.option(
    "--parallel",
    envvar="VFIO_MANAGER_PARALLEL",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="IOMMU groups moved side by side (a native driver's probe can take seconds); "
    "1 moves one function after another.",
)
@click.option(
    "--proc-root",
    envvar="VFIO_MANAGER_PROC_ROOT",
    type=LOCATION,
    default="/proc",
    show_default=True,
    hidden=True,
    help="Where the host's /proc is (processes holding a device, mounts, routes).",
)
@click.option(
    "--writer",
    envvar="VFIO_MANAGER_WRITER",
    type=click.Choice(["process", "thread"]),
    default="process",
    hidden=True,
    help="How sysfs writes are made: from a child process (a stuck write cannot keep the "
    "command alive) or a thread (the tests' in-memory fake kernel).",
)
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "console"]),
    default="auto",
    show_default=True,
    help="Log format on stderr; auto is JSON unless stderr is a terminal.",
)
@click.option("-v", "--verbose", count=True, help="More log detail (every sysfs write).")
@click.option("-q", "--quiet", is_flag=True, help="Log warnings and errors only.")
@click.pass_context
def cli(
    ctx: click.Context,
    sysfs_root: str,
    dev_root: str,
    host_root: str,
    timeout: float,
    state_dir: str,
    lock_timeout: float,
    parallel: int,
    proc_root: str,
    writer: str,
    log_format: str,
    verbose: int,
    quiet: bool,
) -> None:
    """Move Rebellions NPU functions between their native driver and vfio-pci.

    Functions are selected by vendor, class and device ID (default: Rebellions NPUs,
    vendor 0x1eff, class 0x120000); nothing outside the selection is ever touched.
    """
    from vfio_manager import log as logsetup
    from vfio_manager.pipeline.node import Node

    _refuse_empty_variables(ctx)
    logsetup.configure(log_format, -1 if quiet else verbose)
    ctx.obj = Node(
        sysfs_root=sysfs_root,
        dev_root=dev_root,
        host_root=host_root,
        proc_root=proc_root,
        state_dir=state_dir,
        timeout=timeout,
        lock_timeout=lock_timeout,
        parallel=parallel,
        writer=writer,
    )


def _finish(lines: Sequence[str], code: ExitCode) -> None:
    """Print a command's result and exit with its code: the one place results become both."""
    if lines:  # one write: click.echo flushes each call, 18,000 flushes for a big plan
        click.echo("\n".join(lines))
    if code != ExitCode.OK:
        sys.exit(int(code))


# -- status --------------------------------------------------------------------------------
@cli.command(epilog=EXIT_CODES_HELP)
@_selection_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--check", is_flag=True, help="Exit 0 only when every selected function is on vfio-pci."
)
@click.option(
    "--wait",
    type=_Seconds(0.0),
    default=None,
    metavar="SECONDS",
    help="With --check: wait up to SECONDS for every selected function to be on vfio-pci "
    "(woken by kernel uevents, re-read every 5 s at least); exit 1 if time runs out.",
)
@click.pass_obj
@_handles_errors
def status(
    node: Node,
    vendor: str,
    pci_class: str,
    device_ids: tuple[str, ...],
    as_json: bool,
    check: bool,
    wait: Optional[float],
) -> None:
    """Show the selected functions: driver, override, IOMMU group and its viability.

    Read-only: works anywhere, as any user that can read sysfs.
    """
    from vfio_manager.cli import render
    from vfio_manager.pipeline.queries import status as read_status

    selector = _selector(vendor, pci_class, device_ids)
    if wait is not None:
        if not check:
            raise click.UsageError("--wait needs --check (it waits for what --check checks)")
        _wait_on_vfio(node, selector, wait)
    result = read_status(node, selector)
    intents = _read_intents(node)
    lines = (
        render.status_json(result, intents)
        if as_json
        else render.status_text(result) + render.intent_lines(intents, result)
    )
    _finish(lines, ExitCode.FAILED if check and not result.all_on_vfio else ExitCode.OK)


def _wait_on_vfio(node: Node, selector: Any, seconds: float) -> None:
    from vfio_manager.daemon.waitfor import wait_with_uevents
    from vfio_manager.pipeline.queries import status as read_status

    wait_with_uevents(lambda: read_status(node, selector).all_on_vfio, timeout=seconds)


def _read_intents(node: Node) -> dict[str, Any]:
    """The admin's intents (read-only; an unreadable state directory shows none)."""
    from vfio_manager.safety.intents import intents_recorded

    if not intents_recorded(node.state_dir):
        return {}
    from vfio_manager.safety.intents import IntentStore

    try:
        return dict(IntentStore(node.state_dir).read())
    except VfioManagerError:
        return {}


# -- check ----------------------------------------------------------------------------------
def _check_mark(ok: bool) -> str:
    """✓/✗ in green/red (click drops the colour when stdout is not a terminal)."""
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "✓✗".encode(encoding)
        text = "✓" if ok else "✗"
    except (UnicodeEncodeError, LookupError):
        text = "ok" if ok else "FAIL"
    return click.style(text, fg="green") if ok else click.style(text, fg="red", bold=True)


@cli.command(epilog=EXIT_CODES_HELP)
@_selection_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a checklist.")
@_load_modules_option(default=False)
@click.pass_obj
@_handles_errors
def check(
    node: Node,
    vendor: str,
    pci_class: str,
    device_ids: tuple[str, ...],
    as_json: bool,
    load_modules: bool,
) -> None:
    """Is this host ready to give the selected functions to VMs? Exit 0 if so, 3 if not.

    Checks the IOMMU (live evidence, explained by the kernel arguments and configuration),
    no-IOMMU mode, the vfio modules and driver, /dev/vfio/vfio, and each selected function's
    IOMMU group and vfio driver. Read-only unless --load-modules is given.
    """
    from vfio_manager.cli import render
    from vfio_manager.pipeline.queries import check as check_host

    result = check_host(node, _selector(vendor, pci_class, device_ids), load_modules=load_modules)
    lines = render.check_json(result) if as_json else render.check_text(result, _check_mark)
    _finish(lines, ExitCode.OK if result.preflight.ok else ExitCode.HOST_NOT_READY)


# -- bind / unbind ---------------------------------------------------------------------------
def _transition_options(func: F) -> F:
    func = click.option(
        "--json", "as_json", is_flag=True, help="Print the plan or the outcome as JSON."
    )(func)
    func = click.option("--dry-run", is_flag=True, help="Print the plan; write nothing.")(func)
    func = click.option(
        "--force",
        is_flag=True,
        help="Move functions even when a process holds them or the host needs them (a mounted "
        "disk, an addressed interface, the boot console). Use with care.",
    )(func)
    return _selection_options(func)


def _bind_options(func: F) -> F:
    """What bind and bind-all add to the transition options: group peers, module loading."""
    func = _load_modules_option(default=True)(func)
    func = click.option(
        "--with-group-peers",
        is_flag=True,
        help="Also bind the other endpoint members of each IOMMU group when they match the "
        "selection (or, for bind, are named).",
    )(func)
    return _transition_options(func)


def _run_transition(
    node: Node,
    to_vfio: bool,
    named: Sequence[PciAddress],
    selection: tuple[str, str, tuple[str, ...]],
    *,
    dry_run: bool,
    as_json: bool,
    force: bool,
    with_group_peers: bool = False,
    load_modules: bool = True,
) -> None:
    from vfio_manager.cli import render
    from vfio_manager.kernel.drivers import Direction
    from vfio_manager.pipeline.transition import TransitionRequest, run_transition

    request = TransitionRequest(
        _selector(*selection),
        Direction.TO_VFIO if to_vfio else Direction.TO_HOST,
        named=tuple(named),
        dry_run=dry_run,
        with_group_peers=with_group_peers,
        load_modules=load_modules,
        force=force,
        admin=True,
    )
    result = run_transition(node, request)
    lines = render.transition_json(result) if as_json else render.transition_text(result)
    _finish(lines, result.exit_code)


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("bdfs", nargs=-1, required=True, type=BDF, metavar="BDF...")
@_bind_options
@click.pass_obj
@_handles_errors
def bind(
    node: Node,
    bdfs: tuple[PciAddress, ...],
    vendor: str,
    pci_class: str,
    device_ids: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
    force: bool,
    with_group_peers: bool,
    load_modules: bool,
) -> None:
    """Move the named functions to vfio-pci (override, unbind, probe, verify).

    The checks of `vfio-manager check` run first; the host must pass them (exit 3 otherwise,
    before anything is written).
    """
    _run_transition(
        node,
        True,
        bdfs,
        (vendor, pci_class, device_ids),
        dry_run=dry_run,
        as_json=as_json,
        force=force,
        with_group_peers=with_group_peers,
        load_modules=load_modules,
    )


@cli.command(epilog=EXIT_CODES_HELP)
@click.argument("bdfs", nargs=-1, required=True, type=BDF, metavar="BDF...")
@_transition_options
@click.pass_obj
@_handles_errors
def unbind(
    node: Node,
    bdfs: tuple[PciAddress, ...],
    vendor: str,
    pci_class: str,
    device_ids: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
    force: bool,
) -> None:
    """Return the named functions from vfio-pci to their native driver.

    Refused while a process (a VM) holds the function's /dev/vfio group, unless --force.
    """
    _run_transition(
        node,
        False,
        bdfs,
        (vendor, pci_class, device_ids),
        dry_run=dry_run,
        as_json=as_json,
        force=force,
    )


@cli.command("bind-all", epilog=EXIT_CODES_HELP)
@_bind_options
@click.pass_obj
@_handles_errors
def bind_all(
    node: Node,
    vendor: str,
    pci_class: str,
    device_ids: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
    force: bool,
    with_group_peers: bool,
    load_modules: bool,
) -> None:
    """Move every selected function to vfio-pci; converged ones are left alone.

    The checks of `vfio-manager check` run first (exit 3 before any write if they fail).
    """
    _run_transition(
        node,
        True,
        (),
        (vendor, pci_class, device_ids),
        dry_run=dry_run,
        as_json=as_json,
        force=force,
        with_group_peers=with_group_peers,
        load_modules=load_modules,
    )


@cli.command("unbind-all", epilog=EXIT_CODES_HELP)
@_transition_options
@click.pass_obj
@_handles_errors
def unbind_all(
    node: Node,
    vendor: str,
    pci_class: str,
    device_ids: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
    force: bool,
) -> None:
    """Return every selected function to its native driver (held ones refused, see unbind)."""
    _run_transition(
        node,
        False,
        (),
        (vendor, pci_class, device_ids),
        dry_run=dry_run,
        as_json=as_json,
        force=force,
    )


# -- kubevirt-config ---------------------------------------------------------------------------
@cli.command("kubevirt-config", epilog=EXIT_CODES_HELP)
@_selection_options
@click.option(
    "--naming",
    type=click.Choice(["atom", "pf"]),
    default="atom",
    show_default=True,
    help="Resource names of the sandbox device plugin: atom = rebellions.ai/ATOM_CA22_PT "
    "(one per card), pf = rebellions.ai/RBLN-CA25_PF and _VF (per product and function).",
)
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["yaml", "json"]),
    default="yaml",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--all-products",
    is_flag=True,
    help="Every catalogued product's PF and VF IDs instead of the functions on this host "
    "(the selection options then do not apply).",
)
@click.pass_obj
@_handles_errors
def kubevirt_config(
    node: Node,
    vendor: str,
    pci_class: str,
    device_ids: tuple[str, ...],
    naming: str,
    output_format: str,
    all_products: bool,
) -> None:
    """Print KubeVirt's permittedHostDevices.pciHostDevices entries for the NPUs.

    One entry per device ID present (or, with --all-products, catalogued), with the resource
    name the sandbox device plugin advertises and externalResourceProvider: true. The output
    goes under spec.configuration of the KubeVirt CR. Read-only.
    """
    from vfio_manager.cli import kubevirt

    if all_products:
        entries = kubevirt.for_catalogue(naming)
    else:
        from vfio_manager.kernel.inventory import read_topology
        from vfio_manager.pipeline.selection import selected_functions

        selector = _selector(vendor, pci_class, device_ids)
        topology = read_topology(node.sysfs())
        entries = kubevirt.for_functions(selected_functions(topology, selector), naming)
        if not entries:
            raise VfioManagerError(
                f"no Rebellions function matches {selector.describe()} on this host",
                remedy="run it on a node with NPUs, or pass --all-products for every "
                "catalogued product",
            )
    for entry in entries:
        if not entry.catalogued:
            click.echo(f"vfio-manager: warning: {kubevirt.uncatalogued_note(entry)}", err=True)
    click.echo(kubevirt.render(entries, output_format, naming=naming), nl=False)


# -- daemon ---------------------------------------------------------------------------------
@cli.command(epilog=EXIT_CODES_HELP)
@_selection_options
@click.option(
    "--resync-interval",
    envvar="VFIO_MANAGER_RESYNC_INTERVAL",
    type=_Seconds(1.0),
    default=60.0,
    show_default=True,
    help="Seconds between full re-reads of the node, the safety net under the kernel's "
    "uevents (env VFIO_MANAGER_RESYNC_INTERVAL).",
)
@click.option(
    "--ready-file",
    envvar="VFIO_MANAGER_READY_FILE",
    default=None,
    metavar="PATH",
    help="File present exactly while the node is converged (default <state-dir>/ready; env "
    "VFIO_MANAGER_READY_FILE).",
)
@click.option(
    "--listen",
    envvar="VFIO_MANAGER_LISTEN",
    default=None,
    metavar="ADDR:PORT",
    help="Serve /healthz, /readyz and /metrics over HTTP there (default off; :PORT for every "
    "IPv4 address, [::1]:PORT for IPv6, port 0 picks one and logs it; env "
    "VFIO_MANAGER_LISTEN).",
)
@click.option(
    "--on-exit",
    envvar="VFIO_MANAGER_ON_EXIT",
    type=click.Choice(["keep", "release-idle", "release"]),
    default="keep",
    show_default=True,
    help="On SIGTERM: keep every function on vfio-pci, return those whose IOMMU group no "
    "process holds, or return all (with unbind-all's refusals) (env VFIO_MANAGER_ON_EXIT).",
)
@click.option(
    "--exclude",
    envvar="VFIO_MANAGER_EXCLUDE",
    type=BDF_LIST,
    multiple=True,
    metavar="BDF",
    help="Never touch this function (reported as excluded); repeatable (env "
    "VFIO_MANAGER_EXCLUDE, comma-separated).",
)
@click.option(
    "--load-modules/--no-load-modules",
    envvar="VFIO_MANAGER_LOAD_MODULES",
    default=True,
    show_default=True,
    help="Load missing vfio modules with the host's modprobe, as bind-all does (env "
    "VFIO_MANAGER_LOAD_MODULES).",
)
@click.pass_obj
@_handles_errors
def daemon(
    node: Node,
    vendor: str,
    pci_class: str,
    device_ids: tuple[str, ...],
    resync_interval: float,
    ready_file: Optional[str],
    listen: Optional[str],
    on_exit: str,
    exclude: tuple[PciAddress, ...],
    load_modules: bool,
) -> None:
    """Keep the selected functions on vfio-pci, driven by kernel uevents.

    Converges once (the checks of bind-all first; a host that is not ready is waited for, not
    an error), then re-plans what each uevent names, and everything at each resync. Runs until
    SIGTERM or SIGINT; SIGHUP resyncs now. See docs/daemon.md.
    """
    from vfio_manager.daemon.onexit import OnExit
    from vfio_manager.daemon.service import DaemonOptions, run_daemon

    options = DaemonOptions(
        selector=_selector(vendor, pci_class, device_ids),
        exclude=tuple(sorted({str(a) for a in exclude})),
        resync_interval=resync_interval,
        ready_file=ready_file,
        listen=listen,
        on_exit=OnExit(on_exit),
        load_modules=load_modules,
    )
    code = run_daemon(node, options)
    if code:
        sys.exit(code)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console-script entry point."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="vfio-manager")
