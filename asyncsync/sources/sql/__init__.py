"""SQL sources: rows of a query or table, streamed by keyset pagination on a unique key.

``open_sql_source("sqlite:///export.db", table="accounts", key="id")`` or
``open_sql_source("postgresql://user@host/db", query="SELECT ...", key="id")``: each row becomes
one JSON object (column name → value), read one page at a time::

    SELECT * FROM (<query>) AS q WHERE q."key" > $last ORDER BY q."key" LIMIT <page_size + 1>

(the first page has ``WHERE q."key" IS NOT NULL`` instead). Only one page of rows is held at a
time, so memory does not grow with the table; no transaction or cursor stays open between pages,
so a run of hours holds no snapshot on the server. Each page is fast when the planner can push
the key condition into the query and walk an index on the key (a plain table, or a simple
``SELECT ... FROM t WHERE ...``); a query it cannot see through (aggregates, ``DISTINCT``, window
functions) is evaluated again for every page, which is correct but slow on big inputs.

The key must be unique and non-null, in the order the database sorts it (the comparison and
``ORDER BY`` use the same collation, so text keys work in any collation). This is checked, not
assumed: a NULL key is a :class:`SourceError` from :meth:`SqlSource.check` (before anything is
sent; the probe is free on a ``NOT NULL`` or primary-key column, an index lookup on an indexed
one, one scan of the query otherwise); two equal keys next to each other, within a page or
across a page boundary (one row more than the page is fetched for that), are a
:class:`SourceError` when read.

Positions and resume
--------------------
A row's position is its 1-based ordinal in key order, counted from ``start_position + 1``: the
pipeline's positions (strictly increasing ints) and the Idempotency-Keys derived from them work
unchanged. Each block also carries ``keys``: the *resume token* of every record's key value, in
the same order as ``records``. A resumed run needs the token of the watermark's last record and
the watermark position, and nothing else: ``source.resumed(position=P, key=T)`` continues at the
first row whose key is greater than the key of ``T``, numbered ``P + 1`` on. Reading starts
there in the database (one index seek), not by reading and skipping ``P`` rows.

A token is JSON as it is for the common key types (an int or a string), else a ``[type, text]``
pair that :func:`key_from_token` turns back into the value the driver binds:

=================  =====================================  ============================
key value          token                                  e.g.
=================  =====================================  ============================
int                the int                                ``1234``
str                the string                             ``"ACC-00001234"``
float              the float (``["float", "inf"]``, ...)  ``1.5``
Decimal            ``["decimal", str(value)]``            ``["decimal", "10.50"]``
UUID               ``["uuid", canonical]``                ``["uuid", "6f1e…"]``
datetime           ``["datetime", isoformat]``            ``["datetime", "2026-11-28T12:00:00"]``
date               ``["date", isoformat]``                ``["date", "2026-11-28"]``
time               ``["time", isoformat]``                ``["time", "12:00:00"]``
bytes              ``["bytes", base64]``                  ``["bytes", "AP8="]``
=================  =====================================  ============================

Any other key type (bool, json, intervals, network addresses, ...) is a :class:`SourceError`
from :meth:`SqlSource.check`. Resuming assumes the rows up to the key did not change between the
runs (as a file source assumes its file did not): the positions after the key are counted from
``P + 1`` again.

JSON encoding of values
-----------------------
orjson encodes each row, natively where it can:

=========================================  ====================================================
value (PostgreSQL type / SQLite storage)   JSON
=========================================  ====================================================
NULL                                       ``null``
bool                                       ``true`` / ``false``
int (int2/4/8, oid; SQLite INTEGER)        a number, every digit kept: ``9007199254740993``
                                           stays exact in the JSON text (a reader that parses
                                           numbers as doubles rounds it; that is the reader's)
float (float4/8; SQLite REAL)              a number; NaN and ±Infinity have no JSON form and
                                           become ``null``
numeric / Decimal                          a string in plain notation as PostgreSQL prints it:
                                           ``"10.50"``, ``"0.0000001"``, ``"NaN"``. Not a
                                           number: a double cannot hold ``numeric(38,10)`` (or
                                           0.1) exactly, and most JSON readers parse numbers
                                           as doubles; the string keeps every digit and the
                                           scale (``"10.50"`` is not ``10.5``)
text, varchar, char, name, citext, enum,   a string
money (formatted by the server), others
without a binary codec (tsvector, ...)
date                                       ``"2026-11-28"``
timestamp (no time zone)                   ``"2026-11-28T12:00:00"``: naive stays naive
timestamptz                                ``"2026-11-28T12:00:00+00:00"``: the driver gives it
                                           in UTC, the offset is always written
time                                       ``"12:00:00"``, ``"12:00:00.500000"``, ``"24:00:00"``
timetz                                     ``"12:00:00+05:30"`` (ISO-8601 offset, east positive)
±infinity dates and timestamps             asyncpg's sentinels: ``"9999-12-31"``,
                                           ``"0001-01-01T00:00:00"`` (a limitation of the
                                           driver's decoder)
interval                                   an ISO-8601 duration, as PostgreSQL's ``iso_8601``
                                           interval style prints it: ``"P1Y2M-3DT4H5M6.5S"``.
                                           Not seconds: a month or a day is not a fixed number
                                           of seconds, and the driver's ``timedelta`` would
                                           turn one month into 30 days
uuid                                       ``"6f1e2d3c-…"`` (canonical, lower case)
bytea / BLOB                               a base64 string (standard alphabet, padded)
json, jsonb                                embedded as JSON, not as a string: ``{"a": [1]}``
                                           (the server's text, with any line break turned into
                                           a space so an NDJSON body stays one line per
                                           record). SQLite has no JSON type: TEXT holding JSON
                                           stays a string
arrays                                     lists (nested for multi-dimensional arrays), each
                                           element encoded by these rules
inet, cidr                                 ``"192.168.0.1/24"`` (their text)
ranges                                     ``{"lower": …, "upper": …, "lower_inc": …,
                                           "upper_inc": …, "empty": …}``
composite (row) types                      an object (named fields) or a list (anonymous row)
point, box, ... (geometric)                lists of numbers
bit, varbit                                ``"0101"``
=========================================  ====================================================

A row that cannot be encoded (SQLite TEXT that is not valid UTF-8, a value of a type none of
the above covers) is a :class:`Rejected` with its position, its key and the reason; the run
goes on. Its ``raw`` is the row with each unencodable value replaced by its ``repr``.

Errors
------
A bad URL, a missing database file, an unreachable server, a failed login, a missing table, a
query that does not compile, a key that is not a column of the query (the message lists the
columns), a key of an unsupported type or with NULLs: :class:`SourceError` (exit 2) from
:meth:`SqlSource.check`, which connects and runs the first page with ``LIMIT 1``; call it before
any request is sent. :meth:`SqlSource.blocks` raises the same errors if ``check()`` was not
called. No message contains the password of the URL (it is also registered with
:func:`asyncsync._redact.register_secret`); :attr:`SqlSource.name` is the URL without it.

Off the event loop: SQLite is driven by one dedicated thread per :meth:`SqlSource.blocks` (and
per :meth:`SqlSource.check`), which also encodes the rows; the loop only receives finished
blocks. A cancelled read interrupts the running statement (``sqlite3.Connection.interrupt``).
PostgreSQL is asyncpg's own protocol on the loop: each page is one execution of a statement
prepared once per connection; rows are encoded on the loop (a few ms per 2000-row page).
"""

