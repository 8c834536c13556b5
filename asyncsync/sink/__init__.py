"""The reference partner server: a real aiohttp server that behaves like a partner API.

For the demo, the tests, the benchmarks, and for users to rehearse a run::

    async with Sink(SinkConfig(token_ttl=60, error_rate=0.1, seed=1)) as sink:
        ...  # point the client at sink.token_url and sink.ingest_url
        assert sink.stats()["duplicates"] == 0

or as a process: ``python -m asyncsync.sink --port 8080 --error-rate 0.1``.

Endpoints: ``POST /oauth/token`` (client credentials; HTTP Basic per RFC 6749 §2.3.1 or
form fields), ``POST /login`` (JSON username/password), ``POST /ingest`` (bearer; JSON array,
NDJSON, ``{"KEY": [...]}``, gzip; deduplicated by ``Idempotency-Key``), ``POST /revoke``
(RFC 7009), ``GET /stats[?detail=1]``, ``GET /records``, and ``/admin/faults``,
``/admin/revoke-all``, ``/admin/reset``, ``/admin/throttle``.

Design rule: this subpackage imports nothing from the rest of asyncsync (only the standard
library, aiohttp and orjson), so client tests run against it cannot confirm themselves.
"""

from __future__ import annotations

from ._app import create_app
from ._cli import main
from ._config import Faults, SinkConfig
from ._server import Sink
from ._state import STATE, SinkState

__all__ = ["STATE", "Faults", "Sink", "SinkConfig", "SinkState", "create_app", "main"]
