"""Crash-safe checkpoints: the state a resumed run starts from.

What is persisted (:class:`CheckpointState`, one small JSON document):

* ``job_id``: made once (uuid4 hex) and kept across resumes, so a re-formed batch carries the
  ``Idempotency-Key`` it was first sent with;
* ``fingerprint`` of the source (path, size, SHA-256 of the first 64 KiB) and of the settings
  that decide batch boundaries; a resume with a different one is refused, saying what changed;
* the *contiguous* watermark: every batch before ``watermark.next_seq`` is settled
  (acknowledged or dead-lettered); ``position``/``offset`` say where reading resumes;
* ``settled_beyond``: position ranges settled past the watermark, which a resume skips;
* ``rejected_through``: input rejects up to this position are already in the dead-letter file;
* the run counters, so the final summary covers the whole job.

Invariant: the watermark never passes a batch that is dispatched and not yet settled, however
the batches complete. A checkpoint therefore only ever claims settled work; a crash at any
moment loses at most the batches in flight, which a resume sends again with the same keys.

Cost (``python -m benchmarks.micro_checkpoint``, 2 shared cores): :class:`WatermarkTracker`
does O(1) amortised work per call: ``dispatched`` + ``settled`` take ~300-330 ns per batch in
order, ~530-575 ns completed out of order (windows of 32 and 256), ~440-480 ns with one batch
stuck while 20 000 settle behind it (they collapse into one range); the pipeline's whole
per-batch path through :class:`Checkpointer` (``skip``, ``dispatched``, ``settled``,
``await tick()``) is ~0.7-0.85 µs. At 5 000 batches/s (1 M records/s at batch 200) that is
~0.35-0.5 % of one core, plus one save per second, ~0.1 % of wall time spent in a worker
thread: far under the 5 % budget.

Write method: a 1.2 KB state (32 settled ranges), ext4 on a virtio disk, the methods
interleaved save by save, median of 300 per run, ranges over six runs on a machine shared
with other jobs (p90 is 1-10 ms for every fsyncing method, from the neighbours' I/O):

==================================================  ===========  ===============
method                                              ms per save  saves/s
==================================================  ===========  ===============
temp file + fsync + ``os.replace`` + fsync of dir   0.47-0.79    ~1 300-2 100
temp file + fsync + ``os.replace``, no dir fsync    0.31-0.66    ~1 500-3 100
SQLite WAL, ``synchronous=FULL``                    0.22-0.49    ~2 000-4 600
SQLite WAL, ``synchronous=NORMAL``                  0.016-0.063  ~16 000-62 000
the chosen one through ``asave`` (thread hop)       0.73-1.08    ~900-1 400
==================================================  ===========  ===============

Chosen: temp file + fsync + ``os.replace`` + fsync of the directory. SQLite is faster per
save (1.5-2x with ``FULL``; ``NORMAL`` is fast because it does not fsync at commit, so a power
loss can roll it back), but at one save per second SQLite ``FULL`` would cost ~0.03 % of
wall time and the file costs ~0.06 %, in a worker thread: speed does not decide. The file
wins on everything else: one JSON document beside the source that ``cat`` and ``jq`` read,
no ``-wal``/``-shm`` side files to forget, copy half of or leave behind, no schema, and
atomic by construction (a reader sees the old or the new document, whole; a crash leaves at
most a stale ``.tmp``, which the next save truncates). The directory fsync makes the rename
itself durable; without it a power loss could bring back the previous checkpoint, which is
still consistent (it only resends a few more batches, with their keys).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import math
import os
import threading
import time
import uuid
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

import anyio
import anyio.to_thread
import msgspec

from .._exceptions import CheckpointError, SourceError
from .._records import Batch, Rejected
from .._summary import Counters

__all__ = [
    "CHECKPOINT_SUFFIX",
    "DEFAULT_CHECKPOINT_INTERVAL",
    "FORMAT_VERSION",
    "HEAD_BYTES",
    "CheckpointState",
    "CheckpointStore",
    "Checkpointer",
    "Fingerprint",
    "Watermark",
    "WatermarkTracker",
    "default_checkpoint_path",
]

#: version of the JSON document; a checkpoint of another version is refused, not guessed at
FORMAT_VERSION: Final = 1
#: bytes of the source hashed into the fingerprint
HEAD_BYTES: Final = 64 * 1024
#: seconds between periodic saves
DEFAULT_CHECKPOINT_INTERVAL: Final = 1.0
CHECKPOINT_SUFFIX: Final = ".asyncsync"

SettingValue = str | int | float | bool | None
Range = tuple[int, int]


# --------------------------------------------------------------------------- watermark


@dataclass(frozen=True, slots=True)
class Watermark:
    """Every batch before ``next_seq`` is settled.

    ``position`` is the last position of batch ``next_seq - 1`` (0 before any), ``offset`` the
    byte offset just after it in a file source (``None`` when unknown: streams, iterables, or
    nothing settled yet). A resumed run reads from ``offset`` and numbers positions and
    batches on from ``position + 1`` and ``next_seq``.
    """

    next_seq: int = 0
    position: int = 0
    offset: int | None = None
    #: SQL sources: the resume token of the key at ``position``
    key: Any = None


class _Run:
    """Settled batches with consecutive indexes beyond the watermark, merged into one range."""

    __slots__ = ("end", "first", "key", "last", "offset")

    def __init__(self, end: int, first: int, last: int, offset: int | None, key: Any) -> None:
        self.end = end  # index of the run's last batch
        self.first = first  # first position of its first batch
        self.last = last  # last position of its last batch
        self.offset = offset  # end offset of its last batch
        self.key = key  # end key of its last batch (SQL)


class WatermarkTracker:
    """The contiguous settled watermark over batches that complete in any order.

    Pure and synchronous; every call is O(1) amortised. The reader calls :meth:`dispatched`
    for each batch in source order (``seq`` strictly increasing) before queueing it, workers
    call :meth:`settled` once per batch in any order.

    Batches are indexed internally in dispatch order, continuing from ``start.next_seq``; with
    seqs numbered on from the checkpoint (as the pipeline does) index and ``seq`` coincide.
    Settled batches beyond the watermark are merged into runs of consecutive indexes; when
    the batch at the watermark settles, the watermark jumps over the run that follows it. So
    memory is O(in flight + gaps), not O(batches settled while one batch is stuck retrying).

    ``settled_before`` and ``rejected_through`` come from the checkpoint being resumed: the
    ranges are reported in :attr:`settled_beyond` until the watermark passes them, so a second
    crash does not forget them.
    """

    __slots__ = (
        "_carried",
        "_carried_firsts",
        "_count",
        "_key",
        "_last_seq",
        "_next",
        "_offset",
        "_pending",
        "_position",
        "_rejected",
        "_run_end",
        "_run_start",
    )

    def __init__(
        self,
        start: Watermark | None = None,
        *,
        settled_before: Iterable[Range] = (),
        rejected_through: int = 0,
    ) -> None:
        start = start or Watermark()
        if start.next_seq < 0 or start.position < 0:
            raise ValueError(f"watermark must not be negative: {start}")
        self._next = start.next_seq  # index of the first batch not settled
        self._position = start.position
        self._offset = start.offset
        self._key = start.key
        self._count = start.next_seq  # index the next dispatched batch gets
        self._last_seq = start.next_seq - 1
        # seq -> (index, first, last, end_offset) of batches dispatched and not settled
        self._pending: dict[int, tuple[int, int, int, int | None, Any]] = {}
        self._run_start: dict[int, _Run] = {}
        self._run_end: dict[int, _Run] = {}
        self._rejected = max(rejected_through, 0)
        carried = _merge(r for r in settled_before if r[1] > start.position)
        self._carried: list[Range] = carried
        self._carried_firsts = [r[0] for r in carried]

    # -- the hot path: one call each per batch

    def dispatched(self, batch: Batch) -> None:
        """``batch`` is about to be queued; the watermark will wait for it."""
        seq = batch.seq
        if seq <= self._last_seq:
            raise RuntimeError(
                f"batch {seq} dispatched after batch {self._last_seq}: "
                "batches must be dispatched once each, in source order"
            )
        self._last_seq = seq
        positions = batch.positions
        self._pending[seq] = (
            self._count,
            positions[0],
            positions[-1],
            batch.end_offset,
            batch.end_key,
        )
        self._count += 1

    def settled(self, seq: int, delivered: bool = True) -> None:
        """Batch ``seq`` is acknowledged (``delivered``) or dead-lettered: either way, done.

        A dead-lettered batch is settled too: its records are in the dead-letter file, and a
        resume must not send them again.
        """
        try:
            index, first, last, offset, key = self._pending.pop(seq)
        except KeyError:
            raise RuntimeError(
                f"batch {seq} settled twice"
                if seq <= self._last_seq
                else f"batch {seq} settled but never dispatched"
            ) from None
        if index == self._next:
            # the batch at the watermark: advance over it and any run right behind it
            run = self._run_start.pop(index + 1, None)
            if run is None:
                self._next = index + 1
                self._position = last
                self._offset = offset
                self._key = key
            else:
                del self._run_end[run.end]
                self._next = run.end + 1
                self._position = run.last
                self._offset = run.offset
                self._key = run.key
            return
        # beyond the watermark: the batch at the watermark is still in flight, so the
        # watermark stays; record the batch in a run, merged with its neighbours
        left = self._run_end.pop(index - 1, None)
        if left is None:
            merged = self._run_start[index] = _Run(index, first, last, offset, key)
        else:
            merged = left
            merged.end, merged.last, merged.offset, merged.key = index, last, offset, key
        right = self._run_start.pop(index + 1, None)
        if right is not None:
            del self._run_end[right.end]
            merged.end, merged.last, merged.offset = right.end, right.last, right.offset
            merged.key = right.key
        self._run_end[merged.end] = merged

    def rejected_through(self, position: int) -> None:
        """Input rejects up to ``position`` are written to the dead-letter file."""
        if position > self._rejected:
            self._rejected = position

    # -- resume

    def settled_before(self, batch: Batch) -> bool:
        """True when the resumed checkpoint says ``batch`` was already settled.

        A batch is re-formed with the same boundaries when the fingerprint matches, so it
        lies wholly inside one settled range or outside all of them.
        """
        carried = self._carried
        if not carried:
            return False
        first = batch.positions[0]
        i = bisect_right(self._carried_firsts, first) - 1
        return i >= 0 and batch.positions[-1] <= carried[i][1]

    def skip(self, batch: Batch) -> None:
        """Record ``batch`` as dispatched and settled without sending it (settled before)."""
        self.dispatched(batch)
        self.settled(batch.seq)

    # -- reading the state

    @property
    def watermark(self) -> Watermark:
        return Watermark(self._next, self._position, self._offset, self._key)

    @property
    def in_flight(self) -> int:
        """Batches dispatched and not yet settled."""
        return len(self._pending)

    @property
    def next_dispatch_seq(self) -> int:
        """The smallest ``seq`` the next :meth:`dispatched` accepts."""
        return self._last_seq + 1

    @property
    def last_rejected(self) -> int:
        """The position up to which input rejects are in the dead-letter file."""
        return self._rejected

    @property
    def settled_beyond(self) -> list[Range]:
        """Sorted, disjoint ``(first, last)`` position ranges settled beyond the watermark.

        Adjacent settled batches are merged, so the list is no longer than the number of
        gaps (batches in flight, plus ranges carried over from the resumed checkpoint).
        """
        ranges = [(r.first, r.last) for r in self._run_start.values()]
        position = self._position
        for first, last in self._carried:
            if last > position:
                ranges.append((max(first, position + 1), last))
        return _merge(ranges)

    def snapshot(
        self,
        counters: Counters,
        *,
        job_id: str,
        fingerprint: Fingerprint,
        complete: bool = False,
        updated_at: float | None = None,
    ) -> CheckpointState:
        """The state to persist now. ``updated_at`` is wall-clock seconds (default: now)."""
        beyond = tuple(self.settled_beyond)
        if complete and (self._pending or beyond):
            raise RuntimeError(
                f"a job with {len(self._pending)} batches in flight and {len(beyond)} ranges "
                "settled beyond the watermark cannot be complete"
            )
        return CheckpointState(
            job_id=job_id,
            fingerprint=fingerprint,
            watermark=self.watermark,
            settled_beyond=beyond,
            rejected_through=self._rejected,
            counters=_int_counters(counters),
            retries_by_status=dict(counters.retries_by_status),
            updated_at=_iso(time.time() if updated_at is None else updated_at),
            complete=complete,
        )

    @classmethod
    def resume(cls, state: CheckpointState) -> WatermarkTracker:
        """A tracker continuing the job of ``state``."""
        return cls(
            state.watermark,
            settled_before=state.settled_beyond,
            rejected_through=state.rejected_through,
        )


def _merge(ranges: Iterable[Range]) -> list[Range]:
    """Sort ranges and merge those that overlap or touch (no position between them)."""
    out: list[Range] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + 1:
            if last > out[-1][1]:
                out[-1] = (out[-1][0], last)
        else:
            out.append((first, last))
    return out


def _int_counters(counters: Counters) -> dict[str, int]:
    # every int counter but the in-flight gauge, which is meaningless in another run
    return {
        f.name: value
        for f in dataclasses.fields(counters)
        if f.name != "in_flight" and type(value := getattr(counters, f.name)) is int
    }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------- fingerprint


@dataclass(frozen=True, slots=True, kw_only=True)
class Fingerprint:
    """What must not change for a resume to re-form the same batches.

    ``kind`` is ``"file"`` (``path`` absolute, ``size`` and ``head_sha256`` of the first
    :data:`HEAD_BYTES`) or ``"stream"`` (``path`` is a name, e.g. ``"<stdin>"``). ``settings``
    are those that decide batch boundaries and bodies (batch size, max bytes, body format,
    wrap key, ...), as JSON scalars.

    Any size change is a mismatch, appends included: resuming a file that grew would be
    possible, but the simple rule cannot go wrong. An in-place edit past the first 64 KiB that
    keeps the size is not detected.
    """

    kind: Literal["file", "stream"]
    path: str
    size: int | None = None
    head_sha256: str | None = None
    settings: Mapping[str, SettingValue] = field(default_factory=dict)

    @classmethod
    def of_file(
        cls, path: str | os.PathLike[str], settings: Mapping[str, SettingValue]
    ) -> Fingerprint:
        """Fingerprint a file source; :class:`SourceError` when it cannot be read."""
        given = Path(path)
        try:
            resolved = given.resolve(strict=True)
            with resolved.open("rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(HEAD_BYTES)
        except OSError as exc:
            raise SourceError(
                f"cannot read {given} to fingerprint it: {_reason(exc)}", path=str(given)
            ) from exc
        return cls(
            kind="file",
            path=str(resolved),
            size=size,
            head_sha256=hashlib.sha256(head).hexdigest(),
            settings=_settings(settings),
        )

    @classmethod
    def of_stream(cls, name: str, settings: Mapping[str, SettingValue]) -> Fingerprint:
        """Fingerprint a stream (stdin, an iterable): only its name and the settings."""
        return cls(kind="stream", path=name, settings=_settings(settings))

    def diff(self, other: Fingerprint) -> list[str]:
        """What changed from ``self`` (the checkpoint's) to ``other`` (this run's); [] if none."""
        changes: list[str] = []
        if self.kind != other.kind:
            changes.append(f"source kind changed: {self.kind} -> {other.kind}")
        if self.path != other.path:
            changes.append(f"source changed: {self.path} -> {other.path}")
        if self.kind == other.kind == "file":
            if self.size != other.size:
                changes.append(f"source size changed: {self.size} -> {other.size} bytes")
            elif self.head_sha256 != other.head_sha256:
                changes.append(f"source content changed: the first {HEAD_BYTES // 1024} KiB differ")
        for key in sorted(self.settings.keys() | other.settings.keys()):
            old = self.settings.get(key)
            new = other.settings.get(key)
            if old != new or type(old) is not type(new):
                changes.append(f"{key} changed: {_show(old)} -> {_show(new)}")
        return changes


def _settings(settings: Mapping[str, SettingValue]) -> dict[str, SettingValue]:
    out: dict[str, SettingValue] = {}
    for key in sorted(settings):
        value = settings[key]
        if not isinstance(key, str) or not isinstance(value, str | int | float | bool | None):
            raise TypeError(
                f"fingerprint setting {key!r} must map a str to a JSON scalar, "
                f"got {type(value).__name__}"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise TypeError(f"fingerprint setting {key!r} must be finite, got {value!r}")
        out[key] = value
    return out


def _show(value: SettingValue) -> str:
    return "not set" if value is None else str(value)


# --------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointState:
    """One checkpoint: JSON-serialisable with :meth:`to_json`, read back with :meth:`from_json`.

    It holds positions, counts and the source's fingerprint, never a token or a secret.
    """

    version: int = FORMAT_VERSION
    job_id: str
    fingerprint: Fingerprint
    watermark: Watermark = field(default_factory=Watermark)
    settled_beyond: tuple[Range, ...] = ()
    rejected_through: int = 0
    counters: Mapping[str, int] = field(default_factory=dict)
    retries_by_status: Mapping[str, int] = field(default_factory=dict)
    updated_at: str = ""
    complete: bool = False

    def to_json(self) -> bytes:
        return _ENCODER.encode(self) + b"\n"

    @classmethod
    def from_json(cls, data: bytes, *, source: str = "checkpoint") -> CheckpointState:
        """Decode and validate; :class:`CheckpointError` naming ``source`` when it is not one."""
        try:
            version = _VERSION_DECODER.decode(data).version
        except msgspec.DecodeError as exc:
            raise CheckpointError(
                f"{source} is corrupt ({exc}); delete it or start over with --no-resume"
            ) from exc
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{source} has format version {version}, this asyncsync reads version "
                f"{FORMAT_VERSION}; delete it or start over with --no-resume"
            )
        try:
            state = _STATE_DECODER.decode(data)
        except msgspec.DecodeError as exc:
            raise CheckpointError(
                f"{source} is corrupt ({exc}); delete it or start over with --no-resume"
            ) from exc
        problem = state._problem()
        if problem:
            raise CheckpointError(
                f"{source} is inconsistent ({problem}); delete it or start over with --no-resume"
            )
        return state

    def restore_counters(self, counters: Counters) -> None:
        """Seed a new run's ``counters`` so its summary covers the whole job."""
        for name, value in self.counters.items():
            if name != "in_flight" and type(getattr(counters, name, None)) is int:
                setattr(counters, name, value)
        counters.retries_by_status.update(self.retries_by_status)

    def _problem(self) -> str | None:
        w = self.watermark
        if w.next_seq < 0 or w.position < 0 or (w.offset is not None and w.offset < 0):
            return f"negative watermark {w}"
        previous = w.position
        for first, last in self.settled_beyond:
            if not previous < first <= last:
                return f"settled range {first}-{last} overlaps {previous}"
            previous = last
        if self.complete and self.settled_beyond:
            return "complete, yet batches settled beyond the watermark"
        return None


