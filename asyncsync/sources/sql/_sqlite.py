"""SQLite, read-only, through the stdlib driver in a worker thread."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

from ..._exceptions import SourceError
from ..._records import RecordBlock
from ..._redact import redact
from .._reading import _Worker
from ._encoding import SqlBlock, _encode_page
from ._keyset import SqlSource, _quote, _short, _what

__all__ = ["SqliteSource"]

# --------------------------------------------------------------------------- SQLite


def _sqlite_connect(path: str) -> sqlite3.Connection:
    """Open ``path`` read-only (never creates a file). Patched by tests."""
    uri = Path(path).resolve().as_uri() + "?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=5.0, isolation_level=None)


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


class _SqlitePlan:
    __slots__ = ("after_sql", "after_text_sql", "first_sql", "key_index", "names", "nulls_sql")

    def __init__(self, names: tuple[str, ...], key_index: int, sqls: tuple[str, ...]) -> None:
        self.names = names
        self.key_index = key_index
        self.first_sql, self.after_sql, self.nulls_sql = sqls
        # a key that is not valid UTF-8 is compared as the bytes it is made of
        self.after_text_sql = self.after_sql.replace("> ?1", "> CAST(?1 AS TEXT)", 1)


class _SqliteReader:
    """One connection, used only in the source's worker thread."""

    def __init__(self, src: SqliteSource, worker: _Worker) -> None:
        self.src = src
        path = src.path
        if not os.path.exists(path):
            raise src._error(f"no such file {path!r}")
        if os.path.isdir(path):
            raise src._error(f"{path!r} is a directory")
        try:
            self.conn = _sqlite_connect(path)
        except sqlite3.Error as exc:
            raise src._error("cannot open the database", exc) from None
        worker.own(cast(Any, self.conn))
        self.plan = self._plan()

    def _run(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        conn = self.conn
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "decode" not in str(exc).lower():
                raise
        conn.text_factory = _lenient_text  # invalid UTF-8 in this page: reject those rows
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.text_factory = str

    def _plan(self) -> _SqlitePlan:
        src = self.src
        if src.table is not None:
            # "schema.table" is quoted part by part; a name with quotes is taken as written
            table = src.table
            if '"' not in table:
                table = ".".join(_quote(part) for part in table.split("."))
            base = f"SELECT * FROM {table}"
        else:
            assert src.query is not None
            base = src.query
        try:
            cur = self.conn.execute(f"SELECT * FROM (\n{base}\n) AS q LIMIT 0")
        except sqlite3.Error as exc:
            raise src._error(_what(src), exc) from None
        names = tuple(d[0] for d in cur.description or ())
        for name in names:
            # SQLite renames a repeated column of a subquery "name:1", "name:2", ...
            stem, colon, number = name.rpartition(":")
            if colon and number.isdigit() and stem in names:
                src._resolve_key((stem, stem))  # the same error as PostgreSQL's duplicates
        key_index = src._resolve_key(names)
        self.base = base
        sqls = src._page_sql(base, _quote(names[key_index]), lambda i: f"?{i}")
        bound = src._bound()
        try:
            self.conn.execute(sqls[0], (0, *bound)).fetchall()
            self.conn.execute(sqls[1], (None, 0, *bound)).fetchall()
        except sqlite3.Error as exc:
            raise src._error(_what(src), exc) from None
        return _SqlitePlan(names, key_index, sqls)

    def check(self) -> None:
        src, plan = self.src, self.plan
        try:
            bound = src._bound()
            if src._after_value is None:
                rows = self._run(plan.first_sql, (1, *bound))
            else:
                rows = self._run(plan.after_sql, (src._after_value, 1, *bound))
            if rows:
                src._check_token(rows[0][plan.key_index])
            self.null_probe()
        except sqlite3.Error as exc:
            raise src._error(_what(src), exc) from None

    def boundaries(self, n: int) -> list[Any]:
        """The keys at rows ``k * count / n`` (k = 1 .. n-1), 1-based, in key order."""
        key_sql = _quote(self.plan.names[self.plan.key_index])
        inner = f"(\n{self.base}\n) AS q WHERE q.{key_sql} IS NOT NULL"
        try:
            count = self._run(f"SELECT count(*) FROM {inner}")[0][0]
            sql = f"SELECT q.{key_sql} FROM {inner} ORDER BY q.{key_sql} LIMIT 1 OFFSET ?"
            out = []
            for k in range(1, n):
                offset = k * count // n - 1
                if offset >= 0:
                    rows = self._run(sql, (offset,))
                    if rows:
                        out.append(rows[0][0])
        except sqlite3.Error as exc:
            raise self.src._error(_what(self.src), exc) from None
        return out

    def null_probe(self) -> None:
        if self._run(self.plan.nulls_sql):
            raise self.src._null_key()

    def page(self, last: Any, has_last: bool, position: int) -> tuple[SqlBlock, Any, bool]:
        """The page after ``last``: (block, key of its last row, whether more may follow)."""
        src, plan = self.src, self.plan
        n = src.page_size
        bound = src._bound()
        try:
            if not has_last:
                rows = self._run(plan.first_sql, (n + 1, *bound))
            elif isinstance(last, str) and not _utf8_encodable(last):
                raw = last.encode("utf-8", "surrogateescape")
                rows = self._run(plan.after_text_sql, (raw, n + 1, *bound))
            else:
                rows = self._run(plan.after_sql, (last, n + 1, *bound))
        except sqlite3.Error as exc:
            raise src._error(f"reading rows after key {_short(last)}", exc) from None
        src._fetched(rows)
        more = len(rows) > n
        extra = rows.pop()[plan.key_index] if more else None
        ki = plan.key_index
        keys = [row[ki] for row in rows]
        src._check_page(keys, extra, more, position)
        block = _encode_page(rows, plan.names, ki, position)
        return block, (keys[-1] if keys else last), more and bool(rows)


def _utf8_encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class SqliteSource(SqlSource):
    """A SQLite database file, read-only, through the stdlib driver in a worker thread."""

    scheme = "sqlite"

    def __init__(self, url: str, **kwargs: Any) -> None:
        if not url.lower().startswith("sqlite:///") or len(url) <= len("sqlite:///"):
            raise SourceError(
                f"invalid SQLite URL {redact(url)!r}: expected sqlite:///relative/path.db "
                "or sqlite:////absolute/path.db",
                path=redact(url),
            )
        super().__init__(url, **kwargs)
        self.path = url[len("sqlite:///") :]
        self.name = url

    def _fetched(self, rows: Sequence[Any]) -> None:
        """Called (in the worker thread) with each page as fetched: a seam for tests."""
        self.pages_read += 1
        self.rows_read += len(rows)

    async def check(self) -> None:
        worker = _Worker(f"asyncsync-sql {os.path.basename(self.path)}")
        try:
            reader = await worker.call(lambda: _SqliteReader(self, worker))
            await worker.call(reader.check)
        finally:
            worker.close()
        self._checked = True

    async def _boundaries(self, n: int) -> list[Any]:
        worker = _Worker(f"asyncsync-sql {os.path.basename(self.path)}")
        try:
            reader = await worker.call(lambda: _SqliteReader(self, worker))
            return await worker.call(partial(reader.boundaries, n))
        finally:
            worker.close()

    async def blocks(self) -> AsyncIterator[RecordBlock]:
        worker = _Worker(f"asyncsync-sql {os.path.basename(self.path)}")
        reader: _SqliteReader | None = None
        done = False
        try:
            reader = await worker.call(lambda: _SqliteReader(self, worker))
            if not self._checked:
                await worker.call(reader.null_probe)
            last, has_last = self._after_value, self.after is not None
            position = self.start_position + 1
            while True:
                page = partial(reader.page, last, has_last, position)
                block, last, more = await worker.call(page)
                has_last = True
                position += len(block.records) + len(block.rejects)
                if block.records or block.rejects:
                    yield block
                if not more:
                    break
            done = True
        finally:
            if reader is not None and not done:
                # cancelled or failed while a statement may be running: stop it
                with contextlib.suppress(sqlite3.Error):
                    reader.conn.interrupt()
            worker.close()
