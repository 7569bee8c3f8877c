"""Kernel modules of the vfio stack: the state of each (docs/preflight.md), and loading them
with the host's own modprobe (chrooted into a mounted host root; no shell, fixed argv)."""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Callable, Optional

from vfio_manager.host.files import MODPROBE_LOCATIONS, HostFiles, normalise
from vfio_manager.kernel.sysfs import Sysfs

MODPROBE_TIMEOUT = 60.0
# `install NAME <cmd>` lines whose command makes loading a no-op or a failure
_BLOCKING_INSTALL_COMMANDS = frozenset(
    {"/bin/false", "/bin/true", "/usr/bin/false", "/usr/bin/true", "false", "true"}
)
_VFIO_STACK = ("vfio", "vfio_pci", "vfio_pci_core", "vfio_iommu_type1", "iommufd")
MODULE_CONFIG = {m: f"CONFIG_{m.upper()}" for m in _VFIO_STACK}  # each one's config option


class ModuleState(str, enum.Enum):
    LOADED = "loaded"
    BUILTIN = "built-in"
    BLACKLISTED = "blacklisted"
    LOADABLE = "loadable"
    MISSING = "missing"


@dataclass(frozen=True)
class Blacklisting:
    """Why modprobe will not load a module: a modprobe.d line or a kernel argument."""

    how: str  # "blacklist", "install", "module_blacklist", "modprobe.blacklist"
    where: str  # "/etc/modprobe.d/x.conf:3" or "the kernel command line"
    line: str


@dataclass(frozen=True)
class ModuleInfo:
    """One module's state and the evidence it was read from."""

    name: str
    state: ModuleState
    evidence: tuple[str, ...] = ()
    blacklisting: Optional[Blacklisting] = None
    path: Optional[str] = None  # the .ko, relative to /lib/modules/REL
    tree_visible: bool = True  # /lib/modules/REL could be read
    note: Optional[str] = None  # e.g. "the kernel is built without CONFIG_VFIO_PCI"

    @property
    def ok(self) -> bool:
        """Present in the running kernel: nothing to load."""
        return self.state in (ModuleState.LOADED, ModuleState.BUILTIN)

    @property
    def exists(self) -> bool:
        """The kernel has this module in some form (loaded, built in or on disk)."""
        return self.state is not ModuleState.MISSING or self.blacklisting is not None

    def describe(self) -> str:
        text, b = self.state.value, self.blacklisting
        if self.state is ModuleState.LOADABLE and self.path:
            text += f" ({self.path}), not loaded"
        elif self.state is ModuleState.BLACKLISTED and b is not None:
            on_disk = f", {self.path} is on disk" if self.path else ""
            text += f" by `{b.line}` ({b.where}){on_disk}"
        if self.note:
            text += f" ({self.note})"
        elif self.state is ModuleState.MISSING and not self.tree_visible:
            text += " (the kernel's module tree is not visible)"
        return text


def blacklistings(
    config: Iterable[tuple[str, int, str]], cmdline_args: Mapping[str, Sequence[str]]
) -> dict[str, Blacklisting]:
    """Module name -> the first thing that keeps modprobe from loading it."""
    found: dict[str, Blacklisting] = {}
    for key in ("module_blacklist", "modprobe.blacklist"):
        for value in cmdline_args.get(key, ()):
            blacklisting = Blacklisting(key, "the kernel command line", f"{key}={value}")
            for name in filter(str.strip, value.split(",")):
                found.setdefault(normalise(name), blacklisting)
    for path, number, line in config:
        words = [*line.split(), "", ""]  # padded: a short line has empty words
        blocking = words[0] == "blacklist" or (
            words[0] == "install" and words[2] in _BLOCKING_INSTALL_COMMANDS
        )
        if blocking and words[1]:
            found.setdefault(normalise(words[1]), Blacklisting(words[0], f"{path}:{number}", line))
    return found


