"""Paths of the host's own files: /proc/cmdline, /lib/modules, /etc/modprobe.d, /boot.

In a container the host's root is mounted somewhere (``--host-root``, env ``HOST_ROOT``,
usually /host); on bare metal it is /. Like :mod:`vfio_manager.kernel.sysfs` for /sys, this is the
only module that builds these paths.
"""

from __future__ import annotations

import os
import re
from typing import Optional

from vfio_manager.kernel.sysfs import Sysfs

DEFAULT_HOST_ROOT = "/"


class HostFiles:
    """Read access to the host's kernel command line, modules and configuration."""

    def __init__(self, root: str = DEFAULT_HOST_ROOT, release: Optional[str] = None) -> None:
        self.root = root.rstrip("/") or "/"
        self._release = release

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    @property
    def release(self) -> str:
        """The running kernel's release: the host's /proc says it, ``uname`` is the fallback."""
        if self._release is None:
            text = Sysfs.read_text(self.path("proc", "sys", "kernel", "osrelease"))
            self._release = text.strip() if text else os.uname().release
        return self._release

    def modules_dir(self) -> str:
        return self.path("lib", "modules", self.release)

    def modules_file(self, name: str) -> str:
        return os.path.join(self.modules_dir(), name)

    def read(self, *parts: str) -> Optional[str]:
        return Sysfs.read_text(self.path(*parts))

    def read_bytes(self, path: str) -> bytes:
        """A possibly large file as bytes (modules.alias); empty when unreadable."""
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except OSError:
            return b""

    def read_lines(self, path: str) -> list[str]:
        """All lines of a file (modules.dep, modules.builtin); empty when unreadable."""
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                return handle.read().splitlines()
        except OSError:
            return []

    # -- preflight reads -----------------------------------------------------------------------
    def cmdline_path(self) -> str:
        return self.path("proc", "cmdline")

    def cmdline(self) -> Optional[str]:
        """The host kernel's command line (the host's /proc, not a container's)."""
        text = self.read("proc", "cmdline")
        return text.replace("\0", " ").strip() if text is not None else None

    def kernel_config(self) -> tuple[Optional[str], dict[str, str]]:
        """``(source, {CONFIG_X: value})`` from /boot/config-REL or /proc/config.gz.

        Options that are "not set" map to ``"n"``. ``(None, {})`` when neither is readable.
        """
        candidates = (self.path("boot", f"config-{self.release}"), self.path("proc", "config.gz"))
        for path in candidates:
            lines = self._config_lines(path)
            if lines is not None:
                return path, _parse_kernel_config(lines)
        return None, {}

    @staticmethod
    def _config_lines(path: str) -> Optional[list[str]]:
        try:
            if path.endswith(".gz"):
                import gzip

                with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
                    return handle.read().splitlines()
            with open(path, encoding="utf-8", errors="replace") as handle:
                return handle.read().splitlines()
        except (OSError, EOFError, ValueError):
            return None

    def cpu_vendor(self) -> Optional[str]:
        """``vendor_id`` of the first CPU in the host's /proc/cpuinfo (GenuineIntel, ...)."""
        try:
            with open(self.path("proc", "cpuinfo"), encoding="utf-8", errors="replace") as handle:
                for line in handle:
                    key, sep, value = line.partition(":")
                    if sep and key.strip() == "vendor_id":
                        return value.strip() or None
        except OSError:
            return None
        return None

    def modules_dir_exists(self) -> bool:
        return os.path.isdir(self.modules_dir())

    def builtin_modules(self) -> Optional[frozenset[str]]:
        """Names in modules.builtin (``-`` normalised to ``_``); ``None`` when unreadable."""
        path = self.modules_file("modules.builtin")
        if not os.path.isfile(path):
            return None
        return frozenset(module_name(line) for line in self.read_lines(path) if line.strip())

    def loadable_modules(self) -> Optional[dict[str, str]]:
        """Module name -> path relative to /lib/modules/REL, for every ``.ko`` of the kernel.

        From modules.dep; when it is missing, from a walk of the tree. ``None`` when the tree
        itself is not visible (a container without the host's /lib/modules).
        """
        if not self.modules_dir_exists():
            return None
        dep = self.modules_file("modules.dep")
        found: dict[str, str] = {}
        if os.path.isfile(dep):
            for line in self.read_lines(dep):
                rel = line.partition(":")[0].strip()
                if rel:
                    found.setdefault(module_name(rel), rel)
            return found
        base = self.modules_dir()
        for directory, _dirs, files in os.walk(base):
            for name in files:
                if _KO.search(name):
                    rel = os.path.relpath(os.path.join(directory, name), base)
                    found.setdefault(module_name(rel), rel)
        return found

    def proc_modules(self) -> Optional[frozenset[str]]:
        """Loaded loadable modules from the host's /proc/modules; ``None`` when unreadable."""
        path = self.path("proc", "modules")
        if not os.path.isfile(path):
            return None
        return frozenset(line.split()[0] for line in self.read_lines(path) if line.split())

    def modprobe_config(self) -> list[tuple[str, int, str]]:
        """``(file, line number, line)`` of every modprobe.d configuration line, as kmod reads them.

        A file name in /etc/modprobe.d hides the same name in /run, /usr/local/lib and /lib.
        """
        chosen: dict[str, str] = {}
        for directory in _MODPROBE_DIRS:
            full = self.path(*directory.split("/"))
            for name in Sysfs.list_dir(full):
                if name.endswith(".conf") and name not in chosen:
                    chosen[name] = os.path.join(full, name)
        lines: list[tuple[str, int, str]] = []
        for name in sorted(chosen):
            for number, line in enumerate(self.read_lines(chosen[name]), 1):
                text = line.split("#", 1)[0].strip()
                if text:
                    lines.append((chosen[name], number, text))
        return lines

    def modprobe_path(self) -> Optional[str]:
        """Where modprobe is on the host, as a path inside the host root (``/sbin/modprobe``)."""
        for candidate in _MODPROBE_LOCATIONS:
            if os.path.lexists(self.path(*candidate.strip("/").split("/"))):
                return candidate
        return None


_KO = re.compile(r"\.ko(\.(xz|zst|gz))?$")
_MODPROBE_DIRS = (
    "etc/modprobe.d",
    "run/modprobe.d",
    "usr/local/lib/modprobe.d",
    "lib/modprobe.d",
    "usr/lib/modprobe.d",
)
_MODPROBE_LOCATIONS = ("/sbin/modprobe", "/usr/sbin/modprobe", "/bin/modprobe", "/usr/bin/modprobe")


def module_name(path: str) -> str:
    """``kernel/drivers/vfio/pci/vfio-pci.ko.zst`` -> ``vfio_pci`` (kmod's normalisation)."""
    return _KO.sub("", os.path.basename(path.strip())).replace("-", "_")


def _parse_kernel_config(lines: list[str]) -> dict[str, str]:
    config: dict[str, str] = {}
    for line in lines:
        if line.startswith("CONFIG_"):
            key, sep, value = line.partition("=")
            if sep:
                config[key.strip()] = value.strip().strip('"')
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            config[line[2 : -len(" is not set")]] = "n"
    return config
