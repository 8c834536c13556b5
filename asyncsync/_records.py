"""What flows through the pipeline: records in blocks, rejected inputs, and batches.

The hot path never builds one Python object per record beyond the record's own bytes and
its position (an int): sources hand over *blocks* of already-encoded JSON objects, the
batcher slices blocks into :class:`Batch` es, and the sender joins a batch's bytes into a body.

Positions are 1-based and increase strictly within a source: the line number for file
sources (JSONL, CSV), the record index for iterables, stdin and SQL. A record's position is
what the dead-letter file reports and what the checkpoint stores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Batch", "RecordBlock", "Rejected"]


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
    position ``positions[i]``. ``rejects`` are inputs from the same stretch of the source
    that cannot be sent. In a file source, ``offsets[i]`` is the byte offset just after
    record ``i`` and ``end_offset`` the one just after the block's last record (``None``
    elsewhere): the places a resumed run seeks to, so every batch gets an exact offset.
    """

    records: list[bytes]
    positions: list[int]
    rejects: list[Rejected] = field(default_factory=list)
    end_offset: int | None = None
    #: bytes of input consumed, for progress (ETA on files)
    bytes_read: int = 0
    offsets: list[int] | None = None
    #: SQL sources: the resume token of each record's key (``keys[i]`` for ``records[i]``)
    keys: list[Any] | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch of records sent in one request (or split on 413).

    ``seq`` numbers batches 0, 1, 2, ... in source order; ``first`` and ``last`` are the
    positions of its first and last record; the Idempotency-Key is derived from the job id
    and ``(first, last)`` so that a retry and a resumed run send the same key.
    ``end_offset`` is the byte offset just after the batch's last record (file sources).
    """

    seq: int
    records: list[bytes]
    positions: list[int]
    end_offset: int | None = None
    nbytes: int = 0
    #: SQL sources: the resume token of the key of the batch's last record
    end_key: Any = None

    @property
    def first(self) -> int:
        return self.positions[0]

    @property
    def last(self) -> int:
        return self.positions[-1]

    def __len__(self) -> int:
        return len(self.records)

    def split(self) -> tuple[Batch, Batch]:
        """Halves, for a 413; each keeps ``seq`` (the checkpoint tracks the parent)."""
        mid = len(self.records) // 2
        left = Batch(
            self.seq,
            self.records[:mid],
            self.positions[:mid],
            None,
            sum(map(len, self.records[:mid])),
        )
        right = Batch(
            self.seq,
            self.records[mid:],
            self.positions[mid:],
            self.end_offset,
            sum(map(len, self.records[mid:])),
            self.end_key,
        )
        return left, right