class _Versioned(msgspec.Struct):
    version: int


_ENCODER = msgspec.json.Encoder()
_VERSION_DECODER = msgspec.json.Decoder(_Versioned)
_STATE_DECODER = msgspec.json.Decoder(CheckpointState)


# --------------------------------------------------------------------------- store


def default_checkpoint_path(source: str | os.PathLike[str] | None) -> Path | None:
    """``<source>.asyncsync`` beside a file source; ``None`` for stdin (``"-"``) or no path."""
    if source is None or os.fspath(source) in ("-", ""):
        return None
    path = Path(source)
    return path.with_name(path.name + CHECKPOINT_SUFFIX)


class CheckpointStore:
    """One checkpoint file, written atomically and durably.

    :meth:`save` writes ``<path>.tmp``, fsyncs it, renames it over ``path`` and fsyncs the
    directory: after a crash, ``path`` holds the previous or the new state, whole. Saves are
    serialised by a lock (so :meth:`asave` from several tasks is safe). One process per
    checkpoint file: two runs of the same job at once are not detected.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CheckpointStore({str(self.path)!r})"

    def load(self) -> CheckpointState | None:
        """The saved state, ``None`` when there is none; :class:`CheckpointError` when unusable."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CheckpointError(f"cannot read checkpoint {self.path}: {_reason(exc)}") from exc
        return CheckpointState.from_json(data, source=f"checkpoint {self.path}")

    def save(self, state: CheckpointState) -> None:
        """Replace the checkpoint with ``state``; :class:`CheckpointError` if it cannot."""
        data = state.to_json()
        with self._lock:
            try:
                _atomic_write(self.path, self.tmp_path, data)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(self.tmp_path)
                raise CheckpointError(
                    f"cannot write checkpoint {self.path}: {_reason(exc)}"
                ) from exc

    async def asave(self, state: CheckpointState) -> None:
        """:meth:`save` in a worker thread, off the event loop.

        Not abandoned on cancellation: the caller waits for the write to finish, so a
        cancelled run never leaves a save running behind its back.
        """
        await anyio.to_thread.run_sync(self.save, state)

    def delete(self) -> None:
        """Remove the checkpoint (and a leftover temp file); no error if there is none."""
        with self._lock:
            for p in (self.path, self.tmp_path):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    raise CheckpointError(f"cannot delete checkpoint {p}: {_reason(exc)}") from exc


