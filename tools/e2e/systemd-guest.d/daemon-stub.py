#!/usr/bin/python3
"""A stand-in for `vfio-manager daemon`, for `tools/e2e/systemd-guest --daemon stub` ONLY.

It is not the daemon and proves nothing about it. It lets the daemon checks of driver.py run
before the CLI has a `daemon` command, against vfio-manager.service's real settings (Type=notify,
NotifyAccess=main, the watchdog, KillMode, the sandbox): it binds with `vfio-manager bind-all`,
then speaks the notify protocol as docs/daemon.md describes (READY=1, STATUS=, WATCHDOG=1 every
half of WATCHDOG_USEC, STOPPING=1), resyncs on SIGHUP and exits 0 on SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading


def notify(message: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), address)


def bind_all() -> int:
    argv = ["vfio-manager", "bind-all", "--no-load-modules", *sys.argv[1:]]
    return subprocess.run(argv, check=False).returncode


def main() -> int:
    wake = threading.Event()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: (stop.set(), wake.set()))
    signal.signal(signal.SIGHUP, lambda *_: wake.set())
    notify("STATUS=stub: first bind under way")
    status = bind_all()
    notify(f"READY=1\nSTATUS=stub: bind-all exited {status}")
    interval = int(os.environ.get("WATCHDOG_USEC", "0")) / 2e6 or 60.0
    while not stop.is_set():
        notify("WATCHDOG=1")
        if wake.wait(interval) and not stop.is_set():
            wake.clear()
            notify(f"STATUS=stub: resync, bind-all exited {bind_all()}")
    notify("STOPPING=1\nSTATUS=stub: stopping (SIGTERM)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
