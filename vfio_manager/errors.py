"""Errors as values, each with an exit code and a remedy; only the CLI prints or exits."""

from __future__ import annotations

import enum
import errno as errno_mod
import os
from typing import Any, Optional


class ExitCode(enum.IntEnum):
    """Process exit codes, documented in ``--help`` and docs/cli.md."""

    OK = 0
    FAILED = 1  # a function failed, was refused, or is not converged
    USAGE = 2  # bad command line: unknown option, malformed BDF or ID
    HOST_NOT_READY = 3  # IOMMU off, vfio modules missing: nothing was written
    INTERRUPTED = 130  # SIGINT (128 + 2): the functions in flight finished, none started after
    TERMINATED = 143  # SIGTERM (128 + 15): the same


class VfioManagerError(Exception):
    """Base of every error the tool reports; keeps the context it was raised with."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(
        self,
        message: str,
        *,
        remedy: Optional[str] = None,
        bdf: Optional[str] = None,
        step: Optional[str] = None,
        path: Optional[str] = None,
        errno: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.message, self.remedy, self.bdf = message, remedy, bdf
        self.step, self.path, self.errno = step, path, errno

    def details(self) -> dict[str, Any]:
        """What the ``--json`` error document adds to the message and remedy."""
        return {} if self.bdf is None else {"bdf": self.bdf}


class UsageError(VfioManagerError):
    """The command line cannot be acted on (malformed BDF, bad ID): nothing was read or written."""

    exit_code = ExitCode.USAGE


class HostNotReadyError(VfioManagerError):
    """The host cannot give a function to a VM (IOMMU off, vfio missing): nothing was written."""

    exit_code = ExitCode.HOST_NOT_READY


class DeviceNotFoundError(VfioManagerError):
    """A named function does not exist (or vanished between two steps)."""


class NotSelectedError(VfioManagerError):
    """A named function is outside the vendor/class/ID selection, so the tool will not touch it."""


class SysfsWriteError(VfioManagerError):
    """The kernel rejected a write; ``errno`` is the kernel's answer."""

    @classmethod
    def from_os_error(cls, exc: OSError, *, path: str, data: str) -> SysfsWriteError:
        code = exc.errno if exc.errno is not None else errno_mod.EIO
        name = errno_mod.errorcode.get(code, str(code))
        detail = exc.strerror or os.strerror(code)  # the writer's own words when it has some
        message = f"writing {data.strip()!r} to {path} failed: {name} ({detail})"
        return cls(message, path=path, errno=code)


class TransitionError(VfioManagerError):
    """A function did not reach the driver it was sent to (verification after probe failed)."""
