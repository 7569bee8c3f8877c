"""systemd's notify protocol: one datagram to ``$NOTIFY_SOCKET`` per message.

Why: a ``Type=notify`` unit lets units ordered after vfio-manager (a VM, a device plugin)
start only once the devices are on vfio-pci (``READY=1``), shows the daemon's own summary in
``systemctl status`` (``STATUS=``), restarts a daemon whose loop stopped turning
(``WATCHDOG=1`` at half of ``WatchdogSec``) and knows a stop is under way (``STOPPING=1``).

Why no library: the protocol is newline-separated ``KEY=VALUE`` lines in one ``AF_UNIX``
datagram to the socket named by ``$NOTIFY_SOCKET``, a filesystem path or, when it starts
with ``@``, an abstract name. That is a dozen lines; a dependency would be more.

Without ``$NOTIFY_SOCKET`` (not under systemd, or in Kubernetes) every call is a no-op. A send
that fails is logged once and never raised: systemd going away must not stop the daemon.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Optional, Union

from vfio_manager.log import get_logger

log = get_logger("vfio_manager.daemon.notify")

Address = Union[str, bytes]


def socket_address(value: str) -> Optional[Address]:
    """``$NOTIFY_SOCKET`` as a ``sendto`` address; ``None`` for forms we do not speak.

    ``@name`` is an abstract socket (a leading NUL byte); an absolute path is a file.
    systemd's newer ``vsock:`` addresses are not supported (they are for VMs, not for us).
    """
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(env: Mapping[str, str], pid: Optional[int] = None) -> Optional[float]:
    """Seconds between ``WATCHDOG=1`` pings: half of ``$WATCHDOG_USEC``, as sd_watchdog_enabled.

    ``None`` when the watchdog is off, the value is not a positive integer, or
    ``$WATCHDOG_PID`` names another process (the variables were inherited, not meant for us).
    """
    usec = env.get("WATCHDOG_USEC", "")
    if not (usec.isascii() and usec.isdigit()) or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner is not None:
        me = os.getpid() if pid is None else pid
        if not (owner.isascii() and owner.isdigit()) or int(owner) != me:
            return None
    return int(usec) / 2 / 1_000_000


class Notifier:
    """Sends notify messages; every method returns whether the message went out."""

    def __init__(self, address: Optional[Address], watchdog: Optional[float] = None) -> None:
        self.address = address
        self.watchdog_interval = watchdog
        self._sock: Optional[socket.socket] = None
        self._warned = False

    @classmethod
    def from_environment(
        cls, env: Optional[Mapping[str, str]] = None, *, pid: Optional[int] = None
    ) -> Notifier:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        address = socket_address(raw) if raw else None
        if raw and address is None:
            log.warning("NOTIFY_SOCKET not understood; systemd is not told", value=raw)
        return cls(address, watchdog_interval(env, pid) if address is not None else None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        if self.address is None or not assignments:
            return False
        payload = "\n".join(a.replace("\n", " ") for a in assignments).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(payload, self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning(
                    "sd_notify failed; systemd is not told (said once)",
                    socket=self._printable(),
                    error=exc.strerror,
                )
            return False
        return True

    def ready(self, status: Optional[str] = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self, status: Optional[str] = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _printable(self) -> str:
        if isinstance(self.address, bytes):
            return "@" + self.address[1:].decode("utf-8", "replace")
        return str(self.address)


__all__ = ["Notifier", "socket_address", "watchdog_interval"]
