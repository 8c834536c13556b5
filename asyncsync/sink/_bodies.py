"""Request bodies: ``Content-Encoding`` decoding with a bound on the decoded size, the
record formats the ingest endpoint accepts (JSON array, NDJSON, ``{"KEY": [...]}``), the
per-record rejection (by index) and the JSON objects the admin routes take.
"""

from __future__ import annotations

import zlib
from typing import Any

import orjson
from aiohttp import web

__all__ = [
    "NDJSON_TYPES",
    "BadBody",
    "decode",
    "forbidden_record",
    "item_results",
    "parse",
    "read_json_object",
    "rejection",
]

NDJSON_TYPES = frozenset(
    {
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/jsonlines",
    }
)


class BadBody(Exception):
    """A body the sink refuses as a whole: answered ``status`` with ``error`` and ``message``."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


def decode(raw: bytes, encoding: str, limit: int) -> bytes:
    """The body under ``Content-Encoding``, refused past ``limit`` decoded bytes (a small
    gzip body can inflate to gigabytes). Concatenated gzip members are one body."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        if len(raw) > limit:
            raise BadBody(413, "payload_too_large", f"body larger than {limit} bytes")
        return raw
    if encoding in ("gzip", "x-gzip"):
        wbits = 31
    elif encoding == "deflate":
        wbits = 15
    else:
        raise BadBody(415, "unsupported_encoding", f"Content-Encoding {encoding!r} unsupported")
    out = bytearray()
    data = raw
    try:
        while True:
            d = zlib.decompressobj(wbits)
            out += d.decompress(data, limit + 1 - len(out))
            if d.unconsumed_tail or len(out) > limit:
                raise BadBody(413, "payload_too_large", f"decoded body larger than {limit} bytes")
            if not d.eof:
                raise BadBody(400, "malformed_body", f"truncated {encoding} body")
            data = d.unused_data
            if not data:
                break
            if wbits != 31:
                raise BadBody(400, "malformed_body", f"trailing bytes after {encoding} body")
    except zlib.error as exc:
        message = f"not a valid {encoding} body ({exc})"
        if not raw.startswith(b"\x1f\x8b") and raw.lstrip()[:1] in (b"[", b"{"):
            message += "; it looks like uncompressed JSON"
        raise BadBody(400, "malformed_body", message) from None
    return bytes(out)


def parse(body: bytes, content_type: str) -> tuple[list[Any], str]:
    """Records of a body, and its format name. Raises BadBody."""
    try:
        if content_type in NDJSON_TYPES:
            lines = [line for line in body.split(b"\n") if line.strip()]
            records = orjson.loads(b"[" + b",".join(lines) + b"]") if lines else []
            if len(records) != len(lines):
                raise BadBody(400, "malformed_body", "an NDJSON line must hold one JSON value")
            kind = "ndjson"
        else:
            value = orjson.loads(body)
            if isinstance(value, list):
                records, kind = value, "json"
            elif isinstance(value, dict) and len(value) == 1:
                (records,) = value.values()
                if not isinstance(records, list):
                    raise BadBody(400, "malformed_body", "a wrapped body must hold one list")
                kind = "wrapped"
            else:
                raise BadBody(
                    400,
                    "malformed_body",
                    'body must be a JSON array of objects or {"KEY": [objects]}',
                )
    except orjson.JSONDecodeError as exc:
        raise BadBody(400, "malformed_body", f"invalid JSON: {exc}") from None
    if not all(type(r) is dict for r in records):
        raise BadBody(400, "malformed_body", "every record must be a JSON object")
    return records, kind


def forbidden_record(records: list[Any], field: str) -> int | None:
    """Index of the first record holding ``field`` (the partner refuses the whole batch)."""
    for index, record in enumerate(records):
        if field in record:
            return index
    return None


def rejection(index: int, field: str) -> dict[str, Any]:
    """The 400 body naming the refused record, so a client can isolate it."""
    return {
        "error": "rejected_record",
        "message": f"record {index} has the forbidden field {field!r}",
        "field": field,
        "index": index,
    }


def item_results(shape: str, statuses: list[int], field: str | None) -> Any:
    """The per-record answer to a batch whose items got ``statuses`` (201, 400 or 429), in
    the shape of Elasticsearch's bulk API or of Salesforce sObject Collections."""

    def message(index: int, status: int) -> str:
        if status == 429:
            return f"record {index} throttled: rejected execution, try again later"
        return f"record {index} has the forbidden field {field!r}"

    if shape == "elasticsearch":
        items: list[dict[str, Any]] = []
        for i, status in enumerate(statuses):
            item: dict[str, Any] = {"_index": "sink", "status": status}
            if status == 400:
                item["error"] = {"type": "mapper_parsing_exception", "reason": message(i, 400)}
            elif status == 429:
                item["error"] = {
                    "type": "es_rejected_execution_exception",
                    "reason": message(i, 429),
                }
            else:
                item["result"] = "created"
            items.append({"index": item})
        return {"took": 1, "errors": any(s >= 400 for s in statuses), "items": items}
    out: list[dict[str, Any]] = []
    for i, status in enumerate(statuses):
        if status < 400:
            out.append({"id": f"a00{i:015d}", "success": True, "errors": []})
        else:
            code = "REQUEST_LIMIT_EXCEEDED" if status == 429 else "FIELD_INTEGRITY_EXCEPTION"
            out.append(
                {
                    "id": None,
                    "success": False,
                    "errors": [{"statusCode": code, "message": message(i, status), "fields": []}],
                }
            )
    return out


async def read_json_object(request: web.Request) -> dict[str, Any]:
    """An admin request's JSON object (an empty body is ``{}``); 400 otherwise."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(
            body=orjson.dumps({"error": "invalid_json", "message": str(exc)}),
            content_type="application/json",
        ) from None
    if not isinstance(value, dict):
        raise web.HTTPBadRequest(
            body=orjson.dumps({"error": "invalid_json", "message": "expected a JSON object"}),
            content_type="application/json",
        )
    return value
