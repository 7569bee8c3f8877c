"""Kernel uevents for PCI functions: a netlink socket, a parser, and the source protocol.

Why uevents: a function that is hot-added, reset, removed or rebound by hand changes the
node behind a one-shot command's back. The kernel announces each of those on the
``NETLINK_KOBJECT_UEVENT`` netlink family, multicast group 1 (kernel events, before udev
sees them), so the daemon can re-plan just the affected functions within a debounce window
instead of polling sysfs.

Why no libudev: the kernel's own format is a few lines to parse, group 1 needs no udev
daemon (there is none in a container), and it reaches a privileged pod without
``hostNetwork`` when it has no user namespace (measured on 6.1; see docs/daemon.md).

The kernel's datagram is ``ACTION@DEVPATH`` followed by ``KEY=VALUE`` properties, each
terminated by a NUL byte. For a PCI function the properties include ``ACTION``,
``DEVPATH``, ``SUBSYSTEM=pci``, ``PCI_SLOT_NAME=<bdf>``, ``SEQNUM`` and, on ``bind``,
``DRIVER=<name>``. udev's re-broadcasts start with ``libudev`` (a binary header) and are
ignored: only the kernel's view is used.

A driver appearing on or leaving the PCI bus (``add@/bus/pci/drivers/vfio-pci``,
``SUBSYSTEM=drivers``) is also kept: loading vfio-pci or a native driver can make the host
ready or change where unbound functions go, so it asks for a full resync.

Receiving only: nothing is ever sent on this socket. If the kernel's queue overflows
(``ENOBUFS``), events were lost and the batch says so, so the caller resyncs everything.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import socket
from dataclasses import dataclass
from typing import Optional, Protocol

from vfio_manager.kernel.address import PciAddress
from vfio_manager.log import get_logger

log = get_logger("vfio_manager.daemon.uevents")

NETLINK_KOBJECT_UEVENT = 15
"""The netlink protocol number of kobject uevents (``linux/netlink.h``; not in ``socket``)."""

KERNEL_EVENTS_GROUP = 1
"""Multicast group of the kernel's own events (udev re-broadcasts on group 2)."""

PCI_ACTIONS = frozenset({"add", "remove", "bind", "unbind", "change"})
DRIVER_ACTIONS = frozenset({"add", "remove"})
PCI_DRIVERS_DEVPATH = "/bus/pci/drivers/"

_SO_RCVBUFFORCE = 33  # asm-generic/socket.h; needs CAP_NET_ADMIN, falls back to SO_RCVBUF
_RECEIVE_BUFFER = 1 << 20
_DATAGRAM_MAX = 16384  # the kernel's uevent buffer is 2 KiB; headroom for the header
_DRAIN_LIMIT = 1024  # datagrams per read_pending(); the rest wait for the next wakeup


@dataclass(frozen=True)
class Uevent:
    """The parts of a kernel uevent the daemon acts on.

    ``bdf`` is the canonical PCI address from ``PCI_SLOT_NAME`` (or the last component of
    ``DEVPATH``), validated, so it can safely name a function; ``None`` for anything that is
    not a PCI function. ``driver`` is set on ``bind`` (and on ``add``/``change`` of a bound
    function).
    """

    action: str
    devpath: str
    subsystem: Optional[str] = None
    bdf: Optional[str] = None
    driver: Optional[str] = None
    seqnum: Optional[int] = None

    @property
    def is_pci_function(self) -> bool:
        return self.subsystem == "pci" and self.bdf is not None and self.action in PCI_ACTIONS

    @property
    def is_pci_driver(self) -> bool:
        """A PCI driver registered or unregistered (a module loaded or unloaded)."""
        return (
            self.subsystem == "drivers"
            and self.devpath.startswith(PCI_DRIVERS_DEVPATH)
            and self.action in DRIVER_ACTIONS
        )

    @property
    def relevant(self) -> bool:
        return self.is_pci_function or self.is_pci_driver


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


def parse_uevent(data: bytes) -> Optional[Uevent]:
    """Parse one kernel uevent datagram; ``None`` for udev's messages and for garbage.

    Never raises: a malformed property is skipped, a malformed ``SEQNUM`` or
    ``PCI_SLOT_NAME`` becomes ``None``.
    """
    if not data or data.startswith(b"libudev"):
        return None
    header, *fields = data.split(b"\0")
    action, at, devpath = _text(header).partition("@")
    if not at or not action or not devpath.startswith("/"):
        return None
    props: dict[str, str] = {}
    for raw in fields:
        key, eq, value = raw.partition(b"=")
        if eq and key:
            props[_text(key)] = _text(value)
    action = props.get("ACTION", action)
    devpath = props.get("DEVPATH", devpath)
    subsystem = props.get("SUBSYSTEM")
    bdf: Optional[str] = None
    if subsystem == "pci":
        slot = props.get("PCI_SLOT_NAME") or devpath.rsplit("/", 1)[-1]
        address = PciAddress.from_sysfs_name(slot)
        bdf = str(address) if address is not None else None
    seq = props.get("SEQNUM", "")
    return Uevent(
        action=action,
        devpath=devpath,
        subsystem=subsystem,
        bdf=bdf,
        driver=props.get("DRIVER") or None,
        seqnum=int(seq) if seq.isascii() and seq.isdigit() and len(seq) <= 20 else None,
    )


