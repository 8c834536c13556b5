"""PostgreSQL through asyncpg (optional), on the event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import time, timedelta
from typing import Any

import orjson

from ..._exceptions import SourceError
from ..._records import RecordBlock
from ._encoding import _encode_page
from ._keyset import SqlSource, _quote, _short, _what

__all__ = ["PostgresSource"]

# --------------------------------------------------------------------------- PostgreSQL


def _json_fragment(text: str) -> orjson.Fragment:
    if "\n" in text or "\r" in text:  # whitespace only: JSON strings cannot hold raw breaks
        text = text.replace("\r", " ").replace("\n", " ")
    return orjson.Fragment(text)


def _clock(micros: int) -> str:
    seconds, frac = divmod(micros, 1_000_000)
    minutes, sec = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    text = f"{hours:02d}:{minute:02d}:{sec:02d}"
    return f"{text}.{frac:06d}" if frac else text


def _time_decode(value: tuple[int]) -> str:
    return _clock(value[0])


def _time_encode(value: Any) -> tuple[int]:
    if isinstance(value, str):
        if value.startswith("24:00:00"):
            return (86_400_000_000,)
        value = time.fromisoformat(value)
    if not isinstance(value, time):
        raise TypeError(f"expected a time or an ISO-8601 time string, got {type(value).__name__}")
    return (
        (((value.hour * 60) + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond,
    )


def _timetz_decode(value: tuple[int, int]) -> str:
    micros, west = value
    east = -west
    sign = "-" if east < 0 else "+"
    hours, rest = divmod(abs(east), 3600)
    minutes, seconds = divmod(rest, 60)
    offset = f"{sign}{hours:02d}:{minutes:02d}" + (f":{seconds:02d}" if seconds else "")
    return _clock(micros) + offset


def _timetz_encode(value: Any) -> tuple[int, int]:
    if isinstance(value, str):
        value = time.fromisoformat(value)
    if not isinstance(value, time):
        raise TypeError(f"expected a time or an ISO-8601 time string, got {type(value).__name__}")
    offset = value.utcoffset() or timedelta(0)
    return (_time_encode(value.replace(tzinfo=None))[0], -int(offset.total_seconds()))


def _identity(value: Any) -> Any:
    return value


async def _set_codecs(conn: Any) -> None:
    for name in ("json", "jsonb"):
        await conn.set_type_codec(
            name, schema="pg_catalog", encoder=_identity, decoder=_json_fragment, format="text"
        )
    # the text of an interval in the 'iso_8601' style set at connection
    await conn.set_type_codec(
        "interval", schema="pg_catalog", encoder=str, decoder=_identity, format="text"
    )
    await conn.set_type_codec(
        "time", schema="pg_catalog", encoder=_time_encode, decoder=_time_decode, format="tuple"
    )
    await conn.set_type_codec(
        "timetz",
        schema="pg_catalog",
        encoder=_timetz_encode,
        decoder=_timetz_decode,
        format="tuple",
    )


def _asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError:  # pragma: no cover - asyncpg is installed in the test environment
        raise SourceError(
            "PostgreSQL sources need asyncpg: pip install 'asyncsync[postgres]'"
        ) from None
    return asyncpg


@dataclass(slots=True)
class _PgPlan:
    names: tuple[str, ...]
    key_index: int
    first: Any  # prepared statements
    after: Any
    nulls: Any


class PostgresSource(SqlSource):
    """A PostgreSQL query through asyncpg: one connection per :meth:`blocks`, one statement
    prepared per page shape, executed once per page."""

    scheme = "postgresql"

    async def _connect(self) -> Any:
        asyncpg = _asyncpg()
        try:
            conn = await asyncpg.connect(
                self.url,
                timeout=self.connect_timeout,
                server_settings={"IntervalStyle": "iso_8601", "application_name": "asyncsync"},
            )
        except TimeoutError:  # before OSError: it is one
            raise self._error(f"timed out connecting after {self.connect_timeout:g} s") from None
        except OSError as exc:
            raise self._error("cannot connect", exc.strerror or exc) from None
        except asyncpg.PostgresError as exc:
            raise self._error("cannot connect", _pg_message(exc)) from None
        except (ValueError, asyncpg.InterfaceError) as exc:
            raise self._error("invalid database URL or connection failure", exc) from None
        try:
            await _set_codecs(conn)
        except BaseException:
            conn.terminate()
            raise
        return conn

    @staticmethod
    async def _close(conn: Any) -> None:
        try:
            await asyncio.wait_for(conn.close(), 5)
        except BaseException:
            conn.terminate()
            raise

    async def _base_query(self, conn: Any) -> str:
        if self.table is None:
            assert self.query is not None
            return self.query
        # the server's own parsing of the name: case folding, quotes, schema, search_path
        try:
            resolved = await conn.fetchval("SELECT to_regclass($1)::text", self.table)
        except _asyncpg().PostgresError as exc:
            raise self._error(f"invalid table name {self.table!r}", _pg_message(exc)) from None
        if resolved is None:
            raise self._error(f"no such table {self.table!r}")
        return f"SELECT * FROM {resolved}"

    async def _boundaries(self, n: int) -> list[Any]:
        if n < 2:
            return []
        conn = await self._connect()
        try:
            plan = await self._plan(conn)
            base = await self._base_query(conn)
            key_sql = _quote(plan.names[plan.key_index])
            fractions = [k / n for k in range(1, n)]
            sql = (
                f"SELECT percentile_disc($1::float8[]) WITHIN GROUP (ORDER BY q.{key_sql}) "
                f"FROM (\n{base}\n) AS q WHERE q.{key_sql} IS NOT NULL"
            )
            try:
                values = await conn.fetchval(sql, fractions)
            except _asyncpg().PostgresError as exc:
                raise self._error(_what(self), _pg_message(exc)) from None
        finally:
            await self._close(conn)
        return list(values or ())

    async def _plan(self, conn: Any) -> _PgPlan:
        asyncpg = _asyncpg()
        base = await self._base_query(conn)
        try:
            probe = await conn.prepare(f"SELECT * FROM (\n{base}\n) AS q LIMIT 0")
            names = tuple(a.name for a in probe.get_attributes())
            key_index = self._resolve_key(names)
            first_sql, after_sql, nulls_sql = self._page_sql(
                base, _quote(names[key_index]), lambda i: f"${i}"
            )
            first = await conn.prepare(first_sql)
            after = await conn.prepare(after_sql)
            nulls = await conn.prepare(nulls_sql)
        except asyncpg.PostgresError as exc:
            raise self._error(_what(self), _pg_message(exc)) from None
        return _PgPlan(names, key_index, first, after, nulls)

    async def _fetch(self, plan: _PgPlan, last: Any, has_last: bool, limit: int) -> list[Any]:
        """One page: the rows after ``last`` (all rows when not ``has_last``)."""
        asyncpg = _asyncpg()
        try:
            bound = self._bound()
            if has_last:
                rows: list[Any] = await plan.after.fetch(last, limit, *bound)
            else:
                rows = await plan.first.fetch(limit, *bound)
        except (asyncpg.DataError, TypeError, ValueError) as exc:
            if has_last:  # the key to resume after cannot be bound to the key's type
                raise self._error(f"cannot use key {_short(last)}", exc) from None
            raise self._error("reading rows", exc) from None
        except asyncpg.PostgresError as exc:
            raise self._error(f"reading rows after key {_short(last)}", _pg_message(exc)) from None
        except (OSError, asyncpg.InterfaceError) as exc:
            raise self._error("connection lost", exc) from None
        self.pages_read += 1
        self.rows_read += len(rows)
        return rows

    async def _null_probe(self, plan: _PgPlan) -> None:
        try:
            found = await plan.nulls.fetchval()
        except _asyncpg().PostgresError as exc:
            raise self._error(_what(self), _pg_message(exc)) from None
        if found is not None:
            raise self._null_key()

    async def check(self) -> None:
        conn = await self._connect()
        try:
            plan = await self._plan(conn)
            rows = await self._fetch(plan, self._after_value, self.after is not None, 1)
            if rows:
                self._check_token(rows[0][plan.key_index])
            await self._null_probe(plan)
        finally:
            await self._close(conn)
        self.pages_read = self.rows_read = 0
        self._checked = True

    async def blocks(self) -> AsyncIterator[RecordBlock]:
        conn = await self._connect()
        try:
            plan = await self._plan(conn)
            if not self._checked:
                await self._null_probe(plan)
            n, ki, names = self.page_size, plan.key_index, plan.names
            last, has_last = self._after_value, self.after is not None
            position = self.start_position + 1
            while True:
                rows = await self._fetch(plan, last, has_last, n + 1)
                more = len(rows) > n
                extra = rows.pop()[ki] if more else None
                if not rows:
                    break
                keys = [row[ki] for row in rows]
                self._check_page(keys, extra, more, position)
                block = _encode_page(rows, names, ki, position)
                last, has_last = keys[-1], True
                position += len(rows)
                del rows, keys  # only one page of rows alive at a time
                yield block
                if not more:
                    break
        finally:
            await self._close(conn)


def _pg_message(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    hint = getattr(exc, "hint", None)
    return f"{message} ({hint})" if hint else str(message)