def _atomic_write(path: Path, tmp: Path, data: bytes) -> None:
    # O_TRUNC: a temp file left by a crash is overwritten, never appended to or renamed
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)  # the data is on disk before the name points at it
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)  # the rename itself is on disk


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # pragma: no cover - no directory fsync on Windows
        return
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        # some file systems (network ones) cannot fsync a directory: the rename is still
        # atomic there, only its durability is up to the file system
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _reason(exc: OSError) -> str:
    if exc.errno is not None and exc.strerror:
        return f"{exc.strerror} [{errno.errorcode.get(exc.errno, exc.errno)}]"
    return str(exc) or type(exc).__name__


# --------------------------------------------------------------------------- checkpointer


class Checkpointer:
    """Tracker + store + throttle: what the pipeline talks to (its ``Ledger``).

    The per-batch calls go straight to the :class:`WatermarkTracker`; :meth:`tick` (after each
    settlement) saves at most once per ``interval`` seconds of ``clock``, in a worker thread,
    one save at a time. A save that fails raises :class:`CheckpointError`: the run stops
    rather than continue without a checkpoint. With ``store=None`` (stdin without
    ``--checkpoint``) nothing is written.
    """

    def __init__(
        self,
        store: CheckpointStore | None,
        tracker: WatermarkTracker,
        *,
        job_id: str,
        fingerprint: Fingerprint,
        interval: float = DEFAULT_CHECKPOINT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        previous: CheckpointState | None = None,
        before_save: Callable[[], None] | None = None,
    ) -> None:
        if not interval >= 0:
            raise ValueError(f"interval must be >= 0, got {interval!r}")
        self.store = store
        self.tracker = tracker
        self.job_id = job_id
        self.fingerprint = fingerprint
        #: the checkpoint this run resumes, or None for a new job
        self.previous = previous
        self.interval = interval
        self._clock = clock
        self._wall = wall_clock
        self._last_save = clock()
        self._lock = anyio.Lock()
        #: saves written, and seconds spent in them (for the cost of checkpointing)
        self.saves = 0
        self.save_seconds = 0.0
        #: blocking work that must be durable before a save claims it (the dead-letter
        #: file's fsync): run in a worker thread just before each save
        self.before_save = before_save

    @classmethod
    def open(
        cls,
        store: CheckpointStore | None,
        fingerprint: Fingerprint,
        *,
        resume: bool = True,
        interval: float = DEFAULT_CHECKPOINT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> Checkpointer:
        """Resume the job in ``store``, or start a new one.

        * no checkpoint, or a *complete* one: a new job (new ``job_id``);
        * ``resume`` and an incomplete one: continue it, or raise :class:`CheckpointError`
          listing what changed when the fingerprint differs;
        * not ``resume``: delete the checkpoint and start a new job, so that a crash before
          the first save cannot resume the abandoned job.
        """
        previous = store.load() if store is not None else None
        if previous is not None and not resume:
            assert store is not None
            store.delete()
            previous = None
        if previous is not None and not previous.complete:
            assert store is not None
            changes = previous.fingerprint.diff(fingerprint)
            if changes:
                raise CheckpointError(
                    f"checkpoint {store.path} is for another job: "
                    + "; ".join(changes)
                    + ". Start over with --no-resume, or restore the source and settings"
                )
            return cls(
                store,
                WatermarkTracker.resume(previous),
                job_id=previous.job_id,
                fingerprint=fingerprint,
                interval=interval,
                clock=clock,
                wall_clock=wall_clock,
                previous=previous,
            )
        return cls(
            store,
            WatermarkTracker(),
            job_id=uuid.uuid4().hex,
            fingerprint=fingerprint,
            interval=interval,
            clock=clock,
            wall_clock=wall_clock,
        )

    @property
    def resumed(self) -> bool:
        return self.previous is not None

    # -- the pipeline's Ledger

    def skip(self, batch: Batch) -> bool:
        """True (and the batch counts as settled) when the resumed run already settled it."""
        if self.tracker.settled_before(batch):
            self.tracker.skip(batch)
            return True
        return False

    def skip_reject(self, reject: Rejected) -> bool:
        """True when this input reject is already in the dead-letter file."""
        return reject.position <= self.tracker.last_rejected

    def dispatched(self, batch: Batch) -> None:
        self.tracker.dispatched(batch)

    def settled(self, seq: int, delivered: bool = True) -> None:
        self.tracker.settled(seq, delivered)

    def rejected_through(self, position: int) -> None:
        self.tracker.rejected_through(position)

    def due(self) -> bool:
        """True when :meth:`tick` would save: the interval has passed and no save is running."""
        return self._clock() - self._last_save >= self.interval and not self._lock.locked()

    async def tick(self, counters: Counters) -> None:
        """Called after each settlement: :meth:`maybe_save`, inlined (this is per batch)."""
        if self._clock() - self._last_save >= self.interval and not self._lock.locked():
            async with self._lock:
                await self._save(self.snapshot(counters))

    # -- saving

    def snapshot(self, counters: Counters, *, complete: bool = False) -> CheckpointState:
        return self.tracker.snapshot(
            counters,
            job_id=self.job_id,
            fingerprint=self.fingerprint,
            complete=complete,
            updated_at=self._wall(),
        )

    async def maybe_save(self, counters: Counters) -> bool:
        """Save if ``interval`` has passed since the last save; True when it saved.

        Returns at once (False) when not due, or while another save is being written.
        """
        if self._clock() - self._last_save < self.interval or self._lock.locked():
            return False
        async with self._lock:
            await self._save(self.snapshot(counters))
        return True

    async def final_save(self, counters: Counters, *, complete: bool) -> CheckpointState:
        """Save now, after any save in progress; shielded, so it completes under cancellation.

        ``complete=True`` requires no batch in flight (:class:`RuntimeError` otherwise).
        """
        with anyio.CancelScope(shield=True):
            async with self._lock:
                state = self.snapshot(counters, complete=complete)
                await self._save(state)
        return state

    async def _save(self, state: CheckpointState) -> None:
        self._last_save = self._clock()
        if self.store is None:
            return
        started = time.perf_counter()
        if self.before_save is not None:
            await anyio.to_thread.run_sync(self.before_save)
        await self.store.asave(state)
        self.saves += 1
        self.save_seconds += time.perf_counter() - started
