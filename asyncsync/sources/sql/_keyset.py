"""The SQL source: keyset paging on a unique key, key ranges (shards), resume after a key,
and the database URL (shown without its password)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from itertools import islice, pairwise
from operator import eq
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import orjson

from ..._exceptions import ConfigError, SourceError
from ..._records import RecordBlock
from ..._redact import redact, register_secret
from ...checkpoint._state import Fingerprint, SettingValue
from .._protocol import SkipThrough, Source, SourceBase
from ._encoding import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_PAGE_SIZE,
    KeyToken,
    key_from_token,
    key_token,
)

__all__ = ["SqlSource", "display_url"]

# --------------------------------------------------------------------------- URLs


def _password(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.password:
        return unquote(parts.password)
    for name, value in parse_qsl(parts.query):
        if name == "password" and value:
            return value
    return None


def display_url(url: str) -> str:
    """``url`` without its password (in the user info or a ``password=`` parameter)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        netloc = f"{user}@{hostport}" if user else hostport
    query = parts.query
    if query:
        query = urlencode([(k, v) for k, v in parse_qsl(query) if k != "password"])
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _quote(identifier: str) -> str:
    """An SQL identifier, double-quoted (same rule in PostgreSQL and SQLite)."""
    if "\x00" in identifier:
        raise ConfigError(f"identifier {identifier!r} contains a NUL character", field="key")
    return '"' + identifier.replace('"', '""') + '"'


def _normalise_query(query: str) -> str:
    text = query.strip()
    while text.endswith(";"):
        text = text[:-1].rstrip()
    if not text:
        raise ConfigError("--query is empty", field="query")
    return text


# --------------------------------------------------------------------------- the sources


