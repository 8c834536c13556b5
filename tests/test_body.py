"""Request bodies: JSON array, NDJSON, wrapped object, gzip; exact sizes for the batcher."""

from __future__ import annotations

import gzip

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncsync._body import BodyEncoder
from asyncsync._exceptions import ConfigError

_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)
_objects = st.lists(st.dictionaries(st.text(max_size=8), _values, max_size=4), max_size=12)


def decode(enc: BodyEncoder, body: bytes) -> object:
    if enc.headers.get("Content-Encoding") == "gzip":
        body = gzip.decompress(body)
    if enc.format == "ndjson":
        assert body == b"" or body.endswith(b"\n")
        return [orjson.loads(line) for line in body.splitlines()]
    return orjson.loads(body)


@settings(max_examples=150, deadline=None)
@given(
    objs=_objects,
    form=st.sampled_from(["json", "ndjson", "wrap"]),
    key=st.text(max_size=10),
    use_gzip=st.booleans(),
)
def test_every_form_decodes_back_to_the_records(
    objs: list[dict[str, object]], form: str, key: str, use_gzip: bool
) -> None:
    """Whatever the form, the server decodes exactly the records that went in, in order."""
    records = [orjson.dumps(o) for o in objs]
    if form == "wrap":
        enc = BodyEncoder("json", wrap=key, gzip=use_gzip)
    else:
        enc = BodyEncoder(form, gzip=use_gzip)  # type: ignore[arg-type]
    got = decode(enc, enc.encode(records))
    assert got == ({key: objs} if form == "wrap" else objs)


@settings(max_examples=150, deadline=None)
@given(
    records=st.lists(st.binary(min_size=2, max_size=50), min_size=1, max_size=20),
    form=st.sampled_from(["json", "ndjson", "wrap"]),
    key=st.text(max_size=10),
)
def test_size_is_overhead_plus_records_and_separators(
    records: list[bytes], form: str, key: str
) -> None:
    """len(body) == overhead + sum(len(r) + 1): what the batcher counts against max_bytes."""
    enc = BodyEncoder(wrap=key) if form == "wrap" else BodyEncoder(form)  # type: ignore[arg-type]
    body = enc.encode(records)
    assert len(body) == enc.overhead + sum(len(r) + 1 for r in records) == enc.size(records)


def test_the_records_are_joined_not_reserialised() -> None:
    """The bytes of each record appear unchanged in the body."""
    records = [b'{"b": 1,  "a":2}', b'{"n":' + b"9" * 40 + b"}"]
    assert BodyEncoder().encode(records) == b"[" + b",".join(records) + b"]"
    assert BodyEncoder("ndjson").encode(records) == records[0] + b"\n" + records[1] + b"\n"
    assert BodyEncoder(wrap="data").encode(records) == b'{"data":[' + b",".join(records) + b"]}"
    assert BodyEncoder().encode(records[:1]) == b"[" + records[0] + b"]"


def test_empty_batches() -> None:
    """Zero records: an empty array, an empty NDJSON body, an empty wrapped array."""
    assert BodyEncoder().encode([]) == b"[]"
    assert BodyEncoder("ndjson").encode([]) == b""
    assert BodyEncoder(wrap="k").encode([]) == b'{"k":[]}'
    assert BodyEncoder().size([]) == 2 and BodyEncoder("ndjson").size([]) == 0


def test_wrap_key_is_json_escaped() -> None:
    """Quotes, backslashes, control characters and non-ASCII in the key stay valid JSON."""
    key = 'we"ird\\key\n\x01é'
    body = BodyEncoder(wrap=key).encode([b"{}"])
    assert orjson.loads(body) == {key: [{}]}


def test_headers() -> None:
    """Content-Type by format; Content-Encoding only with gzip; the mapping is read-only."""
    assert dict(BodyEncoder().headers) == {"Content-Type": "application/json"}
    assert dict(BodyEncoder("ndjson", gzip=True).headers) == {
        "Content-Type": "application/x-ndjson",
        "Content-Encoding": "gzip",
    }
    with pytest.raises(TypeError):
        BodyEncoder().headers["X"] = "y"  # type: ignore[index]


def test_gzip_is_deterministic_and_levelled() -> None:
    """No timestamp in the gzip header: a retried batch has the same body bytes."""
    records = [orjson.dumps({"i": i, "pad": "x" * 100}) for i in range(200)]
    enc = BodyEncoder(gzip=True)
    first = enc.encode(records)
    assert first == enc.encode(records)
    assert first[:2] == b"\x1f\x8b" and first[4:8] == b"\0\0\0\0"  # magic, mtime 0
    assert gzip.decompress(first) == BodyEncoder().encode(records)
    stored = BodyEncoder(gzip=True, gzip_level=0).encode(records)
    assert len(stored) > len(BodyEncoder().encode(records)) > 10 * len(first)
    assert gzip.decompress(BodyEncoder(gzip=True, gzip_level=0).encode(records))


def test_bad_settings_are_config_errors_naming_the_field() -> None:
    """Unknown format, wrap with NDJSON, gzip level out of range, an unencodable key."""
    cases = [
        ({"format": "xml"}, "body"),
        ({"format": "ndjson", "wrap": "k"}, "wrap"),
        ({"gzip": True, "gzip_level": 10}, "gzip_level"),
        ({"wrap": "\ud800"}, "wrap"),
    ]
    for kwargs, field in cases:
        with pytest.raises(ConfigError) as info:
            BodyEncoder(**kwargs)  # type: ignore[arg-type]
        assert info.value.field == field


def test_encode_does_not_modify_the_batch() -> None:
    """The caller's list (a Batch's records, needed for a 413 split) is left as it was."""
    records = [b'{"a":1}', b'{"b":2}', b'{"c":3}']
    before = list(records)
    BodyEncoder(wrap="k").encode(records)
    assert records == before
