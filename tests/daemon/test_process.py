"""The loop as a separate process: real signals, a real notify socket, the real uevent socket.

One process per test, bounded waits only (a READY=1 datagram, the process's exit).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.daemon.fakes import Listener

DAEMON = """
import sys
from vfio_manager.daemon.health import Notifier, ReadyFile
from vfio_manager.daemon.loop import LoopSettings, ReconcileLoop
from vfio_manager.daemon.reconciler import FunctionState, ReconcileOutcome, State
from vfio_manager.daemon.service import open_uevent_source

def reconcile(request):
    return ReconcileOutcome((FunctionState("0000:03:00.0", State.CONVERGED),))

loop = ReconcileLoop(
    reconcile,
    source=open_uevent_source(3600),
    settings=LoopSettings(resync_interval=3600),
    notifier=Notifier.from_environment(),
    ready_file=ReadyFile(sys.argv[1]),
    on_exit=lambda: print("on_exit ran", flush=True),
)
loop.install_signal_handlers()
sys.exit(loop.run())
"""


def test_sighup_resyncs_and_sigterm_exits_0_with_stopping(tmp_path: Path) -> None:
    systemd = Listener(str(tmp_path / "notify.sock"))
    ready = tmp_path / "ready"
    env = {**os.environ, "NOTIFY_SOCKET": systemd.env_value}
    process = subprocess.Popen(
        [sys.executable, "-c", DAEMON, str(ready)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert systemd.message() == ["STATUS=starting: first reconcile under way"]
        assert systemd.message() == ["READY=1", "STATUS=converged: 1 converged"]
        assert ready.exists()
        process.send_signal(signal.SIGHUP)
        assert systemd.message() == ["STATUS=converged: 1 converged"], "resynced at once"
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
        elapsed = time.monotonic() - sent
        assert process.returncode == 0, err
        assert systemd.message() == ["STOPPING=1", "STATUS=stopping (SIGTERM)"]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        systemd.close()
    assert "on_exit ran" in out
    assert not ready.exists()
    print(f"SIGTERM to exit: {elapsed * 1000:.0f} ms")


def test_the_loop_loads_neither_prometheus_nor_http_server() -> None:
    """Cold start: only --listen pays for prometheus-client and http.server."""
    probe = (
        "import sys\n"
        "import vfio_manager.daemon.loop, vfio_manager.safety.intents, "
        "vfio_manager.safety.lock, vfio_manager.kernel.uevents\n"
        "print(sorted(m for m in ('prometheus_client', 'http.server', 'structlog') "
        "if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
