"""Sources: where records come from. The protocol and what each source declares is in
:mod:`._protocol`; by concern::

    _protocol.py   Source (what the uploader needs), SourceBase (defaults), SkipThrough
    _reading.py    the worker thread, read-ahead, file checks, a file's fingerprint
    _validate.py   JSON validation without parsing, shared by the parsers
    _jsonl.py      JSON Lines files and stdin
    _csv.py        CSV files with a header row
    _iterable.py   Python iterables (sync or async) of dicts or raw JSON
    _replay.py     a dead-letter file, to send again
    _open.py       open_source(): a path, "-", a Source or an iterable, to a Source
    _shards.py     cutting a file into byte ranges (--shard, --processes)
    sql/           SQL (SQLite, PostgreSQL) by keyset paging: imported only when used
"""
