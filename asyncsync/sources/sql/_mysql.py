"""MySQL and MariaDB through aiomysql (optional, extra ``mysql``), on the event loop.

``mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE`` (``mariadb://`` too). Same keyset paging,
key-range shards, resume tokens and JSON encoding as PostgreSQL (see the package docstring);
MySQL's own types: ``DECIMAL`` a string with every digit, ``DATETIME``/``TIMESTAMP``
ISO-8601 (naive, as the server stores them), ``TIME`` its clock text ``"-838:59:59"`` ..
``"838:59:59"`` (it is a duration in MySQL, not a time of day), ``BLOB``/``BINARY``/``BIT``
base64, ``JSON`` its text as a string (the driver does not mark JSON columns; MariaDB's
JSON is ``LONGTEXT``), ``ENUM``/``SET`` a string. Identifiers are quoted with backticks.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from ..._exceptions import SourceError
from ..._records import RecordBlock
from ._encoding import _encode_page
from ._keyset import SqlSource, _short, _what

__all__ = ["MysqlSource"]


def _aiomysql() -> Any:
    try:
        import aiomysql
    except ImportError:
        raise SourceError(
            "MySQL/MariaDB sources need aiomysql: pip install 'asyncsync[mysql]'"
        ) from None
    return aiomysql


def _bquote(identifier: str) -> str:
    if "\x00" in identifier:
        raise SourceError(f"identifier {identifier!r} contains a NUL character")
    return "`" + identifier.replace("`", "``") + "`"


def _clock(td: timedelta) -> str:
    """A MySQL ``TIME`` value as the server prints it."""
    us = (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds
    sign = "-" if us < 0 else ""
    seconds, frac = divmod(abs(us), 1_000_000)
    minutes, sec = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    text = f"{sign}{hours:02d}:{minute:02d}:{sec:02d}"
    return f"{text}.{frac:06d}" if frac else text


def _fix_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    if any(type(v) is timedelta for v in row):
        return tuple(_clock(v) if type(v) is timedelta else v for v in row)
    return row


class MysqlSource(SqlSource):
    """A MySQL/MariaDB query: one connection per :meth:`blocks`, one query per page."""

    scheme = "mysql"

    def _connect_args(self) -> dict[str, Any]:
        parts = urlsplit(self.url)
        params = dict(parse_qsl(parts.query))
        db = unquote(parts.path.lstrip("/")) or params.get("database")
        if not db:
            raise self._error("the URL names no database (mysql://USER@HOST:PORT/DATABASE)")
        try:
            port = parts.port or 3306
        except ValueError as exc:
            raise self._error("invalid database URL", exc) from None
        return {
            "host": parts.hostname or "127.0.0.1",
            "port": port,
            "user": unquote(parts.username or "") or "root",
            "password": unquote(parts.password or "") or params.get("password", ""),
            "db": db,
            "charset": "utf8mb4",
            "autocommit": True,
            "connect_timeout": self.connect_timeout,
        }

    async def _connect(self) -> Any:
        aiomysql = _aiomysql()
        args = self._connect_args()
        try:
            conn = await asyncio.wait_for(aiomysql.connect(**args), self.connect_timeout)
        except TimeoutError:
            raise self._error(f"timed out connecting after {self.connect_timeout:g} s") from None
        except aiomysql.Error as exc:
            raise self._error("cannot connect", exc) from None
        except OSError as exc:
            raise self._error("cannot connect", exc.strerror or exc) from None
        return conn

    @staticmethod
    async def _close(conn: Any) -> None:
        conn.close()

    async def _run(self, conn: Any, sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
        aiomysql = _aiomysql()
        try:
            async with conn.cursor() as cur:
                await cur.execute(sql, args or None)
                rows: list[Any] = list(await cur.fetchall())
                self._names = tuple(d[0] for d in cur.description or ())
                return rows
        except aiomysql.Error as exc:
            raise self._error(_what(self), exc) from None

    async def _base(self, conn: Any) -> str:
        if self.table is None:
            assert self.query is not None
            return self.query
        parts = self.table.split(".")
        quoted = ".".join(_bquote(p.strip("`")) for p in parts)
        if len(parts) == 1:
            found = await self._run(
                conn,
                "SELECT 1 FROM information_schema.tables "
                "WHERE table_schema = DATABASE() AND table_name = %s",
                (parts[0].strip("`"),),
            )
        else:
            found = await self._run(
                conn,
                "SELECT 1 FROM information_schema.tables "
                "WHERE table_schema = %s AND table_name = %s",
                (parts[0].strip("`"), parts[1].strip("`")),
            )
        if not found:
            raise self._error(f"no such table {self.table!r}")
        return f"SELECT * FROM {quoted}"

    async def _plan(self, conn: Any) -> tuple[tuple[str, ...], int, tuple[str, ...]]:
        base = await self._base(conn)
        await self._run(conn, f"SELECT * FROM (\n{base}\n) AS q LIMIT 0")
        names = self._names
        ki = self._resolve_key(names)
        sqls = self._page_sql(base, _bquote(names[ki]), lambda i: "%s")
        return names, ki, sqls

    async def _boundaries(self, n: int) -> list[Any]:
        if n < 2:
            return []
        conn = await self._connect()
        try:
            names, ki, _ = await self._plan(conn)
            base = await self._base(conn)
            key_sql = _bquote(names[ki])
            inner = f"(\n{base}\n) AS q WHERE q.{key_sql} IS NOT NULL"
            count = (await self._run(conn, f"SELECT count(*) FROM {inner}"))[0][0]
            out = []
            sql = f"SELECT q.{key_sql} FROM {inner} ORDER BY q.{key_sql} LIMIT 1 OFFSET %s"
            for k in range(1, n):
                offset = k * count // n - 1
                if offset >= 0:
                    rows = await self._run(conn, sql, (offset,))
                    if rows:
                        out.append(rows[0][0])
            return out
        finally:
            await self._close(conn)

    async def _fetch(
        self, conn: Any, sqls: tuple[str, ...], last: Any, has_last: bool, limit: int
    ) -> list[Any]:
        aiomysql = _aiomysql()
        bound = self._bound()
        sql, args = (sqls[1], (last, limit, *bound)) if has_last else (sqls[0], (limit, *bound))
        try:
            async with conn.cursor() as cur:
                await cur.execute(sql, args)
                rows = [_fix_row(r) for r in await cur.fetchall()]
        except aiomysql.Error as exc:
            raise self._error(f"reading rows after key {_short(last)}", exc) from None
        self.pages_read += 1
        self.rows_read += len(rows)
        return rows

    async def check(self) -> None:
        conn = await self._connect()
        try:
            _names, ki, sqls = await self._plan(conn)
            rows = await self._fetch(conn, sqls, self._after_value, self.after is not None, 1)
            if rows:
                self._check_token(rows[0][ki])
            if await self._run(conn, sqls[2]):
                raise self._null_key()
        finally:
            await self._close(conn)
        self.pages_read = self.rows_read = 0
        self._checked = True

    async def blocks(self) -> AsyncIterator[RecordBlock]:
        conn = await self._connect()
        try:
            names, ki, sqls = await self._plan(conn)
            if not self._checked and await self._run(conn, sqls[2]):
                raise self._null_key()
            n = self.page_size
            last, has_last = self._after_value, self.after is not None
            position = self.start_position + 1
            while True:
                rows = await self._fetch(conn, sqls, last, has_last, n + 1)
                more = len(rows) > n
                extra = rows.pop()[ki] if more else None
                if not rows:
                    break
                keys = [row[ki] for row in rows]
                self._check_page(keys, extra, more, position)
                block = _encode_page(rows, names, ki, position)
                last, has_last = keys[-1], True
                position += len(rows)
                del rows, keys
                yield block
                if not more:
                    break
        finally:
            await self._close(conn)
