"""``--log-format json``: one JSON object per line on stderr, every value redacted.

Each line has ``ts`` (UTC, ISO 8601, milliseconds), ``level``, ``event`` (what happened:
``retry``, ``token_obtained``, ``summary``, ``error``, ... or ``log`` for a plain message) and
``message``; then the event's fields (``batch``, ``status``, ``attempt``, ``wait_s``, ``key``,
...). Every string passes :func:`asyncsync._redact.redact`: no token or secret, at any level.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any, Final

from .._redact import MASK, redact

__all__ = ["JsonFormatter", "json_line", "write_json_event"]

#: attributes every LogRecord has: anything else on a record came through ``extra=``
_RECORD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "", None, None)).keys()
) | {"message", "asctime"}


#: a field whose name says it holds a credential is masked whatever its value looks like
_SECRET_KEY: Final = re.compile(r"(?i)token|secret|password|authorization|credential|api_?key")


def _clean(value: Any, key: str = "") -> Any:
    if key and _SECRET_KEY.search(key) and value is not None:
        return MASK
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): _clean(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


def json_line(
    level: str, event: str, message: str, fields: Mapping[str, Any] | None = None, *, ts: float
) -> str:
    """One redacted JSON object (no newline)."""
    data: dict[str, Any] = {
        "ts": dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "event": event,
        "message": redact(message),
    }
    for key, value in (fields or {}).items():
        if key not in data:
            data[key] = _clean(value, key)
    return json.dumps(data, ensure_ascii=False, allow_nan=False, default=str)


def write_json_event(
    level: str, event: str, message: str, fields: Mapping[str, Any] | None = None
) -> None:
    """Write one event line to stderr now (errors, warnings and the summary the CLI prints)."""
    import time

    sys.stderr.write(json_line(level, event, message, fields, ts=time.time()) + "\n")
    sys.stderr.flush()


class JsonFormatter(logging.Formatter):
    """A log record as one JSON line: ``extra=`` fields become fields, ``event`` included."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and k != "event"}
        fields["logger"] = record.name
        if record.exc_text:
            fields["exc"] = record.exc_text
        elif record.exc_info and record.exc_info[1] is not None:
            fields["exc"] = self.formatException(record.exc_info)
        event = getattr(record, "event", None)
        return json_line(
            record.levelname,
            event if isinstance(event, str) else "log",
            record.getMessage(),
            fields,
            ts=record.created,
        )
