"""Per-record results in a 2xx/207 answer (``--results``): one item per record, in order.

Three readers, chosen by :func:`results_reader`:

``elasticsearch``
    the bulk API: ``{"errors": true, "items": [{"<op>": {"status": 201, "error": {...}}}]}``;
    each item is an object of one key (the operation) holding ``status`` and maybe ``error``.
``salesforce``
    sObject Collections: a top-level array of ``{"success": bool, "errors": [{"statusCode",
    "message"}]}``.
a dotted path
    the array at that path (``.`` for a top-level array, ``data.results`` for
    ``{"data": {"results": [...]}}``); an item fails when it has ``status`` >= 400,
    ``success: false``, or a non-empty ``error`` or ``errors``.

A failed item is *retryable* when its status is 408, 425, 429 or 5xx (Salesforce's
``REQUEST_LIMIT_EXCEEDED``, ``UNABLE_TO_LOCK_ROW`` and ``SERVER_UNAVAILABLE`` count as
retryable too); the sender re-sends those and dead-letters the others. An answer that is not
JSON, has no array where it should, or whose array length is not the batch's raises
:class:`ResultsError`: the sender never guesses which record an item belongs to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson

__all__ = [
    "RESULTS_BODY_LIMIT",
    "RETRYABLE_ITEM_STATUSES",
    "ItemResult",
    "ResultsError",
    "ResultsReader",
    "results_reader",
]

#: bytes of an answer read in results mode: the whole body is needed, a bulk answer of a
#: 5 MiB batch is a few MiB; past this the answer is an error, not guessed at
RESULTS_BODY_LIMIT: Final = 64 * 1024 * 1024
RETRYABLE_ITEM_STATUSES: Final = frozenset({408, 425, 429})
#: Salesforce error codes that mean "try again later", and the HTTP status they stand for
_SALESFORCE_TRANSIENT: Final = {
    "REQUEST_LIMIT_EXCEEDED": 429,
    "UNABLE_TO_LOCK_ROW": 503,
    "SERVER_UNAVAILABLE": 503,
}
_MESSAGE_LIMIT: Final = 500


class ResultsError(ValueError):
    """The answer cannot be read as one result per record of the batch."""


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One record's result: ``ok``, else its ``status`` (None when the item gave none) and
    ``message``; ``retryable`` when it may succeed if sent again."""

    ok: bool
    status: int | None = None
    message: str = ""

    @property
    def retryable(self) -> bool:
        s = self.status
        return s is not None and (s in RETRYABLE_ITEM_STATUSES or 500 <= s <= 599)


ResultsReader = Callable[[bytes, int], list[ItemResult]]
"""``reader(body, n)``: the ``n`` results of an answer to a batch of ``n`` records."""


def results_reader(spec: str) -> ResultsReader:
    """The reader for ``--results SPEC``; ValueError when ``spec`` is not one."""
    if spec == "elasticsearch":
        return _elasticsearch
    if spec == "salesforce":
        return _salesforce
    path = _parse_path(spec)
    return lambda body, n: _generic(body, n, path)


def _parse_path(spec: str) -> tuple[str, ...]:
    spec = spec.strip()
    if spec == ".":
        return ()
    parts = tuple(spec.removeprefix(".").split("."))
    if not spec or any(not p for p in parts):
        raise ValueError(
            f"expected elasticsearch, salesforce, or a dotted path to the results array "
            f"('.' for a top-level array, e.g. data.results), got {spec!r}"
        )
    return parts


def _load(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ResultsError(f"the answer is not JSON ({exc}; {len(body)} bytes read)") from None


def _array(doc: Any, path: Sequence[str], n: int) -> list[Any]:
    node = doc
    for i, name in enumerate(path):
        if not isinstance(node, dict) or name not in node:
            where = ".".join(path[:i]) or "the top level"
            raise ResultsError(f"no {name!r} in {where} of the answer")
        node = node[name]
    if not isinstance(node, list):
        where = ".".join(path) or "the answer"
        raise ResultsError(f"{where} is a {type(node).__name__}, not an array of results")
    if len(node) != n:
        where = ".".join(path) or "the answer"
        raise ResultsError(
            f"{where} holds {len(node)} results for a batch of {n} records: "
            "not matched to records, the whole batch counts as failed"
        )
    return node


def _text(value: Any) -> str:
    if isinstance(value, str):
        text = value
    else:
        text = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 3] + "..."


def _status(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _item(obj: Any) -> ItemResult:
    """The generic rule: fails on status >= 400, success false, or an error/errors."""
    if not isinstance(obj, dict):
        return ItemResult(False, None, f"result is not an object: {_text(obj)}")
    status = _status(obj.get("status"))
    error = obj.get("error")
    errors = obj.get("errors")
    failed = (
        (status is not None and status >= 400)
        or obj.get("success") is False
        or bool(error)
        or (isinstance(errors, list | dict) and bool(errors))
    )
    if not failed:
        return ItemResult(True, status)
    if status is None and isinstance(errors, list):
        for e in errors:
            if isinstance(e, dict):
                code = e.get("statusCode")
                status = _status(code)
                if status is None and isinstance(code, str):
                    status = _SALESFORCE_TRANSIENT.get(code)
                if status is not None:
                    break
    detail = error if error else errors if errors else obj
    prefix = f"status {status}: " if status is not None else ""
    return ItemResult(False, status, prefix + _text(detail))


def _generic(body: bytes, n: int, path: Sequence[str]) -> list[ItemResult]:
    return [_item(obj) for obj in _array(_load(body), path, n)]


def _elasticsearch(body: bytes, n: int) -> list[ItemResult]:
    doc = _load(body)
    items = _array(doc, ("items",), n)
    if isinstance(doc, dict) and doc.get("errors") is False:
        return [ItemResult(True)] * n  # the bulk API's own "nothing failed"
    out = []
    for obj in items:
        # {"index": {...}}: one key, the operation
        if isinstance(obj, dict) and len(obj) == 1:
            (op,) = obj.values()
            out.append(_item(op))
        else:
            out.append(ItemResult(False, None, f"not a bulk item: {_text(obj)}"))
    return out


def _salesforce(body: bytes, n: int) -> list[ItemResult]:
    out = []
    for obj in _array(_load(body), (), n):
        if isinstance(obj, dict) and obj.get("success") is True:
            out.append(ItemResult(True))
            continue
        errors = obj.get("errors") if isinstance(obj, dict) else None
        if not isinstance(obj, dict) or not isinstance(errors, list):
            out.append(_item(obj))
            continue
        status = None
        messages = []
        for e in errors:
            if not isinstance(e, dict):
                messages.append(_text(e))
                continue
            code = e.get("statusCode")
            if status is None:
                status = _status(code) or (
                    _SALESFORCE_TRANSIENT.get(code) if isinstance(code, str) else None
                )
            messages.append(f"{code}: {e.get('message', '')}" if code else _text(e))
        out.append(ItemResult(False, status, _text("; ".join(messages) or obj)))
    return out
