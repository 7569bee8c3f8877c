"""The one module that builds paths of the host's own files (/proc/cmdline, /lib/modules,
/etc/modprobe.d, /boot) under ``--host-root`` (``/host`` in a container, else /)."""

from __future__ import annotations

import os
import re
from functools import cached_property
from typing import Optional

from vfio_manager.kernel.sysfs import Sysfs

DEFAULT_HOST_ROOT = "/"
MODPROBE_LOCATIONS = ("/sbin/modprobe", "/usr/sbin/modprobe", "/bin/modprobe", "/usr/bin/modprobe")
_KO = re.compile(r"\.ko(\.(xz|zst|gz))?$")
# kmod's order of modprobe.d folders: a file name in one hides the same name in those after it
_MODPROBE_DIRS = ("etc", "run", "usr/local/lib", "lib", "usr/lib")


class HostFiles:
    """Read access to the host's kernel command line, modules and configuration."""

    def __init__(self, root: str = DEFAULT_HOST_ROOT) -> None:
        self.root = root.rstrip("/") or "/"

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @cached_property
    def release(self) -> str:
        """The running kernel's release: the host's /proc says it, ``uname`` is the fallback."""
        text = Sysfs.read_text(self.path("proc", "sys", "kernel", "osrelease"))
        return text.strip() if text else os.uname().release

    def modules_dir(self) -> str:
        return self.path("lib", "modules", self.release)

    def modules_file(self, name: str) -> str:
        return os.path.join(self.modules_dir(), name)

    def cmdline(self) -> Optional[str]:
        """The host kernel's command line (the host's /proc, not a container's)."""
        text = Sysfs.read_text(self.path("proc", "cmdline"))
        return None if text is None else text.replace("\0", " ").strip()

    def kernel_config(self) -> tuple[Optional[str], dict[str, str]]:
        """``(source, {CONFIG_X: value})`` from /boot/config-REL or /proc/config.gz; unset: n."""
        for path in (self.path("boot", f"config-{self.release}"), self.path("proc", "config.gz")):
            lines = _read_lines(path)
            if lines is None:
                continue
            config: dict[str, str] = {}
            for line in lines:
                key, sep, value = line.partition("=")
                if line.startswith("CONFIG_") and sep:
                    config[key.strip()] = value.strip().strip('"')
                elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
                    config[line[2 : -len(" is not set")]] = "n"
            return path, config
        return None, {}

    def cpu_vendor(self) -> Optional[str]:
        """``vendor_id`` of the first CPU in the host's /proc/cpuinfo (GenuineIntel, ...)."""
        for line in _read_lines(self.path("proc", "cpuinfo")) or ():
            key, sep, value = line.partition(":")
            if sep and key.strip() == "vendor_id":
                return value.strip() or None
        return None

    def builtin_modules(self) -> Optional[frozenset[str]]:
        """Names in modules.builtin, normalised; ``None`` when it is unreadable."""
        lines = _read_lines(self.modules_file("modules.builtin"))
        return None if lines is None else frozenset(module_name(n) for n in lines if n.strip())

    def loadable_modules(self) -> Optional[dict[str, str]]:
        """Module name -> its ``.ko`` under /lib/modules/REL (modules.dep, else a walk of the
        tree); ``None`` when the tree is not visible."""
        base = self.modules_dir()
        if not os.path.isdir(base):
            return None
        dep = self.modules_file("modules.dep")
        if os.path.isfile(dep):
            paths = [line.partition(":")[0].strip() for line in _read_lines(dep) or ()]
        else:
            ko = ((d, name) for d, _, names in os.walk(base) for name in names if _KO.search(name))
            paths = [os.path.relpath(os.path.join(d, name), base) for d, name in ko]
        found: dict[str, str] = {}
        for rel in filter(None, paths):
            found.setdefault(module_name(rel), rel)
        return found

    def proc_modules(self) -> frozenset[str]:
        lines = _read_lines(self.path("proc", "modules")) or ()
        return frozenset(line.split()[0] for line in lines if line.split())

    def modprobe_config(self) -> list[tuple[str, int, str]]:
        """``(file, line number, line)`` of every modprobe.d line as kmod reads them."""
        chosen: dict[str, str] = {}
        for directory in _MODPROBE_DIRS:
            full = self.path(directory, "modprobe.d")
            for name in Sysfs.list_dir(full):
                if name.endswith(".conf") and name not in chosen:
                    chosen[name] = os.path.join(full, name)
        lines: list[tuple[str, int, str]] = []
        for name in sorted(chosen):
            for number, line in enumerate(_read_lines(chosen[name]) or (), 1):
                text = line.split("#", 1)[0].strip()
                if text:
                    lines.append((chosen[name], number, text))
        return lines

    def modprobe_path(self) -> Optional[str]:
        """Where modprobe is on the host, as a path inside the host root (``/sbin/modprobe``)."""
        for candidate in MODPROBE_LOCATIONS:
            if os.path.lexists(self.path(candidate.lstrip("/"))):
                return candidate
        return None


def normalise(name: str) -> str:
    """kmod's module name: dashes and underscores are the same (``vfio-pci`` -> ``vfio_pci``)."""
    return name.strip().replace("-", "_")


def module_name(path: str) -> str:
    """``kernel/drivers/vfio/pci/vfio-pci.ko.zst`` -> ``vfio_pci``."""
    return _KO.sub("", os.path.basename(path.strip())).replace("-", "_")


def _read_lines(path: str) -> Optional[list[str]]:
    """Every line of a text file, gunzipped when it ends in ``.gz``; ``None`` if unreadable."""
    try:
        if path.endswith(".gz"):
            import gzip  # rarely needed: not on the start-up path

            with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
                return handle.read().splitlines()
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read().splitlines()
    except (OSError, EOFError, ValueError):
        return None
