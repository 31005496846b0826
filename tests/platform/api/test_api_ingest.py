"""POST /api/v1/ingest against a real app and SQLite store: real batches, hostile bodies."""

from __future__ import annotations

import json
import os

import msgspec
import pytest
import zstandard
from platform_helpers import (
    EnrolledAgent,
    Platform,
    batch_body,
    compress,
    enroll,
    exec_event,
    exit_event,
    health_event,
    ingest,
)

from heron.platform.api.context import ApiError
from heron.platform.api.ingest import decompress_capped
from heron.platform.storage.base import EventQuery
from heron.schema.events import encode_events

# These run on SQLite and PostgreSQL (conftest.py); the others refuse input before storage is involved.
BOTH_BACKENDS = {"test_real_batch_is_stored_with_indexed_columns", "test_duplicate_batch_is_stored_once",
                 "test_duplicate_insert_is_atomic_in_storage", "test_health_event_updates_agent",
                 "test_hostile_strings_are_stored_verbatim", "test_one_invalid_event_rejects_the_whole_batch",
                 "test_unknown_and_revoked_tokens_get_401"}

BOMB_SIZE = 17 << 20  # just over the 16 MiB cap


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    zeros = bytes(BOMB_SIZE)
    return {
        "declared": zstandard.ZstdCompressor(level=19).compress(zeros),
        "undeclared": zstandard.ZstdCompressor(level=19, write_content_size=False).compress(zeros),
    }


def test_real_batch_is_stored_with_indexed_columns(platform: Platform, agent: EnrolledAgent) -> None:
    events = [exec_event(4242, "/usr/bin/curl", ["curl", "-s", "https://example.org"]),
              exit_event(4242, "/usr/bin/curl", 7)]
    status, body = ingest(platform, agent, batch_body(events))
    assert (status, body) == (200, {"accepted": 2, "duplicate": False})
    stored = platform.storage.query_events(EventQuery(limit=10))
    assert len(stored) == 2
    newest, oldest = stored
    assert json.loads(oldest.data)["process"]["argv"] == ["curl", "-s", "https://example.org"]
    assert json.loads(newest.data)["exit_code"] == 7
    assert {s.hostname for s in stored} == {"web-1"}
    exits = platform.storage.query_events(EventQuery(pid=4242, type="process.exit", limit=10))
    assert [e.id for e in exits] == [newest.id]


def test_duplicate_batch_is_stored_once(platform: Platform, agent: EnrolledAgent) -> None:
    body = batch_body([exec_event(1, "/sbin/init", ["init"])])
    assert ingest(platform, agent, body, batch_id="seg-7:128") == (200, {"accepted": 1, "duplicate": False})
    assert ingest(platform, agent, body, batch_id="seg-7:128") == (200, {"accepted": 0, "duplicate": True})
    assert platform.storage.count_events() == 1
    # The same batch id from another agent is a different batch.
    other = enroll(platform, "web-2")
    assert ingest(platform, other, body, batch_id="seg-7:128") == (200, {"accepted": 1, "duplicate": False})
    assert platform.storage.count_events() == 2


def test_duplicate_insert_is_atomic_in_storage(platform: Platform, agent: EnrolledAgent) -> None:
    from heron.platform.api.ingest import event_row

    rows = [event_row(exec_event(5, "/bin/true", ["true"]))]
    first = platform.storage.ingest_batch(agent.agent_id, "b1", rows, None, 1)
    again = platform.storage.ingest_batch(agent.agent_id, "b1", rows * 3, None, 2)
    assert (first.accepted, first.duplicate, again.accepted, again.duplicate) == (1, False, 0, True)
    assert platform.storage.count_events() == 1


def test_health_event_updates_agent(platform: Platform, agent: EnrolledAgent) -> None:
    older, newer = health_event(ts=1_000, dropped=3), health_event(ts=2_000, dropped=9)
    assert ingest(platform, agent, batch_body([newer, older]))[0] == 200
    record = platform.storage.get_agent(agent.agent_id)
    assert record is not None and record.last_health is not None
    assert json.loads(record.last_health)["counters"] == {"process.ebpf.dropped": 9}


def test_unknown_and_revoked_tokens_get_401(platform: Platform, agent: EnrolledAgent) -> None:
    body = batch_body([exec_event(1, "/x", [])])
    assert ingest(platform, agent, body, Authorization="Bearer not-a-token")[0] == 401
    assert ingest(platform, agent, body, Authorization="Basic abc")[0] == 401
    r = platform.client.post("/api/v1/ingest", content=body)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    from heron.platform.api.auth import hash_token

    assert platform.storage.revoke_token(hash_token(agent.token), 1)
    assert ingest(platform, agent, body)[0] == 401


def test_agent_mismatch_and_wrong_roles_get_403(platform: Platform, agent: EnrolledAgent) -> None:
    body = batch_body([exec_event(1, "/x", [])])
    other = enroll(platform, "web-2")
    status, err = ingest(platform, agent, body, X_Heron_Agent=other.agent_id)
    assert status == 403 and "X-Heron-Agent" in str(err["error"])
    admin = f"Bearer {platform.creds.admin_token}"
    assert ingest(platform, agent, body, Authorization=admin)[0] == 403
    enrol = f"Bearer {platform.creds.enrollment_token}"
    assert ingest(platform, agent, body, Authorization=enrol)[0] == 403
    assert platform.storage.count_events() == 0


