"""The click command line: options in, one result on stdout, an exit code out. Every error
ends in :class:`_Cli` as a message, remedy and exit code on stderr, never a traceback; with
``--json``, also as one ``{"error": ...}`` document on stdout."""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Optional, TypeVar

import click

from vfio_manager.errors import ExitCode, UsageError, VfioManagerError
from vfio_manager.kernel.address import PciAddress
from vfio_manager.pipeline.node import DEFAULT_LOCK_TIMEOUT, DEFAULT_PARALLEL, DEFAULT_WRITE_TIMEOUT

if TYPE_CHECKING:
    from vfio_manager.pipeline.node import Node
    from vfio_manager.pipeline.selection import Selector

F = TypeVar("F", bound=Callable[..., Any])
Param = Optional[click.Parameter]
Ctx = Optional[click.Context]

EXIT_CODES_HELP = """\b
Exit codes:
  0  success: every selected function is where it was asked to be
  1  a function failed, was refused, or is not converged
  2  usage error (unknown option, malformed BDF or ID); nothing was read or written
  3  the host is not ready (IOMMU off, vfio missing); nothing was written
  130, 143  SIGINT, SIGTERM: the functions in flight were finished, none started after
"""


# -- values ------------------------------------------------------------------------------------
class _BadValue(click.BadParameter):
    """A value refused with a remedy, kept apart for the JSON document. Without a parameter
    (a whole selection), worded as click's plain usage error."""

    def __init__(self, err: UsageError, param: Param = None, ctx: Ctx = None) -> None:
        super().__init__(err.message, ctx, param)
        self.remedy = err.remedy

    def format_message(self) -> str:
        text = super().format_message() if self.param is not None else self.message
        return f"{text}; {self.remedy}" if self.remedy else text


class _Parsed(click.ParamType):  # type: ignore[type-arg]
    """A value ``parse`` reads, raising UsageError; from an environment variable, a
    comma-separated list where the option repeats."""

    envvar_list_splitter = ","

    def __init__(self, name: str, parse: Callable[[Any, Param], Any]) -> None:
        self.name, self.parse = name, parse

    def convert(self, value: Any, param: Param, ctx: Ctx) -> Any:
        try:
            return self.parse(value, param)
        except UsageError as err:
            raise _BadValue(err, param, ctx) from err


def _path(value: Any, param: Param) -> str:
    """A root or directory: an empty path is refused, never read as the default."""
    text = str(value)
    if text and "\0" not in text:
        return text
    default = param.default if param is not None else None
    remedy = f"give a path (default {default})" if default else "give a path"
    raise UsageError(f"{text!r} is not a path", remedy=remedy)


def _seconds(minimum: float, maximum: float = 86400.0) -> _Parsed:
    """Finite seconds within bounds: inf and nan would disable a deadline."""

    def parse(value: Any, _param: Param) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{value!r} is not a number of seconds") from None
        if not math.isfinite(seconds) or not minimum <= seconds <= maximum:
            raise UsageError(f"{value!r} is not between {minimum:g} and {maximum:g} seconds")
        return seconds

    return _Parsed("SECONDS", parse)


BDF = _Parsed("BDF", lambda v, _p: v if isinstance(v, PciAddress) else PciAddress.parse(str(v)))
LOCATION = _Parsed("PATH", _path)
HEX = _Parsed("HEX", lambda v, _p: str(v).strip())


