"""structlog, configured once: events on stderr, JSON when stderr is not a terminal.

stdout carries data (tables, JSON); logs never go there, so ``status --json | jq`` works.

structlog is imported on the first event, not at start-up: importing it pulls in asyncio
(~30 ms), and read-only commands such as ``status`` usually log nothing. Modules take a
logger with :func:`get_logger` at import time at no cost.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

_settings: dict[str, Any] = {"fmt": "auto", "verbosity": 0, "stream": None}
_configured = False


def configure(fmt: str = "auto", verbosity: int = 0, stream: TextIO | None = None) -> None:
    """``verbosity``: -1 warnings only, 0 info, 1+ debug. Applied at the first event."""
    global _configured  # noqa: PLW0603 - one process-wide logging setup, by design
    _settings.update(fmt=fmt, verbosity=verbosity, stream=stream)
    _configured = False


def _apply() -> None:
    global _configured  # noqa: PLW0603
    import structlog

    out = _settings["stream"] if _settings["stream"] is not None else sys.stderr
    verbosity = _settings["verbosity"]
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    fmt = _settings["fmt"]
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=out.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    _configured = True


class Logger:
    """A named logger that configures and imports structlog on its first event."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _emit(self, method: str, event: str, fields: dict[str, Any]) -> None:
        if not _configured:
            _apply()
        import structlog

        getattr(structlog.get_logger(self.name), method)(event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit("error", event, fields)


def get_logger(name: str) -> Logger:
    return Logger(name)
