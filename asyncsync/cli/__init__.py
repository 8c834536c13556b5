"""The command line: ``asyncsync upload | replay | demo | sink``.

The only part of the package that knows about a terminal, flags, exit codes and default file
paths. Nothing outside ``cli/`` imports it.
"""

from ._main import main

__all__ = ["main"]
