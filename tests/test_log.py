"""The logging facade: structlog only for an event that passes the level, and then a real one.

Each case runs in a fresh interpreter: this test process has imported structlog long ago.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from vfio_manager import log\n" + code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


@pytest.mark.parametrize(
    ("verbosity", "calls"),
    [(0, "debug"), (-1, "debug,info")],
)
def test_events_below_the_level_never_import_structlog(verbosity: int, calls: str) -> None:
    result = _run(
        "import sys\n"
        f"log.configure('json', {verbosity})\n"
        "logger = log.get_logger('vfio_manager.test')\n"
        f"for method in {calls.split(',')!r}:\n"
        "    getattr(logger, method)('quiet', bdf='0000:03:00.0')\n"
        "print(sorted(m for m in ('structlog', 'asyncio', 'logging') if m in sys.modules))"
    )
    assert result.stdout.strip() == "[]"
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("verbosity", "method", "level"),
    [(0, "info", "info"), (-1, "warning", "warning"), (1, "debug", "debug"), (0, "error", "error")],
)
def test_an_event_at_the_level_is_a_structlog_json_line(
    verbosity: int, method: str, level: str
) -> None:
    result = _run(
        f"log.configure('json', {verbosity})\n"
        f"log.get_logger('vfio_manager.test').{method}('moved', bdf='0000:03:00.0', writes=3)"
    )
    event = json.loads(result.stderr)
    assert event.pop("timestamp").endswith("Z")
    assert event == {"event": "moved", "bdf": "0000:03:00.0", "writes": 3, "level": level}
