"""The uevent parser on kernel-format bytes, the datagram source on real sockets, and
``wait_for`` (``status --check --wait``): woken by uevents, slow poll as fallback.
"""

from __future__ import annotations

import errno
import select
import socket

import pytest

from tests.harness.uevents import datagram, driver_event, libudev_message, pci_event
from tests.support import AdvancingWaiter, FakeClock, open_uevent_pair
from vfio_manager.daemon import service
from vfio_manager.kernel import uevents
from vfio_manager.kernel.uevents import DatagramUeventSource, Uevent, parse_uevent, wait_for


def test_add_of_a_pci_function() -> None:
    event = parse_uevent(pci_event("add", "0000:03:00.0", seqnum=1234))
    assert event == Uevent(
        action="add",
        devpath="/devices/pci0000:00/0000:00:02.0/0000:03:00.0",
        subsystem="pci",
        bdf="0000:03:00.0",
        driver=None,
        seqnum=1234,
    )
    assert event.is_pci_function
    assert event.relevant


def test_bind_carries_the_driver_and_unbind_does_not() -> None:
    bind = parse_uevent(pci_event("bind", "0000:5e:00.0", driver="vfio-pci"))
    unbind = parse_uevent(pci_event("unbind", "0000:5e:00.0"))
    assert bind is not None
    assert unbind is not None
    assert (bind.action, bind.bdf, bind.driver) == ("bind", "0000:5e:00.0", "vfio-pci")
    assert (unbind.action, unbind.driver) == ("unbind", None)


@pytest.mark.parametrize("action", ["add", "remove", "bind", "unbind", "change"])
def test_every_pci_action_is_relevant(action: str) -> None:
    event = parse_uevent(pci_event(action))
    assert event is not None
    assert event.relevant


def test_other_actions_and_subsystems_are_not_relevant() -> None:
    online = parse_uevent(pci_event("online"))
    net = parse_uevent(
        datagram(
            "add",
            "/devices/virtual/net/veth0",
            [("ACTION", "add"), ("SUBSYSTEM", "net"), ("INTERFACE", "veth0")],
        )
    )
    assert online is not None
    assert not online.relevant
    assert net is not None
    assert (net.bdf, net.relevant) == (None, False)


def test_a_pci_driver_appearing_is_relevant_but_names_no_function() -> None:
    event = parse_uevent(driver_event("add", "vfio-pci"))
    assert event is not None
    assert event.is_pci_driver
    assert event.bdf is None
    other_bus = parse_uevent(
        datagram("add", "/bus/usb/drivers/hub", [("ACTION", "add"), ("SUBSYSTEM", "drivers")])
    )
    assert other_bus is not None
    assert not other_bus.relevant


def test_udev_messages_are_ignored() -> None:
    assert parse_uevent(libudev_message()) is None


@pytest.mark.parametrize(
    "data",
    [b"", b"\0", b"no at sign\0", b"@/devices/x\0", b"add@relative/path\0", b"\xff\xfe@\x00"],
)
def test_garbage_is_not_an_event(data: bytes) -> None:
    assert parse_uevent(data) is None


def test_a_forged_slot_name_never_becomes_a_bdf() -> None:
    data = datagram(
        "add",
        "/devices/pci0000:00/../../etc",
        [("ACTION", "add"), ("SUBSYSTEM", "pci"), ("PCI_SLOT_NAME", "../../etc/passwd")],
    )
    event = parse_uevent(data)
    assert event is not None
    assert event.bdf is None
    assert not event.relevant


def test_the_bdf_falls_back_to_the_devpath_and_is_canonical() -> None:
    data = datagram(
        "remove",
        "/devices/pci0000:00/0000:00:02.0/0000:0A:00.1",
        [("ACTION", "remove"), ("SUBSYSTEM", "pci"), ("SEQNUM", "²")],
    )
    event = parse_uevent(data)
    assert event is not None
    assert event.bdf == "0000:0a:00.1"
    assert event.seqnum is None


def test_properties_without_a_value_separator_are_skipped() -> None:
    data = b"bind@/devices/pci0000:00/0000:00:03.0\0junk\0=novalue\0SUBSYSTEM=pci\0DRIVER=e1000e\0"
    event = parse_uevent(data)
    assert event is not None
    assert (event.bdf, event.driver) == ("0000:00:03.0", "e1000e")


def test_the_source_returns_relevant_events_in_order(
    uevent_pair: tuple[socket.socket, DatagramUeventSource],
) -> None:
    sender, source = uevent_pair
    for data in (
        pci_event("unbind", "0000:03:00.0"),
        libudev_message(),
        datagram("add", "/devices/virtual/net/x", [("SUBSYSTEM", "net")]),
        pci_event("bind", "0000:03:00.0", driver="rebellions"),
        driver_event("add", "vfio-pci"),
    ):
        sender.send(data)
    poller = select.poll()
    poller.register(source.fileno(), select.POLLIN)
    assert poller.poll(1000), "the descriptor is readable while datagrams wait"
    batch = source.read_pending()
    assert [(e.action, e.bdf, e.driver) for e in batch.events] == [
        ("unbind", "0000:03:00.0", None),
        ("bind", "0000:03:00.0", "rebellions"),
        ("add", None, None),
    ]
    assert not batch.overflowed
    assert not batch.closed
    assert poller.poll(0) == [], "drained: the descriptor is quiet again"
    assert source.read_pending().events == ()


