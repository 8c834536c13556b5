"""Compressed files: gzip (``.gz``) and zstd (``.zst``) around JSON Lines or CSV, streamed.

The compression is known by the suffix (``export.jsonl.gz``, ``export.csv.zst``) *and* by the
magic bytes (gzip ``1f 8b``, zstd ``28 b5 2f fd``): a ``.gz`` file that is not gzip is a
:class:`SourceError` before anything is sent, and a ``.jsonl`` file that is in fact gzip is
read as gzip. The format inside comes from the suffix before the compression's.

Nothing is decompressed to disk or held whole: the file is read in 64 KiB pieces and inflated
as a stream (:mod:`zlib` for gzip, multi-member files included; the ``zstandard`` package,
extra ``zstd``, for zstd, multi-frame files included). JSON Lines go through the same parser as
a plain file, so each record is sent as its own bytes (byte-exact).

Positions are line numbers, as in the plain file (a record's number: blank lines count). A
compressed stream cannot seek, so a resumed run reads the file again from the top and skips
the records the checkpoint holds, without sending them (:class:`SkipThrough`): resuming costs
one decompression of the part already sent (gzip inflates at roughly 300-500 MB/s of output
per core). For the same reason ``--shard``/``--processes`` refuse a compressed file.

A damaged archive (truncated, bad CRC, corrupt data, trailing garbage): every record before
the damage is delivered; the damage is one dead letter, at the position after the last good
record, whose reason names the file and that record (and the cut-off line, if any); the run
then ends as a run with dead letters does (exit 1), with the error logged. Damage before the
first record is a :class:`SourceError` instead (exit 2: nothing was sent). Nothing after the
damage is read (a stream cannot be re-synchronised), so nothing is silently dropped: the
dead letter says where reading stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import zlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import IO, Any, Final, cast

from .._exceptions import SourceError
from .._records import RecordBlock, Rejected
from ..checkpoint._state import Fingerprint, SettingValue
from ._csv import CsvSource, _CsvReader
from ._jsonl import _LineParser
from ._protocol import SourceBase
from ._reading import (
    DEFAULT_MAX_LINE_BYTES,
    _check_path,
    _check_positive,
    _read_ahead,
    _Worker,
    file_fingerprint,
)
from ._validate import _RAW_LIMIT, _raw_text

__all__ = [
    "COMPRESSIONS",
    "CompressedCsvSource",
    "CompressedJsonlSource",
    "compression_of",
    "split_compression",
]

log = logging.getLogger("asyncsync")

GZIP_MAGIC: Final = b"\x1f\x8b"
ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
#: suffix -> compression
COMPRESSIONS: Final = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}
RAW_CHUNK: Final = 64 * 1024
#: when a piece fails, it is fed again in slices this small to keep what precedes the damage
_SLICE: Final = 256


def _sniff(path: str) -> str | None:
    """The compression the first bytes of a regular file show (None: none, or not a file)."""
    try:
        if not os.path.isfile(path):
            return None
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return None
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return None


def split_compression(path: str) -> tuple[str, str | None]:
    """``(path without the compression suffix, compression or None)``, by suffix and magic.

    A compression suffix whose magic bytes do not match is a :class:`SourceError` (for an
    existing file); a plain name whose bytes are gzip or zstd is that compression.
    """
    root, ext = os.path.splitext(path)
    by_suffix = COMPRESSIONS.get(ext.lower())
    sniffed = _sniff(path)
    if by_suffix is not None:
        if os.path.isfile(path) and sniffed != by_suffix:
            magic = "1f 8b" if by_suffix == "gzip" else "28 b5 2f fd"
            raise SourceError(
                f"{path}: not a {by_suffix} file (its first bytes are not {magic}); "
                f"is it really {ext}?",
                path=path,
            )
        return root, by_suffix
    return path, sniffed


def compression_of(path: str | os.PathLike[str]) -> str | None:
    """``"gzip"``, ``"zstd"`` or None for a path (see :func:`split_compression`)."""
    return split_compression(os.fspath(path))[1]


# --------------------------------------------------------------------------------------------
# streaming decompression


class _Damaged(Exception):
    """The compressed stream cannot be read further."""


def _zstandard() -> Any:
    try:
        import zstandard
    except ImportError:
        raise SourceError(
            "zstd-compressed input needs the zstandard package: pip install 'asyncsync[zstd]'"
        ) from None
    return zstandard


class _Inflater:
    """Compressed pieces in, decompressed bytes out; members/frames one after another.

    On damage, what the piece decompressed up to the damage is kept (the piece is fed again
    in small slices from a copy of the decompressor), then :class:`_Damaged` is raised.
    """

    def __init__(self, compression: str) -> None:
        self.compression = compression
        self._errors: tuple[type[BaseException], ...] = (zlib.error,)
        if compression == "zstd":
            self._zstd = _zstandard()
            self._errors = (self._zstd.ZstdError,)
        self._d = self._new()
        self._started = False  # the current member/frame has received input
        self.pending: bytes = b""  # decompressed bytes saved from a failed piece

    def _new(self) -> Any:
        if self.compression == "gzip":
            return zlib.decompressobj(wbits=31)
        return self._zstd.ZstdDecompressor().decompressobj()

    def _copy(self) -> Any:
        copy = getattr(self._d, "copy", None)
        return copy() if copy is not None else None

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        saved = self._copy()
        try:
            self._feed(data, out)
        except self._errors as exc:
            if saved is None:
                raise _Damaged(str(exc)) from None
            # again, slice by slice, from before the piece: keep what precedes the damage
            self._d = saved
            out = []
            try:
                for i in range(0, len(data), _SLICE):
                    self._feed(data[i : i + _SLICE], out)
            except self._errors as exc2:
                self.pending = b"".join(out)
                raise _Damaged(str(exc2)) from None
        return b"".join(out)

    def _feed(self, data: bytes, out: list[bytes]) -> None:
        while data:
            if self._d.eof:
                # the next member/frame; zero padding after the last gzip member is allowed
                if self.compression == "gzip" and not data.strip(b"\x00"):
                    return
                self._d = self._new()
                self._started = False
            self._started = True
            out.append(self._d.decompress(data))
            data = self._d.unused_data if self._d.eof else b""

    def finish(self) -> None:
        """End of input: :class:`_Damaged` when a member or frame is incomplete."""
        if self._started and not self._d.eof:
            raise _Damaged("the file ends before the end of the compressed stream (truncated)")


class _Stream:
    """A decompressed file, read in the worker thread: ``read`` / ``readline`` like a binary
    file, that end (EOF) at damage and keep what happened in ``damage``; a line cut off by
    the damage is withheld and kept in ``fragment``."""

    def __init__(self, path: str, compression: str, f: IO[bytes], *, withhold: bool) -> None:
        self.path = path
        self._withhold = withhold  # False: the caller keeps the cut-off line (a line parser)
        self._f = f
        self._inflater = _Inflater(compression)
        self._buf = bytearray()
        self._eof = False
        self.damage: str | None = None
        self.fragment = b""
        self.raw_read = 0  # compressed bytes consumed

    def close(self) -> None:
        self._f.close()

    def _fill(self) -> bool:
        """Decompress more into the buffer; False at the end (or the damage)."""
        while not self._eof:
            try:
                raw = self._f.read(RAW_CHUNK)
            except OSError as exc:
                raise SourceError(
                    f"{self.path}: read failed: {exc.strerror or exc}", path=self.path
                ) from exc
            self.raw_read += len(raw)
            try:
                if raw:
                    data = self._inflater.feed(raw)
                else:
                    self._inflater.finish()
                    self._eof = True
                    return False
            except _Damaged as exc:
                self._eof = True
                self._buf += self._inflater.pending
                self.damage = str(exc)
                if self._withhold:
                    # the bytes after the last newline are a line cut off by the damage
                    nl = self._buf.rfind(b"\n")
                    self.fragment = bytes(self._buf[nl + 1 :])
                    del self._buf[nl + 1 :]
                return bool(self._buf)
            if data:
                self._buf += data
                return True
        return False

    def read(self, size: int) -> bytes:
        if not self._buf:
            self._fill()
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def readline(self, size: int = -1) -> bytes:
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0 and (size < 0 or nl < size):
                end = nl + 1
                break
            if 0 <= size <= len(self._buf):
                end = size
                break
            if not self._fill():
                end = len(self._buf)
                break
        data = bytes(self._buf[:end])
        del self._buf[:end]
        return data


def _open_stream(path: str, compression: str, *, withhold: bool = True) -> _Stream:
    """In the worker thread; the caller has the worker own (close) it."""
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115 - the stream closes it
    except OSError as exc:
        raise SourceError(f"{path}: cannot open: {exc.strerror or exc}", path=path) from exc
    return _Stream(path, compression, f, withhold=withhold)


def _damage_reject(stream: _Stream, last_good: int, records: int) -> Rejected:
    """The dead letter that says where reading stopped, and why; a :class:`SourceError`
    (exit 2) when no record came before the damage: nothing was sent."""
    at = last_good + 1
    damaged = f"{stream.path}: damaged {stream._inflater.compression} archive: {stream.damage}"
    if not records:
        raise SourceError(
            f"{damaged}; no record could be read before the damage (line {at}): nothing sent",
            path=stream.path,
        )
    reason = f"{damaged}; reading stopped after line {last_good} (the last good record)"
    if stream.fragment:
        reason += f"; line {at} is cut off ({len(stream.fragment)} bytes kept in 'record')"
    log.error("%s", reason)
    raw = _raw_text(stream.fragment[:_RAW_LIMIT])
    return Rejected(raw, at, reason, at)


class _CompressedBase(SourceBase):
    has_lines = True
    compression: str

    def __init__(self, path: str | os.PathLike[str], compression: str | None = None) -> None:
        self.path = os.fspath(path)
        self.name = self.path
        self.state_path: Path | None = Path(self.path)
        st = _check_path(self.path)
        if compression is None:
            compression = split_compression(self.path)[1] or "gzip"
        if compression not in ("gzip", "zstd"):
            raise SourceError(f"{self.path}: unknown compression {compression!r}", path=self.path)
        if compression == "zstd":
            _zstandard()  # fail now, before anything is sent
        self.compression = compression
        self.size: int | None = st.st_size

    @property
    def _what(self) -> tuple[str, str]:
        return self.path, self.compression

    # resumed(): SourceBase's (SkipThrough): read again from the top, skip what was sent

    def fingerprint(self, settings: Mapping[str, SettingValue]) -> Fingerprint:
        return file_fingerprint(self.path, 0, None, settings)


class CompressedJsonlSource(_CompressedBase):
    """JSON Lines inside gzip or zstd: each line sent as its own bytes (see the module)."""

    kind = "jsonl"

    def __init__(
        self,
        path: str | os.PathLike[str],
        compression: str | None = None,
        *,
        read_size: int = 1 << 20,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        _check_positive("read_size", read_size)
        _check_positive("max_line_bytes", max_line_bytes)
        super().__init__(path, compression)
        self.read_size = read_size
        self.max_line_bytes = max_line_bytes

    async def blocks(self) -> AsyncIterator[RecordBlock]:
        worker = _Worker(f"asyncsync-read {os.path.basename(self.path)}")
        try:
            stream = await worker.call(
                lambda: cast(
                    _Stream, worker.own(cast(IO[bytes], _open_stream(*self._what, withhold=False)))
                )
            )
            parser = _LineParser(max_line_bytes=self.max_line_bytes, file_offsets=False)
            reported = records = 0

            def step() -> tuple[bool, RecordBlock | None]:
                nonlocal reported, records
                chunk = stream.read(self.read_size)
                if chunk:
                    block = parser.feed(chunk)
                elif stream.damage is None:
                    block = parser.finish()
                else:  # the line the parser holds was cut off by the damage: not a record
                    stream.fragment = parser.carried()
                    reject = _damage_reject(stream, parser.line - 1, records)
                    block = RecordBlock([], [], [reject])
                if block is not None:
                    records += len(block.records)
                    block.bytes_read = stream.raw_read - reported
                    reported = stream.raw_read
                return bool(chunk), block

            async with contextlib.aclosing(_read_ahead(worker, step)) as blocks:
                async for block in blocks:
                    yield block
        finally:
            worker.close()


class CompressedCsvSource(_CompressedBase):
    """A CSV file inside gzip or zstd, read as :class:`CsvSource` reads a plain one."""

    kind = "csv"

    def __init__(
        self,
        path: str | os.PathLike[str],
        compression: str | None = None,
        *,
        delimiter: str = ",",
        encoding: str = "utf-8-sig",
        max_row_bytes: int = DEFAULT_MAX_LINE_BYTES,
    ) -> None:
        super().__init__(path, compression)
        # the plain reader's options, checked as it checks them
        self._csv = CsvSource(
            self.path, delimiter=delimiter, encoding=encoding, max_row_bytes=max_row_bytes
        )

    async def blocks(self) -> AsyncIterator[RecordBlock]:
        worker = _Worker(f"asyncsync-read {os.path.basename(self.path)}")
        try:

            def opener() -> IO[bytes]:
                return cast(IO[bytes], _open_stream(*self._what))

            reader = await worker.call(lambda: _CsvReader(self._csv, worker, opener=opener))
            stream = cast(_Stream, reader.f)
            done = False
            reported = records = 0

            def step() -> tuple[bool, RecordBlock | None]:
                nonlocal done, reported, records
                block = reader.read_block()
                if block is None and stream.damage is not None and not done:
                    done = True
                    reject = _damage_reject(stream, reader.lines_read, records)
                    block = RecordBlock([], [], [reject])
                if block is not None:
                    records += len(block.records)
                    block.bytes_read = stream.raw_read - reported
                    reported = stream.raw_read
                    block.end_offset = None
                    block.offsets = None
                return block is not None, block

            async with contextlib.aclosing(_read_ahead(worker, step)) as blocks:
                async for block in blocks:
                    yield block
        finally:
            worker.close()
