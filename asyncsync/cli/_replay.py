"""``asyncsync replay``: send the records of a dead-letter file again.

Thin by design: the dead-letter file becomes a source
(:class:`~asyncsync.sources._replay.DeadLetterSource`) and the
same :class:`Uploader` as ``upload`` sends it, with the same batching, auth, retries,
checkpoint and exit codes. Only the source and the dead-letter path differ::

    FAILED.jsonl ─> JSON Lines ─> each entry's "record" ─> Uploader ─> --url
                   (line numbers)      │                      │ failed again
                                       └─> not replayable ────┴─> FAILED.jsonl.replay-failed.jsonl

* A record is sent as the bytes the dead-letter file holds, which are the original input's
  (the file embeds them unchanged), so nothing is re-serialised.
* An entry whose ``record`` is a string (the input line was not valid JSON), or anything
  else but an object, cannot be replayed: it goes straight to the new dead-letter file,
  ``"not a JSON object"``. So does a line that is not a dead-letter entry at all.
* Positions are the dead-letter file's line numbers: the new dead-letter file says which
  entry failed again, and an interrupted replay resumes by count (its checkpoint is
  ``FAILED.jsonl.asyncsync`` unless ``--checkpoint``).
* Records failing again go to a new file, never the one being read (appending to a file
  while reading it could replay forever).
"""

from __future__ import annotations

import os
from pathlib import Path

from .._exceptions import ConfigError
from .._paths import REPLAY_FAILED_SUFFIX

__all__ = ["check_replay_target"]


def check_replay_target(source: str | None, failed: Path) -> None:
    """A replay reads a dead-letter file and never writes into it: ConfigError otherwise.

    (Appending to a file while reading it could replay forever.)
    """
    if source is None or source == "-":
        raise ConfigError("replay reads a dead-letter file: give its path", field="source")
    if _same_file(failed, Path(source)):
        raise ConfigError(
            f"--failed {failed} is the file being replayed; records that fail again go to a "
            f"new file (default {source}{REPLAY_FAILED_SUFFIX})",
            field="failed",
        )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return a.resolve() == b.resolve()
