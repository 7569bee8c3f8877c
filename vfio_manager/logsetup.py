"""structlog configured once: events on stderr, JSON when stderr is not a terminal.

stdout carries data (tables, JSON); logs never go there, so ``status --json | jq`` works.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

import structlog

LOG_FORMATS = ("auto", "json", "console")


def configure(fmt: str = "auto", verbosity: int = 0, stream: TextIO | None = None) -> None:
    """``verbosity``: -1 warnings only, 0 info, 1+ debug."""
    out = stream if stream is not None else sys.stderr
    level = logging.DEBUG if verbosity > 0 else logging.WARNING if verbosity < 0 else logging.INFO
    use_console = fmt == "console" or (fmt == "auto" and out.isatty())
    renderer: structlog.types.Processor = (
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