class SqlSource(SourceBase):
    """Rows of a query (or a whole table) in key order: a :class:`Source` of kind ``"sql"``.

    Use :func:`open_sql_source`. ``after`` (a key value or its token) starts after that key;
    ``start_position`` is the position of the row with that key (positions continue from
    ``start_position + 1``). ``pages_read`` and ``rows_read`` count what was fetched.
    """

    kind = "sql"
    size: int | None = None
    #: the watermark carries the key of its last row, which the ack log does not hold
    keyed = True
    scheme = ""

    def __init__(
        self,
        url: str,
        *,
        key: str,
        query: str | None = None,
        table: str | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
        after: Any = None,
        start_position: int = 0,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        range_start: Any = None,
        range_end: Any = None,
    ) -> None:
        if (query is None) == (table is None):
            raise ConfigError("give exactly one of --query and --table", field="query")
        if not isinstance(key, str) or not key.strip():
            raise ConfigError("--key must name a column (unique, ordered)", field="key")
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise ConfigError(
                f"page size must be an int >= 1, got {page_size!r}", field="page_size"
            )
        if isinstance(start_position, bool) or not isinstance(start_position, int):
            raise ConfigError("start_position must be an int", field="start_position")
        if start_position < 0:
            raise ConfigError("start_position must be >= 0", field="start_position")
        if table is not None and not table.strip():
            raise ConfigError("--table is empty", field="table")
        if not connect_timeout > 0:
            raise ConfigError("connect timeout must be > 0", field="connect_timeout")
        self.url = url
        self._secret = _password(url)
        register_secret(self._secret)
        self.name = display_url(url)
        self.query = _normalise_query(query) if query is not None else None
        self.table = table.strip() if table is not None else None
        self.key = key.strip()
        self.page_size = page_size
        # a key range (range_start, range_end]: a shard of --shard/--processes (tokens)
        self.range_start = range_start
        self.range_end = range_end
        self._until_value = key_from_token(range_end) if range_end is not None else None
        if after is None:
            after = range_start
        self.after = after
        self._after_value = key_from_token(after) if after is not None else None
        self.start_position = start_position
        self.connect_timeout = connect_timeout
        self.pages_read = 0
        self.rows_read = 0
        self._checked = False

    def __repr__(self) -> str:
        what = f"table={self.table!r}" if self.table is not None else f"query={self.query!r}"
        return f"{type(self).__name__}({self.name!r}, {what}, key={self.key!r})"

    @property
    def identity(self) -> str:
        """What a checkpoint must match to resume: database, query or table, and key."""
        what = f"table {self.table}" if self.table is not None else f"query {self.query}"
        identity = f"{self.name} {what} key {self.key}"
        if self.range_start is not None or self.range_end is not None:
            bounds = orjson.dumps([self.range_start, self.range_end]).decode()
            identity += f" range {bounds}"
        return identity

    def _bound(self) -> tuple[Any, ...]:
        """The extra (last) statement parameter of a key range's upper bound, if any."""
        return () if self.range_end is None else (self._until_value,)

    def _copy(self, **changes: Any) -> SqlSource:
        """This source with some constructor arguments changed (``after`` reset unless given)."""
        options: dict[str, Any] = {
            "key": self.key,
            "query": self.query,
            "table": self.table,
            "page_size": self.page_size,
            "start_position": self.start_position,
            "connect_timeout": self.connect_timeout,
            "range_start": self.range_start,
            "range_end": self.range_end,
        }
        options.update(changes)
        clone = type(self)(self.url, **options)
        clone._checked = self._checked
        return clone

    def with_range(self, start: Any, end: Any) -> SqlSource:
        """This source limited to the keys in ``(start, end]`` (tokens; None: unbounded)."""
        return self._copy(range_start=start, range_end=end)

    async def plan_key_ranges(self, n: int) -> list[tuple[KeyToken | None, KeyToken | None]]:
        """Split the keys into at most ``n`` contiguous ranges ``(start, end]`` (key tokens,
        None for unbounded) that cover every row once: ``end`` of one is ``start`` of the
        next. The boundaries are the keys at ``k * rows / n`` (``percentile_disc`` on
        PostgreSQL, ``OFFSET`` on SQLite); equal boundaries are merged, so there are fewer
        than ``n`` ranges when there are fewer distinct boundaries (fewer rows than ``n``)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"the number of shards must be an integer >= 1, got {n!r}")
        bounds: list[KeyToken] = []
        for value in await self._boundaries(n):
            if value is None:
                continue
            token = self._token(value)
            if not bounds or token != bounds[-1]:
                bounds.append(token)
        edges: list[KeyToken | None] = [None, *bounds, None]
        return list(pairwise(edges))

    async def _boundaries(self, n: int) -> list[Any]:
        """The key values ending each range but the last, in key order."""
        raise NotImplementedError

    def _token(self, value: Any) -> KeyToken:
        try:
            return key_token(value)
        except TypeError as exc:
            raise self._error(f"key column {self.key!r}: {exc}") from None

    def resumed(self, *, position: int, offset: int | None = None, key: Any = None) -> Source:
        """This source continuing after ``key`` (a value or token), at position ``position + 1``:
        one index seek, no re-reading. Without a key (nothing settled yet), by skipping."""
        if key is None:
            return self if position <= 0 else SkipThrough(self, position)
        return self._copy(after=key, start_position=position)

    def fingerprint(self, settings: Mapping[str, SettingValue]) -> Fingerprint:
        """The URL (without password), query or table, key and key range."""
        return Fingerprint.of_stream(self.identity, settings)

    async def check(self) -> None:
        """Connect, compile the query, run its first page with ``LIMIT 1`` and look for NULL
        keys: :class:`SourceError` (never containing the password) if anything is wrong."""
        raise NotImplementedError

    def blocks(self) -> AsyncIterator[RecordBlock]:
        raise NotImplementedError

    # -- shared helpers

    def _scrub(self, text: str) -> str:
        if self._secret:
            for form in {self._secret, self._secret.replace("%", "%25")}:
                text = text.replace(form, "***")
        return redact(text)

    def _error(self, what: str, detail: object = None) -> SourceError:
        message = f"{self.name}: {what}"
        if detail is not None and str(detail):
            message += f": {detail}"
        return SourceError(self._scrub(message), path=self.name)

    def _resolve_key(self, names: Sequence[str]) -> int:
        """Index of the key column among the query's columns (exact name, else the only one
        equal ignoring case); the columns must be distinct."""
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise self._error(
                    f"the query returns two columns named {name!r}; give them distinct "
                    "names (AS ...), each becomes a JSON member"
                )
            seen.add(name)
        if self.key in seen:
            return list(names).index(self.key)
        folded = [i for i, name in enumerate(names) if name.lower() == self.key.lower()]
        if len(folded) == 1:
            return folded[0]
        shown = ", ".join(names[:30]) + (", ..." if len(names) > 30 else "")
        raise self._error(
            f"key column {self.key!r} is not a column of the "
            + ("table" if self.table is not None else "query")
            + f" (columns: {shown or 'none'})"
        )

    def _check_token(self, value: Any) -> None:
        try:
            key_token(value)
        except TypeError as exc:
            raise self._error(f"key column {self.key!r}: {exc}") from None

    def _duplicate(self, value: Any, position: int) -> SourceError:
        text = repr(value)
        return self._error(
            f"key column {self.key!r} is not unique: value {text[:200]} repeats at row "
            f"{position}; keyset pagination needs a unique key"
        )

    def _null_key(self) -> SourceError:
        return self._error(
            f"key column {self.key!r} has NULL values; keyset pagination needs a "
            "non-null, unique key (filter them out in --query)"
        )

    def _page_sql(self, base: str, key_sql: str, param: Callable[[int], str]) -> tuple[str, ...]:
        """The (first page, next page, NULL probe) statements. With a key range's upper
        bound, its value is the last parameter of the first two."""
        inner = f"(\n{base}\n) AS q"
        first_until = after_until = ""
        if self.range_end is not None:
            first_until = f" AND q.{key_sql} <= {param(2)}"
            after_until = f" AND q.{key_sql} <= {param(3)}"
        first = (
            f"SELECT * FROM {inner} WHERE q.{key_sql} IS NOT NULL{first_until} "
            f"ORDER BY q.{key_sql} LIMIT {param(1)}"
        )
        after = (
            f"SELECT * FROM {inner} WHERE q.{key_sql} > {param(1)}{after_until} "
            f"ORDER BY q.{key_sql} LIMIT {param(2)}"
        )
        nulls = f"SELECT 1 FROM {inner} WHERE q.{key_sql} IS NULL LIMIT 1"
        return first, after, nulls

    def _check_page(self, keys: Sequence[Any], extra: Any, has_extra: bool, first: int) -> None:
        """Adjacent equal keys in a page (and the row after it) mean the key is not unique;
        the key's type must be one a resume can use."""
        if keys:
            self._check_token(keys[0])
        if len(keys) > 1 and any(map(eq, keys, islice(keys, 1, None))):
            for i in range(1, len(keys)):
                if keys[i] == keys[i - 1]:
                    raise self._duplicate(keys[i], first + i)
        if has_extra and keys and extra == keys[-1]:
            raise self._duplicate(extra, first + len(keys))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "…"


def _what(src: SqlSource) -> str:
    if src.table is not None:
        return f"cannot read table {src.table!r}"
    return "query failed"
