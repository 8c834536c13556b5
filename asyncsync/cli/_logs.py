"""Logging for one command: the ``asyncsync`` loggers to stderr, through the redacting filter."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterable, Iterator
from typing import TextIO

from .._redact import RedactingFilter, register_secret
from ._exit import PROG
from ._jsonlog import JsonFormatter

__all__ = ["logging_to_stderr"]


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is now: the progress display redirects it, so that
    log lines print above the live bar instead of tearing it."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


@contextlib.contextmanager
def logging_to_stderr(
    verbosity: int, secrets: Iterable[str] = (), *, log_format: str = "text"
) -> Iterator[None]:
    """Route the ``asyncsync`` loggers to stderr for one command, through the redacting
    filter; -q: errors only, default: warnings, -v: info (each retry and refresh), -vv: debug.
    ``log_format="json"``: one JSON object per line (:mod:`._jsonlog`). Restores the logger
    on exit, so that embedding ``main()`` leaves no trace."""
    for secret in secrets:
        register_secret(secret)
    logger = logging.getLogger("asyncsync")
    handler = _StderrHandler()
    handler.addFilter(RedactingFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    elif verbosity >= 1:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    else:
        handler.setFormatter(logging.Formatter(f"{PROG}: %(levelname)s: %(message)s"))
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    saved = (logger.level, logger.propagate)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
