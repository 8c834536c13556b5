"""Keep secrets out of every text asyncsync writes: logs, errors, excerpts, files.

Secret values (client secrets, passwords, tokens) are registered as they become known; any
text leaving the process passes :func:`redact`. ``Bearer``/``Basic`` credentials and
``access_token``-like fields (JSON, forms, Python reprs) are masked by pattern even when their
value was never registered (a hostile server echoing the request, say).
"""

from __future__ import annotations

import logging
import re
import threading

__all__ = ["RedactingFilter", "redact", "register_secret"]

MASK = "***"
_MIN_SECRET_LEN = 4  # shorter values would mask ordinary words

_PATTERNS = re.compile(
    r"(?i)(?P<scheme>\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=\-]+"
    r"|(?P<field>[\"']?(?:access_token|refresh_token|id_token|session_token|client_secret|"
    r"password|token)[\"']?\s*[:=]\s*[\"']?)[^\s\"'&,}]+"
)

_lock = threading.Lock()
_secrets: set[str] = set()
_secrets_re: re.Pattern[str] | None = None


def register_secret(value: str | None) -> None:
    """Remember ``value`` so that :func:`redact` masks it wherever it appears."""
    global _secrets_re
    if not value or len(value) < _MIN_SECRET_LEN:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        # longest first, so a secret containing another is masked whole
        alternatives = sorted(_secrets, key=len, reverse=True)
        _secrets_re = re.compile("|".join(re.escape(s) for s in alternatives))


def _mask_match(m: re.Match[str]) -> str:
    prefix = m.group("scheme") or m.group("field") or ""
    return prefix + MASK


def redact(text: str) -> str:
    """``text`` with every registered secret and every credential-looking value masked."""
    secrets_re = _secrets_re
    if secrets_re is not None:
        text = secrets_re.sub(MASK, text)
    return _PATTERNS.sub(_mask_match, text)


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message (and drops args) of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = redact(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            # formatted lazily by the handler: pre-format and redact it here
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
