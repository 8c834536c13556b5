"""One entry point from a CLI argument or a library input to a :class:`Source`."""

from __future__ import annotations

import os
from collections.abc import (
    AsyncIterable,
    Iterable,
    Sequence,
)
from typing import Any, Final

from .._exceptions import ConfigError, SourceError
from ._csv import CsvSource
from ._iterable import IterableSource
from ._jsonl import JsonlSource, StdinSource
from ._protocol import Source
from ._reading import DEFAULT_MAX_LINE_BYTES

__all__ = ["CSV_EXTENSIONS", "JSONL_EXTENSIONS", "open_source"]


JSONL_EXTENSIONS: Final = (".jsonl", ".ndjson", ".json", ".jsonlines")
CSV_EXTENSIONS: Final = (".csv",)


def open_source(
    spec: str | os.PathLike[str] | Source | Iterable[Any] | AsyncIterable[Any],
    *,
    kind: str | None = None,
    start_offset: int = 0,
    start_line: int | None = None,
    stop_offset: int | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    delimiter: str = ",",
    encoding: str = "utf-8-sig",
) -> Source:
    """The source for a CLI argument or a library input.

    ``"-"`` is JSON Lines on stdin; a path is chosen by extension (``kind`` = ``"jsonl"`` or
    ``"csv"`` overrides it); a :class:`Source` is returned as it is; any other iterable or
    async iterable becomes an :class:`IterableSource`. ``start_offset``/``start_line`` and
    ``stop_offset`` read a file's byte range (a resume point, a shard).
    """
    if isinstance(spec, Source):
        return spec
    if isinstance(spec, str | os.PathLike):
        path = os.fspath(spec)
        if path == "-":
            return StdinSource(max_line_bytes=max_line_bytes)
        if kind is None:
            ext = os.path.splitext(path)[1].lower()
            if ext in JSONL_EXTENSIONS:
                kind = "jsonl"
            elif ext in CSV_EXTENSIONS:
                kind = "csv"
            else:
                allowed = ", ".join((*JSONL_EXTENSIONS, *CSV_EXTENSIONS))
                raise SourceError(
                    f"{path}: unknown input format {ext or '(no extension)'!r}; "
                    f"use one of {allowed}, or '-' for JSON Lines on stdin",
                    path=path,
                )
        if kind == "jsonl":
            return JsonlSource(
                path,
                start_offset=start_offset,
                start_line=start_line,
                stop_offset=stop_offset,
                max_line_bytes=max_line_bytes,
            )
        if kind == "csv":
            return CsvSource(
                path,
                start_offset=start_offset,
                start_line=start_line,
                stop_offset=stop_offset,
                delimiter=delimiter,
                encoding=encoding,
                max_row_bytes=max_line_bytes,
            )
        raise ConfigError(f"kind must be 'jsonl' or 'csv', got {kind!r}", field="kind")
    if isinstance(spec, Sequence | Iterable | AsyncIterable):
        return IterableSource(spec)
    raise TypeError(f"cannot read records from {type(spec).__name__}")