def test_kernel_only_drops_datagrams_not_sent_by_the_kernel() -> None:
    sender, source = open_uevent_pair(kernel_only=True)
    try:
        sender.send(pci_event("add"))
        assert source.read_pending().events == ()
    finally:
        sender.close()
        source.close()


class _OverflowingSocket:
    """recvfrom: ENOBUFS once (the kernel dropped events), then one event, then empty."""

    def __init__(self) -> None:
        self.answers: list[object] = [
            OSError(errno.ENOBUFS, "No buffer space available"),
            (pci_event("add", "0000:04:00.0"), (0, 1)),
        ]

    def setblocking(self, flag: bool) -> None:
        assert flag is False

    def recvfrom(self, size: int) -> tuple[bytes, object]:
        if not self.answers:
            raise BlockingIOError(errno.EAGAIN, "empty")
        answer = self.answers.pop(0)
        if isinstance(answer, OSError):
            raise answer
        assert isinstance(answer, tuple)
        return answer


def test_an_overflow_is_reported_so_the_caller_resyncs() -> None:
    source = DatagramUeventSource(_OverflowingSocket(), kernel_only=True)  # type: ignore[arg-type]
    batch = source.read_pending()
    assert batch.overflowed
    assert [e.bdf for e in batch.events] == ["0000:04:00.0"]


def test_the_real_netlink_socket_opens_and_is_pollable() -> None:
    """Receive-only: binding to the kernel's group changes nothing on the machine."""
    try:
        source = uevents.open_kernel_uevents()
    except OSError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES, errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            pytest.skip(f"netlink uevents not allowed here: {exc}")
        raise
    try:
        poller = select.poll()
        poller.register(source.fileno(), select.POLLIN)
        poller.poll(0)
        batch = source.read_pending()
        assert not batch.closed
        assert all(e.relevant for e in batch.events)
    finally:
        source.close()


def test_an_unopenable_socket_means_resync_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(receive_buffer: int = 0) -> DatagramUeventSource:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    warnings: list[tuple[str, dict[str, object]]] = []
    monkeypatch.setattr(service, "open_kernel_uevents", refuse)
    monkeypatch.setattr(service.log, "warning", lambda event, **kw: warnings.append((event, kw)))
    assert service.open_uevent_source(60.0) is None
    assert len(warnings) == 1
    assert warnings[0][1]["errno"] == "EPERM"


# -- waiting for a condition: woken by uevents, slow poll as fallback --------------------------
class Condition:
    """True once ``bound`` is set; counts how often it was read (each read is a sysfs read)."""

    def __init__(self) -> None:
        self.bound = False
        self.reads = 0

    def __call__(self) -> bool:
        self.reads += 1
        return self.bound


def test_already_true_returns_at_once() -> None:
    clock = FakeClock()
    condition = Condition()
    condition.bound = True
    waiter = AdvancingWaiter(clock)
    assert wait_for(condition, timeout=300, source=None, clock=clock, waiter=waiter)
    assert waiter.timeouts == []


def test_a_bind_uevent_ends_the_wait_without_waiting_for_the_poll(
    uevent_pair: tuple[socket.socket, DatagramUeventSource],
) -> None:
    sender, source = uevent_pair
    clock = FakeClock()
    condition = Condition()
    sender.send(datagram("add", "/devices/virtual/net/x", [("SUBSYSTEM", "net")]))
    sender.send(pci_event("bind", "0000:03:00.0", driver="vfio-pci"))

    def bound_by_now() -> bool:  # false at the first read, true once the bind is in
        condition()
        return condition.reads > 1

    waiter = AdvancingWaiter(clock)
    assert wait_for(bound_by_now, timeout=300, source=source, clock=clock, waiter=waiter)
    assert clock.now == 1000.0, "no time passed: the event woke it, not the 5 s poll"
    assert condition.reads == 2


def test_irrelevant_datagrams_do_not_reread_sysfs(
    uevent_pair: tuple[socket.socket, DatagramUeventSource],
) -> None:
    sender, source = uevent_pair
    clock = FakeClock()
    condition = Condition()
    sender.send(datagram("add", "/devices/virtual/net/x", [("SUBSYSTEM", "net")]))
    waiter = AdvancingWaiter(clock)
    assert not wait_for(
        condition, timeout=10, source=source, clock=clock, waiter=waiter, poll_interval=5
    )
    assert condition.reads == 4, "first, two slow polls, last"


def test_without_uevents_it_polls_slowly_until_the_deadline() -> None:
    clock = FakeClock()
    condition = Condition()
    waiter = AdvancingWaiter(clock)
    assert not wait_for(
        condition, timeout=12, source=None, clock=clock, waiter=waiter, poll_interval=5
    )
    assert waiter.timeouts == [5, 5, 2]
    assert clock.now == pytest.approx(1012)


def test_the_slow_poll_catches_a_missed_event() -> None:
    clock = FakeClock()
    condition = Condition()

    class FlipsLater(AdvancingWaiter):
        def wait(self, fds: object, timeout: float) -> set[int]:
            if len(self.timeouts) == 1:
                condition.bound = True
            return super().wait(fds, timeout)  # type: ignore[arg-type]

    waiter = FlipsLater(clock)
    assert wait_for(condition, timeout=300, source=None, clock=clock, waiter=waiter)
    assert clock.now == pytest.approx(1010)