@pytest.mark.parametrize("headers", [
    {"Content_Type": "application/json"},
    {"Content_Type": "text/plain"},
    {"Content_Encoding": "gzip"},
    {"Content_Encoding": "identity"},
])
def test_wrong_content_type_or_encoding_gets_415(platform: Platform, agent: EnrolledAgent,
                                                 headers: dict[str, str]) -> None:
    assert ingest(platform, agent, batch_body([exec_event(1, "/x", [])]), **headers)[0] == 415


@pytest.mark.parametrize("batch_id", ["", "a" * 129, "has space", "semi;colon", "ünï".encode("latin-1")])
def test_bad_batch_id_gets_400(platform: Platform, agent: EnrolledAgent, batch_id: str | bytes) -> None:
    h: dict[str, str | bytes] = {"Authorization": f"Bearer {agent.token}", "X-Heron-Agent": agent.agent_id,
         "Content-Type": "application/x-msgpack", "Content-Encoding": "zstd"}
    if batch_id:
        h["X-Heron-Batch"] = batch_id
    r = platform.client.post("/api/v1/ingest", content=batch_body([]), headers=h)
    assert r.status_code == 400 and "X-Heron-Batch" in r.json()["error"]


def test_body_over_8_mib_gets_413(platform: Platform, agent: EnrolledAgent) -> None:
    too_big = os.urandom((8 << 20) + 1)
    status, body = ingest(platform, agent, too_big)
    assert status == 413 and "larger than" in str(body["error"])

    # Same without a Content-Length (chunked): the cap holds while streaming.
    def chunks() -> object:
        for _ in range(9):
            yield os.urandom(1 << 20)

    h = {"Authorization": f"Bearer {agent.token}", "X-Heron-Agent": agent.agent_id, "X-Heron-Batch": "c1",
         "Content-Type": "application/x-msgpack", "Content-Encoding": "zstd"}
    r = platform.client.post("/api/v1/ingest", content=chunks(), headers=h)  # type: ignore[arg-type]
    assert r.status_code == 413
    assert platform.storage.count_events() == 0


@pytest.mark.parametrize("kind", ["declared", "undeclared"])
def test_decompression_bomb_gets_413(platform: Platform, agent: EnrolledAgent, bombs: dict[str, bytes],
                                     kind: str) -> None:
    bomb = bombs[kind]
    assert len(bomb) < 8 << 10  # a few KB on the wire...
    status, body = ingest(platform, agent, bomb)
    assert status == 413 and "decompressed" in str(body["error"])  # ...refused, not stored
    assert platform.storage.count_events() == 0
    assert not platform.storage.has_batch(agent.agent_id, "x")


def test_decompress_cap_stops_streaming_early(bombs: dict[str, bytes]) -> None:
    # Without a declared size the cap is enforced while reading: a 1 MiB cap stops a 17 MiB output.
    with pytest.raises(ApiError) as err:
        decompress_capped(bombs["undeclared"], 1 << 20)
    assert err.value.status == 413
    assert decompress_capped(compress(b"x" * 1000), 1000) == b"x" * 1000


@pytest.mark.parametrize(("payload", "message"), [
    (b"", "zstd"),
    (b"definitely not zstd", "zstd"),
    (compress(b"x" * 100)[:-4] + b"\x00\x01\x02\x03", "zstd"),  # corrupted frame
])
def test_bad_zstd_gets_400(platform: Platform, agent: EnrolledAgent, payload: bytes, message: str) -> None:
    status, body = ingest(platform, agent, payload)
    assert status == 400 and message in str(body["error"])


@pytest.mark.parametrize("raw", [
    b"\xc1\xc1\xc1",                                    # reserved msgpack bytes
    b"\x93\x01",                                        # truncated array
    msgspec.msgpack.encode({"not": "a list"}),
    msgspec.msgpack.encode([{"type": "process.exec"}]),  # missing required fields
    msgspec.msgpack.encode([{"type": "evil.type", "ts": 1}]),
    msgspec.msgpack.encode([{"type": "process.exit", "ts": "yesterday", "key": "k", "pid": 1}]),
])
def test_garbage_or_schema_invalid_events_get_400(platform: Platform, agent: EnrolledAgent,
                                                  raw: bytes) -> None:
    status, body = ingest(platform, agent, compress(raw))
    assert status == 400 and str(body["error"]).startswith("invalid events:")
    assert platform.storage.count_events() == 0


def test_one_invalid_event_rejects_the_whole_batch(platform: Platform, agent: EnrolledAgent) -> None:
    good = msgspec.msgpack.decode(encode_events([exec_event(1, "/x", ["x"])]))
    bad = {"type": "process.exit", "ts": 1, "pid": "one", "key": "k"}
    status, _ = ingest(platform, agent, compress(msgspec.msgpack.encode([*good, bad])))
    assert status == 400
    assert platform.storage.count_events() == 0


def test_hostile_strings_are_stored_verbatim(platform: Platform, agent: EnrolledAgent) -> None:
    argv = ["sh", "-c", "<script>alert(1)</script>", "\x1b]0;pwned\x07", "back\\slash",
            "\u202egnp.exe", "é\x00", "\\u0000"]
    assert ingest(platform, agent, batch_body([exec_event(9, "/bin/sh", argv)]))[0] == 200
    r = platform.client.get("/api/v1/events", headers=platform.admin)
    # NUL, which PostgreSQL text cannot hold, becomes U+FFFD on both; the text "\u0000" stays
    assert r.json()["events"][0]["event"]["process"]["argv"] == [*argv[:-2], "é\ufffd", "\\u0000"]
