from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from heron.schema import docgen
from heron.schema.events import (
    Ancestor,
    Process,
    ProcessExec,
    ProcessExit,
    decode_events,
    encode_events,
    from_json,
    process_key,
    to_json,
)

ROOT = Path(__file__).resolve().parents[2]


def test_roundtrip_json_and_msgpack() -> None:
    p = Process(key=process_key("ab" * 16, 42, 1234), pid=42, exe="/bin/\\xff", argv=["a", "b c", ""],
                ancestors=[Ancestor(1, "k1", "/sbin/init")])
    events = [ProcessExec(ts=1, source="process.ebpf", process=p), ProcessExit(ts=2, key=p.key, pid=42, exit_code=0)]
    assert decode_events(encode_events(events)) == events
    assert from_json(to_json(events[0])) == events[0]
    assert p.key == "abababab-42-1234"


def test_decoder_rejects_bad_input() -> None:
    with pytest.raises(msgspec.ValidationError):
        from_json(b'{"type": "process.exec", "ts": "soon", "process": {"key": "k", "pid": 1}}')
    with pytest.raises(msgspec.ValidationError):
        from_json(b'{"type": "nope", "ts": 1}')
    with pytest.raises(msgspec.DecodeError):
        decode_events(b"\xc1garbage")


def test_events_doc_is_current() -> None:
    assert (ROOT / "docs" / "events.md").read_text() == docgen.render(), (
        "docs/events.md is stale: run python -m heron.schema.docgen"
    )
