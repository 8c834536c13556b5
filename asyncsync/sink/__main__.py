"""``python -m asyncsync.sink [options]``: serve the reference partner API."""

from __future__ import annotations

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
