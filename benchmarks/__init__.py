"""Benchmarks for asyncsync against the clients users would otherwise write (issue 6).

Run them with ``make bench`` or ``python -m benchmarks.run --help``.
"""
