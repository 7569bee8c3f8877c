"""structlog, configured once: events on stderr (stdout is data), JSON unless on a terminal.

structlog (and asyncio with it, tens of ms) is imported on the first event at or above the
level, so a command that logs nothing never pays for it; an event below the level is
dropped here, as structlog's filtering logger would drop it.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

# logging's levels (structlog's filtering logger uses them), without importing logging
DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40

_settings: dict[str, Any] = {"fmt": "auto", "verbosity": 0, "stream": None}
_configured = False
_level = INFO


def configure(fmt: str = "auto", verbosity: int = 0, stream: TextIO | None = None) -> None:
    """``verbosity``: -1 warnings only, 0 info, 1+ debug. Applied at the first event."""
    global _configured, _level  # noqa: PLW0603 - one process-wide logging setup, by design
    _settings.update(fmt=fmt, verbosity=verbosity, stream=stream)
    _level = _level_of(verbosity)
    _configured = False


def _level_of(verbosity: int) -> int:
    return DEBUG if verbosity > 0 else WARNING if verbosity < 0 else INFO


def _apply() -> None:
    global _configured  # noqa: PLW0603
    import structlog

    out = _settings["stream"] if _settings["stream"] is not None else sys.stderr
    level = _level_of(_settings["verbosity"])
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


def get_logger(name: str) -> Logger:
    return Logger(name)
