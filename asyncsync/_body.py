"""Request bodies: a batch's record bytes joined into a JSON array, NDJSON or a wrapped object.

Records are already JSON (a source validated or encoded them), so a body is a join, never a
re-serialisation. For ``n >= 1`` records the uncompressed body is exactly
``overhead + sum(len(r) + 1 for r in records)`` bytes; the batcher uses :attr:`overhead` to
keep every body within ``--max-batch-bytes``.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

import orjson

from ._config import BodyFormat
from ._exceptions import ConfigError

__all__ = ["BodyEncoder"]

_CONTENT_TYPES: Final = {"json": "application/json", "ndjson": "application/x-ndjson"}


class BodyEncoder:
    """Builds request bodies and their headers.

    * ``"json"``: ``[r1,r2,...]``; with ``wrap="KEY"``: ``{"KEY":[r1,r2,...]}`` (the key is
      JSON-escaped).
    * ``"ndjson"``: ``r1\\nr2\\n...\\n`` (wrapping does not apply).
    * ``gzip=True`` compresses the body (``Content-Encoding: gzip``; the gzip header carries
      no timestamp, so a retried batch has the same bytes). zlib releases the GIL while it
      compresses, so a caller may run :meth:`encode` in a thread to use another core.
    """

    __slots__ = ("_gzip", "_level", "_prefix", "_sep", "_suffix", "format", "headers", "overhead")

    def __init__(
        self,
        format: BodyFormat = "json",
        *,
        wrap: str | None = None,
        gzip: bool = False,
        gzip_level: int = 5,
    ) -> None:
        if format not in _CONTENT_TYPES:
            raise ConfigError(f"body must be 'json' or 'ndjson', got {format!r}", field="body")
        if wrap is not None and format != "json":
            raise ConfigError("--wrap needs --body json (NDJSON has no envelope)", field="wrap")
        if wrap is not None and not isinstance(wrap, str):
            raise ConfigError(f"wrap must be a string, got {type(wrap).__name__}", field="wrap")
        if not 0 <= gzip_level <= 9:
            raise ConfigError(f"gzip level must be 0-9, got {gzip_level!r}", field="gzip_level")
        self.format: BodyFormat = format
        self._gzip = gzip
        self._level = gzip_level
        if format == "ndjson":
            self._prefix, self._sep, self._suffix = b"", b"\n", b"\n"
        elif wrap is None:
            self._prefix, self._sep, self._suffix = b"[", b",", b"]"
        else:
            try:
                key = orjson.dumps(wrap)
            except TypeError as exc:  # a lone surrogate
                raise ConfigError(f"wrap key is not valid Unicode: {exc}", field="wrap") from exc
            self._prefix, self._sep, self._suffix = b"{" + key + b":[", b",", b"]}"
        # n records: prefix + n * len(r) + (n - 1) * sep + suffix; sep is one byte
        self.overhead: int = len(self._prefix) + len(self._suffix) - 1
        headers = {"Content-Type": _CONTENT_TYPES[format]}
        if gzip:
            headers["Content-Encoding"] = "gzip"
        self.headers: Mapping[str, str] = MappingProxyType(headers)

    def encode(self, records: list[bytes]) -> bytes:
        """The body for ``records`` (each one JSON object's bytes)."""
        if len(records) > 1:
            # one copy of the records: the envelope goes onto the first and last record
            parts = records.copy()
            parts[0] = self._prefix + parts[0]
            parts[-1] += self._suffix
            body = self._sep.join(parts)
        elif records:
            body = self._prefix + records[0] + self._suffix
        else:
            body = b"" if self.format == "ndjson" else self._prefix + self._suffix
        if self._gzip:
            # wbits=31: the gzip container, with mtime 0
            return zlib.compress(body, self._level, wbits=31)
        return body

    def size(self, records: list[bytes]) -> int:
        """Uncompressed body size, without building it."""
        if not records:
            return len(self._prefix) + len(self._suffix) if self.format == "json" else 0
        return self.overhead + sum(map(len, records)) + len(records)

    def __repr__(self) -> str:
        return (
            f"BodyEncoder({self.format!r}, gzip={self._gzip}, overhead={self.overhead}, "
            f"prefix={self._prefix!r})"
        )
