"""sd_notify messages, read from real AF_UNIX datagram sockets (path and abstract name)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.fakes import Listener
from vfio_manager.daemon.health import Notifier, watchdog_interval


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listener]:
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
    else:
        address = f"@vfio-manager-test-{os.getpid()}-{secrets.token_hex(4)}"
    listening = Listener(address)
    yield listening
    listening.close()


def test_each_message_arrives_as_one_datagram(listener: Listener) -> None:
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": listener.env_value})
    assert notifier.enabled
    assert notifier.ready("converged: 2 functions on vfio-pci")
    assert notifier.status("reconciling 0000:03:00.0\nand more")
    assert notifier.watchdog()
    assert notifier.stopping()
    assert listener.message() == ["READY=1", "STATUS=converged: 2 functions on vfio-pci"]
    assert listener.message() == ["STATUS=reconciling 0000:03:00.0 and more"]
    assert listener.message() == ["WATCHDOG=1"]
    assert listener.message() == ["STOPPING=1"]
    notifier.close()


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.ready() is False
    assert notifier.watchdog_interval is None


def test_a_vanished_socket_is_reported_once_and_never_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vfio_manager.daemon import health

    warnings: list[str] = []
    monkeypatch.setattr(health.log, "warning", lambda event, **kw: warnings.append(event))
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.status("one") is False
    assert notifier.status("two") is False
    assert len(warnings) == 1


@pytest.mark.parametrize("value", ["relative.sock", "@", "vsock:2:1234"])
def test_unsupported_addresses_disable_notify(value: str) -> None:
    assert not Notifier.from_environment({"NOTIFY_SOCKET": value}).enabled


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    env = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"}
    assert watchdog_interval(env) == 15.0
    assert Notifier.from_environment(env).watchdog_interval == 15.0


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "²"}, None),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "42"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "43"}, None),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_honours_watchdog_pid(env: dict[str, str], expected: object) -> None:
    assert watchdog_interval(env, pid=42) == expected
