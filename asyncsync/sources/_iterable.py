"""Records from Python: any sync or async iterable of dicts or of raw JSON."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Iterable,
    Mapping,
)
from itertools import islice, repeat
from typing import Any

import msgspec
import orjson

from .._records import RecordBlock, Rejected
from ._protocol import SourceBase
from ._reading import _check_positive, _Worker
from ._validate import _RAW_LIMIT, _WS, _find_bad, _raw_text, _reason, _utf8_ok

__all__ = ["IterableSource"]


def _encode_item(item: Any, index: int) -> bytes | Rejected:
    """One item of an iterable: a dict (or anything orjson encodes to an object) or raw JSON."""
    if isinstance(item, bytes | bytearray | memoryview | str):
        if isinstance(item, str):
            try:
                data = item.encode()
            except UnicodeEncodeError:
                text = item.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
                return Rejected(text, index, f"record {index}: not valid Unicode (surrogates)")
        else:
            data = bytes(item)
        line = data.strip(_WS)
        if not line:
            return Rejected(_raw_text(data), index, f"record {index}: empty")
        if _find_bad([line], utf8_ok=line.isascii()):
            return Rejected(_raw_text(line), index, f"record {index}: {_reason(line)}")
        return line
    try:
        data = orjson.dumps(item)
    except TypeError as exc:
        if "64-bit" not in str(exc):
            return Rejected(_repr(item), index, f"record {index}: cannot encode as JSON: {exc}")
        try:  # orjson stops at 64-bit integers; msgspec encodes any int
            data = msgspec.json.encode(item)
        except (TypeError, ValueError, RecursionError) as exc2:
            return Rejected(_repr(item), index, f"record {index}: cannot encode as JSON: {exc2}")
    if not data.startswith(b"{"):
        return Rejected(
            _repr(item), index, f"record {index}: not a JSON object ({type(item).__name__})"
        )
    return data


def _repr(item: Any) -> str:
    text = repr(item)
    return text if len(text) <= _RAW_LIMIT else text[:_RAW_LIMIT] + "…"


def _encode_items(items: list[Any], first: int) -> RecordBlock:
    """A block from consecutive items at index ``first``: C-speed when they are all alike."""
    records: list[bytes] | None = None
    if items and type(items[0]) is bytes:
        with contextlib.suppress(TypeError):  # not all bytes
            lines = list(map(bytes.strip, items, repeat(_WS)))
            ascii_ok = all(map(bytes.isascii, lines))
            if not _find_bad(lines, utf8_ok=ascii_ok or all(map(_utf8_ok, lines))):
                records = lines
    elif items:
        with contextlib.suppress(TypeError):  # something orjson cannot encode: one by one
            out = list(map(orjson.dumps, items))
            if all(map(bytes.startswith, out, repeat(b"{"))):
                records = out
    if records is not None:
        return RecordBlock(records, range(first, first + len(items)))
    positions: list[int] = []
    block = RecordBlock([], positions)
    for i, item in enumerate(items, first):
        got = _encode_item(item, i)
        if isinstance(got, Rejected):
            block.rejects.append(got)
        else:
            block.records.append(got)
            positions.append(i)
    return block


class IterableSource(SourceBase):
    """Records from a sync or async iterable of dicts, or of raw JSON (bytes or str).

    A dict is encoded with orjson (msgspec for integers past 64 bits); raw JSON is validated
    like a JSONL line and sent as given. What cannot be encoded, or is not an object, is
    rejected with its 1-based index. Items are taken ``block_size`` at a time: lists and
    tuples are sliced in place; other sync iterables (generators, DB cursors, which may
    block) are advanced in a worker thread. An async iterable is drained by a helper task
    into a buffer of at most ``block_size`` items, and each block holds what has arrived, so
    a slow async stream's items reach the batcher (and its linger) as they come.
    """

    kind = "iterable"
    size: int | None = None
    linger = True

    def __init__(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        name: str = "<iterable>",
        block_size: int = 512,
    ) -> None:
        _check_positive("block_size", block_size)
        if isinstance(items, str | bytes | bytearray | memoryview | Mapping) or not isinstance(
            items, Iterable | AsyncIterable
        ):
            raise TypeError(
                f"records must be an iterable of dicts or of JSON bytes/str, "
                f"not {type(items).__name__}"
            )
        self._items = items
        self.name = name
        self.block_size = block_size

    async def blocks(self) -> AsyncIterator[RecordBlock]:
        items = self._items
        n = self.block_size
        if isinstance(items, AsyncIterable):
            inner = self._async_blocks(items)
            try:
                async for block in inner:
                    yield block
            finally:
                await inner.aclose()  # now, not at garbage collection: it owns a task
        elif isinstance(items, list | tuple):
            for start in range(0, len(items), n):
                yield _encode_items(list(items[start : start + n]), start + 1)
        else:
            worker = _Worker("asyncsync-read iterable")
            try:
                it = iter(items)
                index = 1
                while chunk := await worker.call(lambda: list(islice(it, n))):
                    yield _encode_items(chunk, index)
                    index += len(chunk)
            finally:
                worker.close()

    async def _async_blocks(self, items: AsyncIterable[Any]) -> AsyncGenerator[RecordBlock, None]:
        cap = self.block_size
        buf: list[Any] = []
        arrived = asyncio.Event()  # buf is not empty, or the pump is done
        room = asyncio.Event()  # buf has room
        room.set()
        done = False
        error: BaseException | None = None

        async def pump() -> None:
            nonlocal done, error
            try:
                async for item in items:
                    buf.append(item)
                    arrived.set()
                    if len(buf) >= cap:
                        room.clear()
                        await room.wait()
            except Exception as exc:  # re-raised by the consumer, in its own task
                error = exc
            finally:
                done = True
                arrived.set()

        task = asyncio.get_running_loop().create_task(pump(), name=f"asyncsync pump {self.name}")
        index = 1
        try:
            while True:
                await arrived.wait()
                arrived.clear()
                chunk = buf[:]
                buf.clear()
                room.set()
                if chunk:
                    yield _encode_items(chunk, index)
                    index += len(chunk)
                if done and not buf:
                    break
            await task  # re-raises what the pump could not keep (a BaseException)
            if error is not None:
                raise error
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
