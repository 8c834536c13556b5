"""Crash-safe checkpoints: the state a resumed run starts from.

What is persisted (:class:`CheckpointState`, one small JSON document):

* ``job_id``: made once (uuid4 hex) and kept across resumes, so a re-formed batch carries the
  ``Idempotency-Key`` it was first sent with;
* ``fingerprint`` of the source (path, size, SHA-256 of the first 64 KiB) and of the settings
  that decide batch boundaries; a resume with a different one is refused, saying what changed;
* the *contiguous* watermark: every batch before ``watermark.next_seq`` is settled
  (acknowledged or dead-lettered); ``position``/``offset`` say where reading resumes;
* ``settled_beyond``: position ranges settled past the watermark, which a resume skips;
* ``rejected_through``: input rejects up to this position are already in the dead-letter file;
* the run counters, so the final summary covers the whole job.

Invariant: the watermark never passes a batch that is dispatched and not yet settled, however
the batches complete. A checkpoint therefore only ever claims settled work; a crash at any
moment loses at most the batches in flight, which a resume sends again with the same keys.

The package, by concern::

    _state.py         Watermark, Fingerprint, CheckpointState (the JSON document), CheckpointStore
    _watermark.py     WatermarkTracker: the contiguous watermark, O(1) per batch
    _checkpointer.py  Checkpointer: tracker + store + a save throttle
    _acklog.py        AckLog: acknowledged batches between two saves (a crash re-sends less)
    _ledger.py        Ledger: what the uploader and the pipeline talk to; it owns the
                      checkpointer, the ack log and the order of durability (dead letters first)
"""
