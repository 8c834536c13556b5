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
from ._compressed import CompressedCsvSource, CompressedJsonlSource, split_compression
from ._csv import CsvSource
from ._iterable import IterableSource
from ._jsonl import JsonlSource, StdinSource
from ._protocol import Source
from ._reading import DEFAULT_MAX_LINE_BYTES

__all__ = [
    "ALL_EXTENSIONS",
    "CSV_EXTENSIONS",
    "JSONL_EXTENSIONS",
    "PARQUET_EXTENSIONS",
    "open_source",
]


JSONL_EXTENSIONS: Final = (".jsonl", ".ndjson", ".json", ".jsonlines")
CSV_EXTENSIONS: Final = (".csv",)
PARQUET_EXTENSIONS: Final = (".parquet", ".pq")
ALL_EXTENSIONS: Final = (
    *JSONL_EXTENSIONS,
    *CSV_EXTENSIONS,
    *PARQUET_EXTENSIONS,
    *(f"{e}{c}" for e in (".jsonl", ".ndjson", ".csv") for c in (".gz", ".zst")),
)


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

    ``"-"`` is JSON Lines on stdin; a path is chosen by extension (``kind`` = ``"jsonl"``,
    ``"csv"`` or ``"parquet"`` overrides it), a compressed one (``.gz``, ``.zst``: by suffix and
    magic bytes) by the extension before the compression's; a :class:`Source` is returned as
    it is; any other iterable or async iterable becomes an :class:`IterableSource`.
    ``start_offset``/``start_line`` and ``stop_offset`` read a file's byte range (a resume
    point, a shard); for Parquet, a range of row groups.
    """
    if isinstance(spec, Source):
        return spec
    if isinstance(spec, str | os.PathLike):
        path = os.fspath(spec)
        if path == "-":
            return StdinSource(max_line_bytes=max_line_bytes)
        inner, compression = split_compression(path)
        if kind is None:
            ext = os.path.splitext(inner)[1].lower()
            if ext in JSONL_EXTENSIONS:
                kind = "jsonl"
            elif ext in CSV_EXTENSIONS:
                kind = "csv"
            elif ext in PARQUET_EXTENSIONS and compression is None:
                kind = "parquet"
            else:
                allowed = ", ".join(ALL_EXTENSIONS)
                raise SourceError(
                    f"{path}: unknown input format {ext or '(no extension)'!r}; "
                    f"use one of {allowed}, or '-' for JSON Lines on stdin",
                    path=path,
                )
        if compression is not None and kind in ("jsonl", "csv"):
            if start_offset or stop_offset is not None:
                raise SourceError(
                    f"{path}: a {compression}-compressed file cannot be read from a byte "
                    "offset (no seeking in a compressed stream)",
                    path=path,
                )
            if kind == "jsonl":
                return CompressedJsonlSource(path, compression, max_line_bytes=max_line_bytes)
            return CompressedCsvSource(
                path,
                compression,
                delimiter=delimiter,
                encoding=encoding,
                max_row_bytes=max_line_bytes,
            )
        if kind == "parquet":
            from ._parquet import ParquetSource

            # for Parquet, a range is of row groups: [start_offset, stop_offset)
            return ParquetSource(
                path,
                start_group=start_offset,
                stop_group=stop_offset,
                first_row=start_line or 1,
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
        raise ConfigError(f"kind must be 'jsonl', 'csv' or 'parquet', got {kind!r}", field="kind")
    if isinstance(spec, Sequence | Iterable | AsyncIterable):
        return IterableSource(spec)
    raise TypeError(f"cannot read records from {type(spec).__name__}")
