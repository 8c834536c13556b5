"""What flows through the pipeline: records in blocks, rejected inputs, and batches.

The hot path never builds one Python object per record beyond the record's own bytes:
sources hand over *blocks* of already-encoded JSON objects, the batcher slices blocks into
:class:`Batch` es, and the sender joins a batch's bytes into a body. Positions of consecutive
records are a ``range`` (not one int per record), and a file source's per-record end offsets
are a :class:`LineEnds`, computed only where the batcher asks (at batch ends).

Positions are 1-based and increase strictly within a source: the line number for file
sources (JSONL, CSV), the record index for iterables, stdin and SQL. A record's position is
what the dead-letter file reports and what the checkpoint stores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, overload

__all__ = ["Batch", "BatchResult", "LineEnds", "RecordBlock", "Rejected", "compact_positions"]


def compact_positions(positions: Sequence[int]) -> Sequence[int]:
    """``positions`` (strictly increasing, as always) as a ``range`` when they are consecutive.

    The batcher gives every batch its positions in this form, so a batch is the same value
    however the source's blocks fell (a resumed run reads other blocks than the first run).
    """
    if type(positions) is not range and positions:
        first = positions[0]
        if positions[-1] - first == len(positions) - 1:
            return range(first, first + len(positions))
    return positions


@dataclass(frozen=True, slots=True)
class Rejected:
    """An input record that cannot be sent (malformed, not an object, too large, ragged).

    ``raw`` is the original text of the record (decoded leniently) or the parsed object when
    there is one; it goes to the dead-letter file as ``record``.
    """

    raw: Any
    position: int
    reason: str
    line: int | None = None


@dataclass(slots=True)
class RecordBlock:
    """A run of consecutive input records, as a source yields them.

    ``records[i]`` is the exact JSON encoding of one object (no trailing newline), at
    position ``positions[i]`` (a ``range`` when the positions are consecutive). ``rejects``
    are inputs from the same stretch of the source that cannot be sent. In a file source,
    ``offsets[i]`` is the byte offset just after record ``i`` and ``end_offset`` the one just
    after the block's last record (``None`` elsewhere): the places a resumed run seeks to, so
    every batch gets an exact offset.
    """

    records: list[bytes]
    positions: Sequence[int]
    rejects: list[Rejected] = field(default_factory=list)
    end_offset: int | None = None
    #: bytes of input consumed, for progress (ETA on files)
    bytes_read: int = 0
    #: a list, or a :class:`LineEnds` (computed on demand)
    offsets: Sequence[int] | None = None
    #: SQL sources: the resume token of each record's key (``keys[i]`` for ``records[i]``)
    keys: list[Any] | None = None


@dataclass(slots=True)
class Batch:
    """A batch of records sent in one request (or split on 413).

    Treat it as immutable (nothing in asyncsync changes one after the batcher made it): it
    is not a frozen dataclass only because one is made per request at one record per
    request, and a frozen dataclass with these fields costs 1.3 µs to build against 0.3.

    ``seq`` numbers batches 0, 1, 2, ... in source order; ``first`` and ``last`` are the
    positions of its first and last record; the Idempotency-Key is derived from the job id
    and ``(first, last)`` so that a retry and a resumed run send the same key.
    ``end_offset`` is the byte offset just after the batch's last record (file sources).
    ``positions`` is a ``range`` when they are consecutive (no rejected or blank line among
    them), a list otherwise (see :func:`compact_positions`).
    """

    seq: int
    records: list[bytes]
    positions: Sequence[int]
    end_offset: int | None = None
    nbytes: int = 0
    #: SQL sources: the resume token of the key of the batch's last record
    end_key: Any = None
    #: True when ``positions`` are every record the source has between ``first`` and
    #: ``last`` (a batch as cut, or a slice of one): the range then names the body. A subset
    #: picked out of a batch (the items a server asked to retry) is not dense.
    dense: bool = True

    @property
    def first(self) -> int:
        return self.positions[0]

    @property
    def last(self) -> int:
        return self.positions[-1]

    def __len__(self) -> int:
        return len(self.records)

    def split(self) -> tuple[Batch, Batch]:
        """Halves, for a 413 or a rejection; each keeps ``seq`` (the checkpoint tracks the
        parent). The same batch always splits at the same place: a resumed run sends the same
        parts under the same keys."""
        mid = len(self.records) // 2
        left = Batch(
            self.seq,
            self.records[:mid],
            compact_positions(self.positions[:mid]),
            None,
            sum(map(len, self.records[:mid])),
            None,
            self.dense or mid == 1,
        )
        right = Batch(
            self.seq,
            self.records[mid:],
            compact_positions(self.positions[mid:]),
            self.end_offset,
            sum(map(len, self.records[mid:])),
            self.end_key,
            self.dense or len(self.records) - mid == 1,
        )
        return left, right

    def subset(self, indexes: Sequence[int]) -> Batch:
        """The records at ``indexes`` (increasing) as a batch of their own, keeping ``seq``:
        the items of a per-record answer that were delivered, failed, or are to be sent
        again, or what is left of a part once one record was sent alone. The same records
        make the same batch (and so the same key), however they were picked."""
        if len(indexes) == len(self.records):
            return self
        records = [self.records[i] for i in indexes]
        positions = compact_positions([self.positions[i] for i in indexes])
        dense = len(records) == 1 or (self.dense and indexes[-1] - indexes[0] == len(indexes) - 1)
        return Batch(self.seq, records, positions, None, sum(map(len, records)), None, dense)


@dataclass(slots=True)
class BatchResult:
    """How one batch (or one half of a split batch) ended: ``delivered`` (acknowledged), or
    not, with the last ``status`` (None: no response), the ``attempts`` made and the ``error``
    written to the dead-letter file. ``key`` is the ``Idempotency-Key`` it was sent with.
    Read-only by convention, not frozen, for the same reason as :class:`Batch`."""

    batch: Batch
    key: str
    delivered: bool
    status: int | None
    attempts: int
    error: str = ""


class LineEnds(Sequence[int]):
    """The byte offset just after each of consecutive ``lines``, computed on demand.

    ``ends[i] == base + len(lines[0]) + ... + len(lines[i])``, where each line is its raw
    bytes with its line ending; ``end`` is ``ends[-1]`` (known to the caller for free). A
    JSONL block whose every line is a record carries this as ``offsets`` (``lines[i]`` is
    record ``i``'s line, so it is at least the record and its newline, but the last line of
    a file) instead of one int per record. The batcher reads it only at batch ends, in
    increasing order, which costs one C-speed pass of ``len`` over the lines in all (the
    running sum is kept between calls); when each line is exactly its record and a newline,
    it does not read it at all (the batch's byte count gives the offset).
    """

    __slots__ = ("_at", "_done", "_lines", "base", "end")

    def __init__(self, base: int, lines: Sequence[bytes], end: int) -> None:
        self.base = base
        self.end = end
        self._lines = lines
        self._done = 0  # lines summed into _at
        self._at = base  # the offset just after lines[: _done]

    def __len__(self) -> int:
        return len(self._lines)

    def newline_at_end(self) -> bool:
        """True when the last line ends with a newline (the last line of a file may not)."""
        return bool(self._lines) and self._lines[-1].endswith(b"\n")

    @overload
    def __getitem__(self, i: int) -> int: ...

    @overload
    def __getitem__(self, i: slice) -> list[int]: ...

    def __getitem__(self, i: int | slice) -> int | list[int]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self._lines)))]
        n = len(self._lines)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("LineEnds index out of range")
        stop = i + 1
        if stop == n:
            return self.end
        if stop < self._done:  # going back: sum again from the start
            self._done, self._at = 0, self.base
        if stop > self._done:
            self._at += sum(map(len, self._lines[self._done : stop]))
            self._done = stop
        return self._at

    def __repr__(self) -> str:
        return f"LineEnds({list(self)!r})"
