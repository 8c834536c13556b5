"""Sources: where records come from, as blocks of already-encoded JSON objects.

A source is anything that satisfies :class:`Source`: a ``name`` (for messages), a ``size``
(bytes it will read, for an ETA; ``None`` when unknown), ``blocks()`` (an async iterator of
:class:`RecordBlock`), and the few facts the uploader needs, which each source *declares* so
that the uploader never asks what kind of source it holds (a new kind of source needs no change
outside this package):

==================  ===========================================================================
``resumed()``       the source continuing after a checkpoint's watermark: a file seeks to the
                    byte offset, SQL does one index seek on the key, the others skip what was
                    sent (:class:`SkipThrough`)
``fingerprint()``   what a checkpoint must match to be resumed with this source
``linger``          True for slow streams: a batch is sent ``linger`` seconds after its first
                    record arrived, full or not. False keeps batches identical across resumes
``has_lines``       positions are line numbers: dead letters get a ``line`` too
``state_path``      the path default state files (checkpoint, dead letters) sit beside; None
                    for stdin, iterables, SQL
``keyed``           the watermark carries a key (SQL) that the ack log cannot hold, so the log
                    must not move the watermark on its own
==================  ===========================================================================

:class:`SourceBase` gives every one of them a default (a stream that resumes by skipping).

Inputs that cannot be sent (malformed, not an object, ragged, too long) travel in the same
blocks as :class:`Rejected`, with their position; the run goes on. An input that cannot be read
*at all* is a :class:`SourceError`, raised by the constructor for a missing file, so a run
fails before it sends anything.

=============  ====================================  =========================================
source         position (1-based)                    resume
=============  ====================================  =========================================
JsonlSource    line number                           ``start_offset`` (+ ``start_line``)
CsvSource      line number where the row starts      ``start_offset`` (+ ``start_line``)
StdinSource    line number                           skipping
IterableSource index of the item                     skipping
SqlSource      row ordinal in key order              after the key (one index seek)
=============  ====================================  =========================================
"""

from __future__ import annotations

import bisect
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .._records import RecordBlock
from ..checkpoint._state import Fingerprint, SettingValue

__all__ = ["SkipThrough", "Source", "SourceBase"]


@runtime_checkable
class Source(Protocol):
    """What the uploader reads from, and what it needs to know to resume and name files."""

    name: str
    size: int | None
    linger: bool
    has_lines: bool
    state_path: Path | None
    keyed: bool

    def blocks(self) -> AsyncIterator[RecordBlock]: ...

    def resumed(self, *, position: int, offset: int | None = None, key: Any = None) -> Source:
        """This source from just after ``position`` (a checkpoint's watermark, with the byte
        ``offset`` and the ``key`` there when the source recorded them); self at 0."""
        ...

    def fingerprint(self, settings: Mapping[str, SettingValue]) -> Fingerprint:
        """What a checkpoint of this source with these batch ``settings`` must match."""
        ...


class SourceBase:
    """Defaults for a :class:`Source`: a stream with no path, no line numbers, resumed by
    skipping records. Subclass it and write ``name``, ``size`` and ``blocks()``."""

    name: str = "<source>"
    size: int | None = None
    linger = False
    has_lines = False
    state_path: Path | None = None
    keyed = False

    def blocks(self) -> AsyncIterator[RecordBlock]:
        raise NotImplementedError

    def resumed(self, *, position: int, offset: int | None = None, key: Any = None) -> Source:
        return self if position <= 0 else SkipThrough(self, position)

    def fingerprint(self, settings: Mapping[str, SettingValue]) -> Fingerprint:
        return Fingerprint.of_stream(self.name, settings)


class SkipThrough(SourceBase):
    """A source without offsets (stdin, iterables), resumed by skipping records through
    ``position``: they are read again, not sent again."""

    def __init__(self, inner: Source, position: int) -> None:
        self._inner = inner
        self._through = position
        self.name = inner.name
        self.size = inner.size
        self.linger = inner.linger
        self.has_lines = inner.has_lines
        self.state_path = inner.state_path
        self.keyed = inner.keyed

    def resumed(self, *, position: int, offset: int | None = None, key: Any = None) -> Source:
        return self._inner.resumed(position=position, offset=offset, key=key)

    def fingerprint(self, settings: Mapping[str, SettingValue]) -> Fingerprint:
        return self._inner.fingerprint(settings)

    async def blocks(self) -> AsyncIterator[RecordBlock]:
        through = self._through
        async for block in self._inner.blocks():
            if block.positions and block.positions[-1] <= through:
                block.records, block.positions = [], []
            elif block.positions and block.positions[0] <= through:
                cut = bisect.bisect_right(block.positions, through)
                block.records, block.positions = block.records[cut:], block.positions[cut:]
            block.rejects = [r for r in block.rejects if r.position > through]
            yield block
