"""The kernel's own uevents (netlink group 1, no udev) for PCI functions and PCI drivers:
the socket, the parser, and a wait they wake up. Receive-only."""

from __future__ import annotations

import contextlib
import errno as errno_mod
import math
import select
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Optional, Protocol

from vfio_manager.kernel.address import PciAddress
from vfio_manager.log import get_logger

log = get_logger("vfio_manager.kernel.uevents")

_NETLINK_KOBJECT_UEVENT = 15  # linux/netlink.h; not in the socket module
PCI_ACTIONS = frozenset({"add", "remove", "bind", "unbind", "change"})
_SO_RCVBUFFORCE = 33  # asm-generic/socket.h; needs CAP_NET_ADMIN, else SO_RCVBUF
_RECEIVE_BUFFER = 1 << 20  # a hot-plug storm queues instead of overflowing
_DATAGRAM_MAX = 16384  # the kernel's uevent buffer is 2 KiB
_DRAIN_LIMIT = 1024  # datagrams per read; the rest wait for the next wakeup
_POLL_INTERVAL = 5.0  # seconds between checks without an event: events are only a hint


@dataclass(frozen=True)
class Uevent:
    """``bdf``: the validated address of a PCI function, else ``None``; ``driver`` on bind."""

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
        driver = self.subsystem == "drivers" and self.devpath.startswith("/bus/pci/drivers/")
        return driver and self.action in ("add", "remove")

    @property
    def relevant(self) -> bool:
        return self.is_pci_function or self.is_pci_driver


def parse_uevent(data: bytes) -> Optional[Uevent]:
    """One datagram (``ACTION@DEVPATH`` then NUL-terminated ``KEY=VALUE``s); ``None`` for
    udev's messages and garbage. Never raises: malformed fields are skipped or ``None``."""
    if not data or data.startswith(b"libudev"):
        return None
    header, *fields = data.split(b"\0")
    action, at, devpath = header.decode("utf-8", "replace").partition("@")
    if not at or not action or not devpath.startswith("/"):
        return None
    pairs = (raw.partition(b"=") for raw in fields)
    props = {
        k.decode("utf-8", "replace"): v.decode("utf-8", "replace") for k, eq, v in pairs if eq and k
    }
    devpath = props.get("DEVPATH", devpath)
    subsystem = props.get("SUBSYSTEM")
    slot = props.get("PCI_SLOT_NAME") or devpath.rsplit("/", 1)[-1]
    address = PciAddress.from_sysfs_name(slot) if subsystem == "pci" else None
    bdf = str(address) if address is not None else None
    seq = props.get("SEQNUM", "")
    seqnum = int(seq) if seq.isascii() and seq.isdigit() and len(seq) <= 20 else None
    driver = props.get("DRIVER") or None
    return Uevent(props.get("ACTION", action), devpath, subsystem, bdf, driver, seqnum)


@dataclass(frozen=True)
class UeventBatch:
    """One read: the relevant events; ``overflowed``: events were lost, re-read everything;
    ``closed``: the socket failed for good; ``datagrams``: how many arrived, relevant or not."""

    events: tuple[Uevent, ...] = ()
    overflowed: bool = False
    closed: bool = False
    datagrams: int = 0


class DatagramUeventSource:
    """Uevents from a datagram socket: the netlink socket (``kernel_only``: datagrams not sent
    by the kernel, port 0, are dropped) or a test's socketpair."""

    def __init__(self, sock: socket.socket, *, kernel_only: bool = False) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._kernel_only = kernel_only

    def fileno(self) -> int:
        return self._sock.fileno()

    def read_pending(self) -> UeventBatch:
        events: list[Uevent] = []
        overflowed, received = False, 0
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
            if self._kernel_only and not (isinstance(sender, tuple) and sender[:1] == (0,)):
                continue  # not from the kernel (port 0)
            event = parse_uevent(data)
            if event is not None and event.relevant:
                events.append(event)
        if overflowed:
            log.warning("uevents: the kernel dropped events (queue full); resyncing everything")
        return UeventBatch(tuple(events), overflowed, datagrams=received)

    def close(self) -> None:
        self._sock.close()


def open_kernel_uevents(receive_buffer: int = _RECEIVE_BUFFER) -> DatagramUeventSource:
    """The bound netlink socket; ``OSError`` when the kernel or a sandbox refuses it."""
    sock = socket.socket(
        socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC, _NETLINK_KOBJECT_UEVENT
    )
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, receive_buffer)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.bind((0, 1))  # group 1: the kernel's own events (udev re-broadcasts on 2)
    except BaseException:
        sock.close()
        raise
    return DatagramUeventSource(sock, kernel_only=True)


class Waiter(Protocol):
    """Blocks until one of ``fds`` is readable or ``timeout`` seconds pass; the readable ones."""

    def wait(self, fds: Sequence[int], timeout: float) -> set[int]: ...


class PollWaiter:
    """``poll(2)``, its timeout rounded up to whole milliseconds so it never wakes early."""

    def wait(self, fds: Sequence[int], timeout: float) -> set[int]:
        poller = select.poll()
        for fd in fds:
            poller.register(fd, select.POLLIN)
        return {fd for fd, _ in poller.poll(max(0, math.ceil(timeout * 1000)))}


def wait_for(
    condition: Callable[[], bool],
    *,
    timeout: float,
    source: Optional[DatagramUeventSource],
    poll_interval: float = _POLL_INTERVAL,
    clock: Callable[[], float] = time.monotonic,
    waiter: Optional[Waiter] = None,
) -> bool:
    """True as soon as ``condition()`` holds, False once ``timeout`` passes. It is checked at
    once, after each batch of relevant uevents, at least every ``poll_interval`` seconds
    (events are only a hint) and at the deadline."""
    wait = waiter if waiter is not None else PollWaiter()
    deadline = clock() + max(0.0, timeout)
    if condition():
        return True
    while (remaining := deadline - clock()) > 0:
        fds = [source.fileno()] if source is not None else []
        ready = wait.wait(fds, min(remaining, poll_interval))
        if source is not None and source.fileno() in ready:
            batch = source.read_pending()
            if batch.closed:
                source = None  # the slow poll only
            elif not batch.events and not batch.overflowed:
                continue  # nothing that could change the answer
        if condition():
            return True
    return condition()


def wait_with_uevents(condition: Callable[[], bool], *, timeout: float) -> bool:
    """:func:`wait_for` on the netlink socket, opened before the first check so no event is
    missed in between; without one, the slow poll."""
    try:
        source: Optional[DatagramUeventSource] = open_kernel_uevents()
    except OSError as exc:
        log.info(
            "uevents unavailable: polling instead", error=exc.strerror, poll_interval=_POLL_INTERVAL
        )
        source = None
    try:
        return wait_for(condition, timeout=timeout, source=source)
    finally:
        if source is not None:
            source.close()
