"""Contenders: one module each, run as ``python -m benchmarks.contenders.NAME`` in a subprocess.

Each prints one JSON object on the last line of stdout (see ``_common.Result``) and exits 0;
a contender that cannot run (e.g. asyncsync not importable yet) prints ``{"skipped": why}``
and exits with ``SKIP_EXIT``.
"""