@dataclass(frozen=True)
class UeventBatch:
    """What one :meth:`UeventSource.read_pending` found.

    ``overflowed``: the kernel dropped events (the socket's queue was full), so the caller
    must resync everything. ``closed``: the socket failed and will deliver nothing more; the
    caller stops watching it and relies on resync. ``datagrams``: how many were received,
    relevant or not (a source that is readable but yields none is misbehaving).
    """

    events: tuple[Uevent, ...] = ()
    overflowed: bool = False
    closed: bool = False
    datagrams: int = 0


class UeventSource(Protocol):
    """Where the daemon's events come from: a pollable descriptor and a non-blocking read."""

    def fileno(self) -> int: ...

    def read_pending(self) -> UeventBatch: ...

    def close(self) -> None: ...


class DatagramUeventSource:
    """Uevents from a datagram socket: the kernel's netlink socket, or a test's socketpair.

    With ``kernel_only`` (the netlink socket), a datagram whose sender is not the kernel
    (netlink port 0) is dropped; a test's ``AF_UNIX`` socketpair carries the same bytes
    without that check. Only relevant events (PCI functions, PCI drivers) are returned.
    """

    def __init__(self, sock: socket.socket, *, kernel_only: bool = False) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._kernel_only = kernel_only

    def fileno(self) -> int:
        return self._sock.fileno()

    def read_pending(self) -> UeventBatch:
        events: list[Uevent] = []
        overflowed = False
        received = 0
        for _ in range(_DRAIN_LIMIT):
            try:
                data, sender = self._sock.recvfrom(_DATAGRAM_MAX)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno_mod.ENOBUFS:
                    overflowed = True
                    continue
                log.warning("uevents: read failed", error=exc.strerror, errno=exc.errno)
                return UeventBatch(tuple(events), True, True, received)
            received += 1
            if self._kernel_only and not _from_kernel(sender):
                continue
            event = parse_uevent(data)
            if event is not None and event.relevant:
                events.append(event)
        if overflowed:
            log.warning("uevents: the kernel dropped events (queue full); resyncing everything")
        return UeventBatch(tuple(events), overflowed, datagrams=received)

    def close(self) -> None:
        self._sock.close()


def _from_kernel(sender: object) -> bool:
    """Netlink gives the sender as ``(port, groups)``; the kernel's port is 0."""
    return isinstance(sender, tuple) and len(sender) == 2 and sender[0] == 0


def open_kernel_uevents(receive_buffer: int = _RECEIVE_BUFFER) -> DatagramUeventSource:
    """Open and bind the netlink socket; ``OSError`` when the kernel or sandbox refuses.

    The receive buffer is raised (``SO_RCVBUFFORCE`` when privileged, ``SO_RCVBUF``
    otherwise) so a hot-plug storm queues instead of overflowing.
    """
    sock = socket.socket(
        socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, NETLINK_KOBJECT_UEVENT
    )
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, receive_buffer)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.bind((0, KERNEL_EVENTS_GROUP))
    except BaseException:
        sock.close()
        raise
    return DatagramUeventSource(sock, kernel_only=True)


def open_uevent_source(resync_interval: float) -> Optional[DatagramUeventSource]:
    """The kernel's uevents, or ``None`` after saying once why the daemon relies on resync."""
    try:
        return open_kernel_uevents()
    except OSError as exc:
        log.warning(
            "uevents unavailable: the node is re-read at each resync only",
            error=exc.strerror,
            errno=errno_mod.errorcode.get(exc.errno or 0),
            resync_interval=resync_interval,
            remedy="allow AF_NETLINK sockets (a seccomp or AppArmor profile may block them) and "
            "run without a user namespace, or lower --resync-interval",
        )
        return None


__all__ = [
    "KERNEL_EVENTS_GROUP",
    "NETLINK_KOBJECT_UEVENT",
    "PCI_ACTIONS",
    "DatagramUeventSource",
    "Uevent",
    "UeventBatch",
    "UeventSource",
    "open_kernel_uevents",
    "open_uevent_source",
    "parse_uevent",
]
