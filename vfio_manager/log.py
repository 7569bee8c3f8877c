"""structlog, configured once: events on stderr (stdout is data), JSON unless on a terminal.
structlog (and asyncio with it, tens of ms) is imported on the first event at or above the
level: a command that logs nothing never pays for it."""

from __future__ import annotations

import sys
from typing import Any

# logging's levels (structlog's filtering logger uses them), without importing logging
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40

_format = "auto"
_level = INFO
_configured = False


def configure(fmt: str = "auto", verbosity: int = 0) -> None:
    """``verbosity``: -1 warnings only, 0 info, 1+ debug. Applied at the first event, to the
    ``sys.stderr`` of that moment."""
    global _format, _level, _configured  # noqa: PLW0603 - one process-wide logging setup
    _format, _configured = fmt, False
    _level = DEBUG if verbosity > 0 else WARNING if verbosity < 0 else INFO


def _apply() -> None:
    global _configured  # noqa: PLW0603
    import structlog

    out = sys.stderr
    if _format == "console" or (_format == "auto" and out.isatty()):
        renderer: Any = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    _configured = True


class Logger:
    """A named logger that configures and imports structlog on its first event."""

    def __init__(self, name: str) -> None:
        self.name = name

    def _emit(self, level: int, method: str, event: str, fields: dict[str, Any]) -> None:
        if level < _level:
            return  # what make_filtering_bound_logger(level) would drop, without structlog
        if not _configured:
            _apply()
        import structlog

        getattr(structlog.get_logger(self.name), method)(event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(ERROR, "error", event, fields)


get_logger = Logger
