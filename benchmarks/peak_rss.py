"""Run a command and write its peak RSS and CPU time to a file: the command's own, nothing
else's (JSON: ``{"peak_rss_kb": ..., "cpu_s": ...}``).

    python -m benchmarks.peak_rss OUT -- COMMAND [ARG...]

Why a launcher: ``ru_maxrss`` of a child started straight from a big process (a benchmark
holding its data, pyarrow, the sink's client) counts that process's memory too. Python's
``subprocess`` starts children with ``vfork``, and the kernel keeps the larger high-water mark
across ``exec``: a 60 MB upload launched from a 330 MB harness reports 330 MB. This launcher
is small, so what it reads with ``RUSAGE_CHILDREN`` after the command ends is the command's
peak (plus, at most, this launcher's ~10 MB before the ``exec``).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    code = subprocess.call(argv[2:])
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures = {"peak_rss_kb": usage.ru_maxrss, "cpu_s": usage.ru_utime + usage.ru_stime}
    Path(argv[0]).write_text(json.dumps(figures) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