class ModuleInventory:
    """Module state from sysfs and the host's files; the big files and the kernel config are
    read once, here."""

    def __init__(
        self,
        sysfs: Sysfs,
        host: HostFiles,
        *,
        cmdline_args: Optional[Mapping[str, Sequence[str]]] = None,
    ) -> None:
        self.sysfs = sysfs
        self.host = host
        self.builtin = host.builtin_modules()
        self.loadable = host.loadable_modules()
        self.proc_modules = host.proc_modules()
        self.modprobe_config = host.modprobe_config()
        self.blacklisted = blacklistings(self.modprobe_config, cmdline_args or {})
        self.config_source, self.config = host.kernel_config()

    def info(self, module: str) -> ModuleInfo:
        name = normalise(module)
        module_dir = self.sysfs.module_dir(name)
        present = self.sysfs.module_present(name)
        initstate = self.sysfs.read_text(f"{module_dir}/initstate") if present else None
        path = self.loadable.get(name) if self.loadable is not None else None
        loaded = [f"{module_dir}/initstate: {initstate}"] if initstate is not None else []
        if name in self.proc_modules:
            loaded.append(f"{self.host.path('proc', 'modules')} lists {name}")
        if loaded:
            return ModuleInfo(name, ModuleState.LOADED, tuple(loaded), path=path)
        builtin = [f"{module_dir} exists without initstate"] if present else []
        if self.builtin is not None and name in self.builtin:
            builtin.append(f"{self.host.modules_file('modules.builtin')} lists {name}")
        if builtin:
            return ModuleInfo(name, ModuleState.BUILTIN, tuple(builtin), path=path)
        where, tree_visible = self.host.modules_dir(), self.loadable is not None
        found = f"{where}/{path}" if path else f"no {name}.ko under {where}"
        found = found if tree_visible else f"{where} not readable"
        evidence: tuple[str, ...] = (f"{module_dir} absent", found)
        b = self.blacklisted.get(name)
        if b is not None:
            evidence += (f"{b.where}: {b.line}",)
            return ModuleInfo(name, ModuleState.BLACKLISTED, evidence, b, path, tree_visible)
        if path is not None:
            return ModuleInfo(name, ModuleState.LOADABLE, evidence, path=path)
        # no other trace: the kernel config tells built in (=y) from not built (unset)
        option, source = MODULE_CONFIG.get(name), self.config_source
        value = self.config.get(option, "n") if option is not None and source else None
        if value == "y":
            evidence += (f"{source}: {option}=y",)
            return ModuleInfo(name, ModuleState.BUILTIN, evidence, tree_visible=tree_visible)
        note = f"the kernel is built without {option}" if value == "n" else None
        evidence += (f"{source}: {option} is not set",) if note else ()
        return ModuleInfo(name, ModuleState.MISSING, evidence, tree_visible=tree_visible, note=note)


@dataclass(frozen=True)
class RunResult:
    returncode: int
    stdout: str = ""
    stderr: str = ""


Runner = Callable[[Sequence[str]], RunResult]


def subprocess_runner(argv: Sequence[str]) -> RunResult:
    """Run a fixed argument list (no shell), capturing its output; never raises."""
    import shutil
    import subprocess

    search = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    program = argv[0] if argv[0].startswith("/") else shutil.which(argv[0], path=search)
    if program is None:
        return RunResult(127, "", f"{argv[0]}: command not found")
    try:
        done = subprocess.run(
            [program, *argv[1:]],
            capture_output=True,
            text=True,
            timeout=MODPROBE_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return RunResult(124, "", f"{' '.join(argv)} did not finish in {MODPROBE_TIMEOUT:g}s")
    except OSError as exc:
        return RunResult(126, "", f"{' '.join(argv)}: {exc.strerror or exc}")
    return RunResult(done.returncode, done.stdout, done.stderr)


def modprobe_command(host_root: str, modprobe: str, module: str) -> list[str]:
    """The host's modprobe for ``module``: direct on /, through chroot on a mounted host root."""
    root = host_root.rstrip("/") or "/"
    return [modprobe, module] if root == "/" else ["chroot", root, modprobe, module]


@dataclass(frozen=True)
class LoadAttempt:
    """One modprobe run, or the reason it was not run (``argv`` empty)."""

    module: str
    argv: tuple[str, ...]
    returncode: Optional[int]
    message: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def describe(self) -> str:
        if not self.argv:
            return f"{self.module}: {self.message}"
        command = " ".join(self.argv)
        if self.ok:
            return f"loaded {self.module} (`{command}`)"
        return f"`{command}` failed (exit {self.returncode}): {self.message}"


def load_modules(
    host: HostFiles,
    modules: Sequence[str],
    *,
    runner: Optional[Runner] = None,
    still_needed: Optional[Callable[[str], bool]] = None,
) -> list[LoadAttempt]:
    """modprobe each module in order up to the first failure, skipping those an earlier
    modprobe pulled in (``still_needed``); ``runner`` defaults to :func:`subprocess_runner`."""
    modprobe = host.modprobe_path()
    if modprobe is None:
        where = ", ".join(host.path(os.path.dirname(p)[1:]) for p in MODPROBE_LOCATIONS)
        message = f"modprobe is not installed (looked in {where})"
        return [LoadAttempt(m, (), None, message) for m in modules]
    run = runner if runner is not None else subprocess_runner
    attempts: list[LoadAttempt] = []
    for module in modules:
        if attempts and still_needed is not None and not still_needed(module):
            continue
        argv = modprobe_command(host.root, modprobe, module)
        result = run(argv)
        message = (result.stderr or result.stdout).strip().replace("\n", "; ")
        attempts.append(LoadAttempt(module, tuple(argv), result.returncode, message))
        if result.returncode != 0:
            break
    return attempts