from __future__ import annotations

from typing import Any

from ..._exceptions import SourceError
from ..._redact import redact
from ._encoding import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_PAGE_SIZE,
    KeyToken,
    SqlBlock,
    key_from_token,
    key_token,
)
from ._keyset import SqlSource, display_url
from ._mysql import MysqlSource
from ._postgres import PostgresSource
from ._sqlite import SqliteSource

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "KeyToken",
    "MysqlSource",
    "PostgresSource",
    "SqlBlock",
    "SqlSource",
    "SqliteSource",
    "display_url",
    "key_from_token",
    "key_token",
    "open_sql_source",
]


def open_sql_source(
    db_url: str,
    *,
    query: str | None = None,
    table: str | None = None,
    key: str,
    page_size: int = DEFAULT_PAGE_SIZE,
    after: Any = None,
    start_position: int = 0,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    range_start: Any = None,
    range_end: Any = None,
) -> SqlSource:
    """The source for ``--db URL --query SQL --key COLUMN`` (or ``--table NAME``).

    ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db`` (SQLAlchemy's
    convention: what follows ``sqlite:///`` is the path), ``postgresql://`` or
    ``postgres://`` (any URL asyncpg accepts). No I/O here: call :meth:`SqlSource.check`
    to connect and validate before sending anything.
    """
    if not isinstance(db_url, str):
        raise SourceError(f"database URL must be a string, not {type(db_url).__name__}")
    scheme = db_url.partition(":")[0].lower() if ":" in db_url else ""
    kwargs: dict[str, Any] = {
        "key": key,
        "query": query,
        "table": table,
        "page_size": page_size,
        "after": after,
        "start_position": start_position,
        "connect_timeout": connect_timeout,
        "range_start": range_start,
        "range_end": range_end,
    }
    if scheme == "sqlite":
        return SqliteSource(db_url, **kwargs)
    if scheme in ("postgresql", "postgres"):
        return PostgresSource(db_url, **kwargs)
    if scheme in ("mysql", "mariadb"):
        return MysqlSource(db_url, **kwargs)
    shown = display_url(db_url) if scheme else "(no scheme)"
    raise SourceError(
        f"unsupported database URL {redact(shown)!r}: expected sqlite:///PATH or "
        "postgresql://USER@HOST:PORT/DB or mysql://USER@HOST:PORT/DB",
        path=redact(shown),
    )
