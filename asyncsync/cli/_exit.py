"""Exit codes, and the one mapping from an error that ended a run to its exit code.

From the contract in DESIGN.md::

    0  every record delivered
    1  the run finished, some records were dead-lettered
    2  usage, configuration or unreadable input (ConfigError, SourceError, CheckpointError)
    3  authentication failed (AuthError), or the server's TLS certificate was refused
       (TLSError: a ConfigError too, but checked first; the message names --ca-bundle)
    4  interrupted or aborted; resumable from the checkpoint (Interrupted, a crash)

Errors are one line on stderr, ``asyncsync: error: <TypeName>: <message>``, redacted.
"""

from __future__ import annotations

import sys
import traceback
from typing import Final

from .._exceptions import (
    AsyncSyncError,
    AuthError,
    CheckpointError,
    ConfigError,
    SourceError,
)
from .._redact import redact
from .._summary import Interrupted, RunSummary

__all__ = [
    "EXIT_AUTH",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_ORDER",
    "EXIT_USAGE",
    "PROG",
    "exit_code",
    "merge_exit_codes",
    "print_error",
    "summary_exit_code",
]

PROG: Final = "asyncsync"
EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_AUTH: Final = 3
EXIT_INTERRUPTED: Final = 4
#: worst first: authentication failed, usage/config/input, interrupted, some failed, ok
EXIT_ORDER: Final = (EXIT_AUTH, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_FAILED, EXIT_OK)

_EXIT_CODES: Final[tuple[tuple[type[BaseException], int], ...]] = (
    (ConfigError, EXIT_USAGE),
    (SourceError, EXIT_USAGE),
    (CheckpointError, EXIT_USAGE),
    (AuthError, EXIT_AUTH),
    (Interrupted, EXIT_INTERRUPTED),
    (KeyboardInterrupt, EXIT_INTERRUPTED),
)


def exit_code(exc: BaseException) -> int:
    """The contract's exit code for an error that ended a run (4, aborted, for the unknown)."""
    # a refused certificate: 3, before ConfigError's 2 (issue 13). Looked up, not imported:
    # this module stays free of the HTTP stack, and no TLSError exists before it is loaded
    http = sys.modules.get("asyncsync._http")
    if http is not None and isinstance(exc, http.TLSError):
        return EXIT_AUTH
    for kind, code in _EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return EXIT_INTERRUPTED


def summary_exit_code(summary: RunSummary) -> int:
    """The exit code of a run that ended without an error."""
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if summary.records_failed else EXIT_OK


def merge_exit_codes(codes: list[int]) -> int:
    """The worst exit code by :data:`EXIT_ORDER`; an unknown code counts as 4 (aborted)."""
    known = [c if c in EXIT_ORDER else EXIT_INTERRUPTED for c in codes]
    for code in EXIT_ORDER:
        if code in known:
            return code
    return EXIT_OK


def print_error(
    exc: BaseException,
    *,
    verbosity: int = 0,
    stopped_by: str = "Ctrl-C",
    log_format: str = "text",
) -> None:
    """One redacted line on stderr (with -vv, the traceback of an unexpected error first);
    with ``log_format="json"`` one JSON ``error`` event (the traceback a field of it)."""
    if isinstance(exc, KeyboardInterrupt):
        kind, text = "Interrupted", f"stopped by {stopped_by}"
    else:
        kind, text = type(exc).__name__, str(exc)
    trace = None
    if verbosity >= 2 and not isinstance(exc, AsyncSyncError | KeyboardInterrupt):
        trace = "".join(traceback.format_exception(exc))
    if log_format == "json":
        from ._jsonlog import write_json_event

        fields: dict[str, object] = {"error": kind, "exit_code": exit_code(exc)}
        if trace is not None:
            fields["traceback"] = trace
        write_json_event("ERROR", "error", text, fields)
        return
    if trace is not None:
        sys.stderr.write(redact(trace))
    sys.stderr.write(f"{PROG}: error: {redact(f'{kind}: {text}')}\n")