def _options(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Several option decorators as one, listed in the order ``--help`` shows them."""
    return lambda func: functools.reduce(lambda f, add: add(f), reversed(decorators), func)


_HELP = {  # each option's --help, by its long name
    "--sysfs-root": "Where sysfs is mounted.",
    "--dev-root": "Where the host's /dev is mounted.",
    "--host-root": "The host's /, for /proc/cmdline and /lib/modules.",
    "--timeout": "Seconds each function's writes (and its /dev/vfio node) may take.",
    "--state-dir": "Lock and journal directory; in Kubernetes a hostPath the preStop hook shares.",
    "--lock-timeout": "Seconds a writing command waits for another vfio-manager run to finish.",
    "--parallel": "IOMMU groups moved side by side (a native driver's probe can take seconds).",
    "--proc-root": "Where the host's /proc is.",
    "--writer": "sysfs writes from a child process, or a thread (the tests' fake kernel).",
    "--vendor": "PCI vendor ID to select.",
    "--class": "PCI class to select; 0x1200 ignores the programming interface.",
    "--device-id": "PCI device ID to select (default: all); repeatable, comma-separated in the "
    "environment.",
    "--log-format": "Log format on stderr; auto is JSON unless stderr is a terminal.",
    "--verbose": "More log detail (every sysfs write).",
    "--quiet": "Log warnings and errors only.",
    "--check": "Exit 0 only when every selected function is on vfio-pci.",
    "--holders": "Also name the processes holding each function (a VM, a tool; scans /proc).",
    "--json": "Print JSON instead of text.",
    "--load-modules": "Load missing vfio modules with the host's modprobe.",
    "--dry-run": "Print the plan; write nothing.",
    "--wait": "With --check: wait up to SECONDS for all on vfio-pci; exit 1 if time runs out.",
    "--force": "Move functions even if a process or the host needs them; use with care.",
    "--with-group-peers": "Also bind the selected (bind: named) other endpoints of their groups.",
    "--naming": "Device plugin resource names: atom (per card) or pf (per product and kind).",
    "--format": "Output format.",
    "--all-products": "Every catalogued product's IDs instead of this host's (no selection).",
    "--resync-interval": "Seconds between full re-reads of the node (the net under uevents).",
    "--ready-file": "File present exactly while the node is converged (default <state-dir>/ready).",
    "--nfd-features-file": "Node Feature Discovery feature file to write the node's labels to "
    "(in Kubernetes: /etc/kubernetes/node-feature-discovery/features.d/vfio-manager).",
    "--validation-file": "The RBLN operator's vfio-pci-ready file, present while converged "
    "(in Kubernetes: /run/rbln/validations/vfio-pci-ready).",
    "--listen": "Serve /healthz, /readyz and /metrics over HTTP (:PORT: every IPv4 address).",
    "--on-exit": "On SIGTERM: keep all on vfio-pci, return those no process holds, or return all.",
    "--product": "Only this product (RBLN-CA25, RBLN-CA25-VF, or IDs as 1eff-1250); repeatable.",
    "--bdf": "Only this function; repeatable.",
    "--numa-node": "Only functions on this NUMA node; repeatable.",
    "--per-numa-node": "Only the first N selected functions of each NUMA node, in BDF order.",
    "--exclude": "Never touch this function, not even in a dry run's plan; repeatable.",
    "--vfs": "Give each selected SR-IOV PF N VFs on vfio-pci (the PF stays on its driver); "
    "PRODUCT=N for one product's PFs; repeatable.",
    "--node-config": "This node's selection: an environment file, or a directory of one per "
    "node name plus default (a mounted ConfigMap); re-read when it changes.",
    "--node-name": "The node's file in a --node-config directory (default: the host name).",
}


def _opt(*decls: str, env: Optional[str] = None, **kwargs: Any) -> Callable[[F], F]:
    """``click.option`` with its help from ``_HELP``; ``env``, its environment variable, is
    named at the end of that help."""
    text = _HELP[next(d for d in decls if d.startswith("--")).split("/")[0]]
    if env is not None:
        kwargs["envvar"], text = env, f"{text.rstrip('.')} (env {env})."
    return click.option(*decls, help=text, **kwargs)


def _flag(*decls: str, **kwargs: Any) -> Callable[[F], F]:
    return _opt(*decls, is_flag=True, **kwargs)


# -- the node and the selection ----------------------------------------------------------------
_WRITERS = click.Choice(["process", "thread"])  # thread: the tests' in-memory fake kernel
_node_options = _options(
    _opt("--sysfs-root", env="VFIO_MANAGER_SYSFS_ROOT", type=LOCATION, default="/sys"),
    _opt("--dev-root", env="VFIO_MANAGER_DEV_ROOT", type=LOCATION, default="/dev"),
    _opt("--host-root", env="HOST_ROOT", type=LOCATION, default="/"),
    _opt("--timeout", type=_seconds(0.1), default=DEFAULT_WRITE_TIMEOUT),
    _opt("--state-dir", env="VFIO_MANAGER_STATE_DIR", type=LOCATION, default="/run/vfio-manager"),
    _opt("--lock-timeout", type=_seconds(0.0), default=DEFAULT_LOCK_TIMEOUT),
    _opt(
        "--parallel",
        env="VFIO_MANAGER_PARALLEL",
        type=click.IntRange(1, 512),
        default=DEFAULT_PARALLEL,
    ),
    _opt("--proc-root", env="VFIO_MANAGER_PROC_ROOT", type=LOCATION, default="/proc", hidden=True),
    _opt("--writer", env="VFIO_MANAGER_WRITER", type=_WRITERS, default="process", hidden=True),
)


def _selection_value(metavar: str, parser: str) -> _Parsed:
    """A value one of the selection module's parsers reads (imported when one comes)."""

    def parse(value: Any, _param: Param) -> Any:
        from vfio_manager.pipeline import selection

        return getattr(selection, parser)(str(value))

    return _Parsed(metavar, parse)


_selection_options = _options(
    _opt("--vendor", env="VFIO_MANAGER_VENDOR", default="0x1eff", metavar="HEX"),
    _opt("--class", "pci_class", env="VFIO_MANAGER_CLASS", default="0x120000", metavar="HEX"),
    _opt("--device-id", "device_ids", env="VFIO_MANAGER_DEVICE_ID", type=HEX, multiple=True),
    _opt("--product", "products", env="VFIO_MANAGER_PRODUCT", multiple=True,
         type=_selection_value("NAME", "parse_product")),
    _opt("--bdf", "bdfs", env="VFIO_MANAGER_BDF", type=BDF, multiple=True),
    _opt("--numa-node", "numa_nodes", env="VFIO_MANAGER_NUMA_NODE", multiple=True,
         type=_selection_value("N", "parse_numa_node")),
    _opt("--per-numa-node", env="VFIO_MANAGER_PER_NUMA_NODE",
         type=_selection_value("N", "parse_count")),
    _opt("--exclude", env="VFIO_MANAGER_EXCLUDE", type=BDF, multiple=True),
    _opt("--vfs", env="VFIO_MANAGER_VFS", multiple=True,
         type=_selection_value("[PRODUCT=]N", "parse_vfs")),
)  # fmt: skip


_SELECTION = (
    "vendor", "pci_class", "device_ids", "products", "bdfs", "numa_nodes", "per_numa_node",
    "exclude", "vfs",
)  # fmt: skip


def _node(ctx: click.Context) -> Node:
    """The node of ``ctx``'s node options. A variable set to "" is refused like an empty
    option: click would take it for unset and fall back to the real /sys."""
    from dataclasses import fields

    from click.core import ParameterSource

    from vfio_manager.pipeline.node import Node

    names = [field.name for field in fields(Node)]
    for param in ctx.command.params:
        envvar, name = param.envvar, param.name
        if name not in names or not isinstance(envvar, str) or os.environ.get(envvar) != "":
            continue
        if ctx.get_parameter_source(name) is not ParameterSource.COMMANDLINE:
            message = f"the environment variable {envvar} is set but empty"
            remedy = f"unset {envvar} to use the default ({param.default}), or set it to a value"
            raise _BadValue(UsageError(message, remedy=remedy), param, ctx)
    return Node(**{name: ctx.params[name] for name in names})


def _selector(vendor: str, pci_class: str, device_ids: Sequence[str], **rules: Any) -> Selector:
    """The selection options' :class:`Selector` (commands take them as ``**selection``);
    ``rules``: products, BDFs, NUMA nodes, the count per NUMA node, exclusions (parsed)."""
    from vfio_manager.pipeline.selection import Selector

    sets = ("products", "bdfs", "numa_nodes", "exclude", "vfs")
    parsed = {k: frozenset(v) if k in sets else v for k, v in rules.items()}
    try:
        return Selector.from_options(vendor, pci_class, tuple(device_ids), **parsed)
    except UsageError as err:
        raise _BadValue(err, ctx=click.get_current_context(silent=True)) from err


@click.command()
@_node_options
@_selection_options
@click.pass_context
def _from_environment(ctx: click.Context, /, **params: Any) -> tuple[Node, Selector]:
    return _node(ctx), _selector(**{k: params[k] for k in _SELECTION})


def node_from_environment(**defaults: str) -> tuple[Node, Selector]:
    """The node and selection the options' environment variables (else ``defaults``, else
    the options' defaults) give, for ``vfio-manage``, which has no options for them."""
    try:
        ctx = _from_environment.make_context("vfio-manage", [], default_map=defaults)
        result: tuple[Node, Selector] = _from_environment.invoke(ctx)
    except click.ClickException as err:
        message, remedy = _message_and_remedy(err)
        raise UsageError(message, remedy=remedy) from err
    return result


# -- errors ------------------------------------------------------------------------------------
def _message_and_remedy(err: click.ClickException) -> tuple[str, str]:
    remedy = getattr(err, "remedy", None)
    if remedy:
        return err.format_message().removesuffix(f"; {remedy}"), remedy
    ctx = getattr(err, "ctx", None)
    return err.format_message(), f"see `{ctx.command_path if ctx else 'vfio-manager'} --help`"


@contextlib.contextmanager
def _reported(as_json: bool) -> Iterator[None]:
    """A VfioManagerError becomes its message, remedy and exit code on stderr; with
    ``as_json``, every error, click's own included, also prints the error document."""
    from vfio_manager.cli.render import error_json

    try:
        yield
    except click.ClickException as err:
        if as_json:
            click.echo(error_json(err.exit_code, *_message_and_remedy(err)))
        raise
    except VfioManagerError as err:
        if as_json:
            click.echo(error_json(int(err.exit_code), err.message, err.remedy, **err.details()))
        click.echo(f"vfio-manager: error: {err.message}", err=True)
        if err.remedy:
            click.echo(f"  remedy: {err.remedy}", err=True)
        sys.exit(int(err.exit_code))


class _Cli(click.Group):
    """The group, where every error ends: ``--json`` before any ``--`` asks for the document."""

    def make_context(
        self, info_name: Optional[str], args: list[str], *rest: Any, **extra: Any
    ) -> click.Context:
        as_json = "--json" in itertools.takewhile(lambda arg: arg != "--", args)
        with _reported(as_json):
            ctx = super().make_context(info_name, args, *rest, **extra)
        ctx.meta["json"] = as_json
        return ctx

    def invoke(self, ctx: click.Context) -> Any:
        with _reported(ctx.meta.get("json", False)):
            return super().invoke(ctx)


def _print_version(ctx: click.Context, _param: Param, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        from vfio_manager.cli.version import describe

        click.echo(describe())
        ctx.exit()


@click.group(
    cls=_Cli,
    epilog=EXIT_CODES_HELP,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.option(
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_print_version,
    help="Show the version, the commit and the runtime lock's digest, and exit.",
)
@_node_options
@_opt("--log-format", type=click.Choice(["auto", "json", "console"]), default="auto")
@_opt("-v", "--verbose", count=True, show_default=False)
@_flag("-q", "--quiet")
@click.pass_context
def cli(ctx: click.Context, /, log_format: str, verbose: int, quiet: bool, **_roots: Any) -> None:
    """Move Rebellions NPU functions between their native driver and vfio-pci.

    Nothing outside the selection (vendor, class and device ID) is ever touched.
    """
    from vfio_manager import log as logsetup

    ctx.obj = _node(ctx)
    logsetup.configure(log_format, -1 if quiet else verbose)


def _command(name: Optional[str] = None, **attrs: Any) -> Callable[[F], click.Command]:
    """A subcommand: the selection options first, the node as its first argument."""

    def make(func: F) -> click.Command:
        command = _selection_options(click.pass_obj(func))
        return cli.command(name, epilog=EXIT_CODES_HELP, **attrs)(command)

    return make


def _finish(lines: Sequence[str], code: ExitCode) -> None:
    """Print a result in one write (a big plan has thousands of lines) and exit with its code."""
    if lines:
        click.echo("\n".join(lines))
    if code != ExitCode.OK:
        sys.exit(int(code))


# -- status --------------------------------------------------------------------------------
@_command()
@_flag("--json", "as_json")
@_flag("--check")
@_opt("--wait", type=_seconds(0.0))
@_flag("--holders")
def status(
    node: Node,
    as_json: bool,
    check: bool,
    wait: Optional[float],
    holders: bool,
    **selection: Any,
) -> None:
    """Show the selected functions: driver, override, IOMMU group and its viability (read-only)."""
    from vfio_manager.cli import render
    from vfio_manager.pipeline.queries import status as read_status
    from vfio_manager.safety.intents import IntentStore, intents_recorded

    selector = _selector(**selection)
    if wait is not None:
        if not check:
            raise click.UsageError("--wait needs --check (it waits for what --check checks)")
        from vfio_manager.kernel.uevents import wait_with_uevents

        wait_with_uevents(lambda: read_status(node, selector).all_on_vfio, timeout=wait)
    result = read_status(node, selector, holders=holders)
    intents: dict[str, Any] = {}  # the admin's; an unreadable state directory shows none
    if intents_recorded(node.state_dir):
        with contextlib.suppress(VfioManagerError):
            intents = dict(IntentStore(node.state_dir).read())
    lines = render.status_json(result, intents) if as_json else render.status_text(result, intents)
    _finish(lines, ExitCode.FAILED if check and not result.all_on_vfio else ExitCode.OK)


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


@_command()
@_flag("--json", "as_json")
@_opt("--load-modules/--no-load-modules", default=False)
def check(node: Node, as_json: bool, load_modules: bool, **selection: Any) -> None:
    """Is this host ready to give the selected functions to VMs? Exit 0 if so, 3 if not.

    Checks the IOMMU, vfio, /dev/vfio/vfio and IOMMU groups; read-only unless --load-modules.
    """
    from vfio_manager.cli import render
    from vfio_manager.pipeline.queries import check as check_host

    result = check_host(node, _selector(**selection), load_modules=load_modules)
    lines = render.check_json(result) if as_json else render.check_text(result, _check_mark)
    _finish(lines, ExitCode.OK if result.preflight.ok else ExitCode.HOST_NOT_READY)


# -- bind, unbind, bind-all, unbind-all --------------------------------------------------------
_transition_options = _options(
    _flag("--force"),
    _flag("--dry-run"),
    _flag("--json", "as_json"),
)
_to_vfio_options = _options(
    _flag("--with-group-peers"),
    _opt("--load-modules/--no-load-modules", default=True),
)


def _transition_command(
    *, to_vfio: bool, named: bool
) -> Callable[[Callable[[], None]], click.Command]:
    """The command the decorated function names and documents (to or from vfio-pci)."""

    def run(node: Node, /, as_json: bool, named: tuple[PciAddress, ...] = (), **flags: Any) -> None:
        from vfio_manager.cli import render
        from vfio_manager.kernel.drivers import Direction
        from vfio_manager.pipeline.engine import Interruption
        from vfio_manager.pipeline.transition import TransitionRequest, run_transition

        selector = _selector(**{k: flags.pop(k) for k in _SELECTION})
        direction = Direction.TO_VFIO if to_vfio else Direction.TO_HOST
        request = TransitionRequest(selector, direction, named=named, admin=True, **flags)
        with Interruption.caught() as interruption:  # until the report is out
            result = run_transition(node, request, interruption=interruption)
            lines = render.transition_json(result) if as_json else render.transition_text(result)
            _finish(lines, result.exit_code)

    def make(described: Callable[[], None]) -> click.Command:
        options = [_transition_options, _to_vfio_options] if to_vfio else [_transition_options]
        if named:
            options.insert(
                0, click.argument("named", nargs=-1, required=True, type=BDF, metavar="BDF...")
            )
        name = described.__name__.replace("_", "-")
        return _command(name, help=described.__doc__)(_options(*options)(run))

    return make


@_transition_command(to_vfio=True, named=True)
def bind() -> None:
    """Move the named functions to vfio-pci, once the host passes `vfio-manager check`."""


@_transition_command(to_vfio=False, named=True)
def unbind() -> None:
    """Return the named functions to their native driver (refused while a VM holds one)."""


@_transition_command(to_vfio=True, named=False)
def bind_all() -> None:
    """Move every selected function to vfio-pci, once the host passes `vfio-manager check`."""


@_transition_command(to_vfio=False, named=False)
def unbind_all() -> None:
    """Return every selected function to its native driver (held ones refused, see unbind)."""


# -- kubevirt-config ---------------------------------------------------------------------------
@_command("kubevirt-config")
@_opt("--naming", type=click.Choice(["atom", "pf"]), default="atom")
@_opt("--format", "output_format", type=click.Choice(["yaml", "json"]), default="yaml")
@_flag("--all-products")
def kubevirt_config(
    node: Node, naming: str, output_format: str, all_products: bool, **selection: Any
) -> None:
    """Print KubeVirt's permittedHostDevices.pciHostDevices entries for the NPUs.

    One entry per device ID present (or catalogued), for the KubeVirt CR's spec.configuration.
    """
    from vfio_manager.cli import kubevirt

    if all_products:
        entries = kubevirt.for_catalogue(naming)
    else:
        from vfio_manager.kernel.inventory import read_topology
        from vfio_manager.pipeline.selection import selected_functions

        selector = _selector(**selection)
        topology = read_topology(node.sysfs())
        entries = kubevirt.for_functions(selected_functions(topology, selector), naming, selector)
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
@_command()
@_opt("--resync-interval", env="VFIO_MANAGER_RESYNC_INTERVAL", type=_seconds(1.0), default=60.0)
@_opt("--ready-file", env="VFIO_MANAGER_READY_FILE", metavar="PATH")
@_opt("--nfd-features-file", env="VFIO_MANAGER_NFD_FEATURES_FILE", metavar="PATH")
@_opt("--validation-file", env="VFIO_MANAGER_VALIDATION_FILE", metavar="PATH")
@_opt("--listen", env="VFIO_MANAGER_LISTEN", metavar="ADDR:PORT")
@_opt(
    "--on-exit",
    env="VFIO_MANAGER_ON_EXIT",
    type=click.Choice(["keep", "release-idle", "release"]),
    default="keep",
)
@_opt("--node-config", env="VFIO_MANAGER_NODE_CONFIG", metavar="PATH")
@_opt("--node-name", env="NODE_NAME", metavar="NAME")
@_opt("--load-modules/--no-load-modules", env="VFIO_MANAGER_LOAD_MODULES", default=True)
def daemon(node: Node, on_exit: str, **options: Any) -> None:
    """Keep the selected functions on vfio-pci, driven by kernel uevents.

    Re-plans what each uevent names and all at each resync; SIGHUP resyncs now (docs/daemon.md).
    """
    from vfio_manager.daemon.reconciler import OnExit
    from vfio_manager.daemon.service import DaemonOptions, build_daemon

    selector = _selector(**{k: options.pop(k) for k in _SELECTION})
    built = build_daemon(node, DaemonOptions(selector, on_exit=OnExit(on_exit), **options))
    if code := built.run():
        sys.exit(code)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console-script entry point."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="vfio-manager")
