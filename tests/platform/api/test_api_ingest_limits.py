"""POST /api/v1/ingest resource bounds: object bombs, event counts, int64 overflow, concurrent decoding."""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import msgspec
import pytest
import sqlalchemy as sa
import zstandard
from platform_helpers import (
    EnrolledAgent,
    Platform,
    batch_body,
    compress,
    enroll,
    exec_event,
    exit_event,
    new_batch_id,
)
from sqlalchemy.engine import Connection
from starlette.testclient import TestClient

from heron.platform.api.app import create_app
from heron.platform.api.context import PlatformConfig
from heron.platform.api.ingest import declared_length
from heron.platform.server import open_data_dir
from heron.platform.storage import schema
from heron.platform.storage.base import EventRow, IngestResult
from heron.platform.storage.db import Database
from heron.platform.storage.sql import SqlStorage
from heron.schema.events import Process, ProcessExec, encode_events

BOTH_BACKENDS = True  # the platform fixture's tests run on SQLite and PostgreSQL (conftest.py)


def _headers(agent: EnrolledAgent) -> dict[str, str]:
    return {"Authorization": f"Bearer {agent.token}", "X-Heron-Agent": agent.agent_id,
            "X-Heron-Batch": new_batch_id(), "Content-Type": "application/x-msgpack",
            "Content-Encoding": "zstd"}


@pytest.fixture
def small_platform(tmp_path: Path) -> Iterator[Platform]:
    storage, creds = open_data_dir(tmp_path / "platform")
    app = create_app(storage, PlatformConfig(retention_days=0, max_batch_events=3))
    with TestClient(app) as client:
        yield Platform(client, storage, creds, tmp_path / "platform")
    storage.close()


def _post(platform: Platform, agent: EnrolledAgent, body: bytes) -> httpx.Response:
    return platform.client.post("/api/v1/ingest", content=body, headers=_headers(agent))


def test_object_bomb_of_empty_argv_strings_is_refused_fast(platform: Platform, agent: EnrolledAgent) -> None:
    # 4M empty strings: 4 MB of msgpack (under the byte cap), ~200 bytes of zstd, ~48 MB of objects
    # if decoded. The schema bounds argv, and msgspec refuses the list at its header.
    raw = encode_events([ProcessExec(ts=1, process=Process(key="k", pid=1, argv=[""] * 4_000_000))])
    bomb = zstandard.ZstdCompressor(level=19).compress(raw)
    assert len(bomb) < 512
    started = time.monotonic()
    r = _post(platform, agent, bomb)
    assert time.monotonic() - started < 1.0
    assert r.status_code == 400 and r.json()["error"].startswith("invalid events:")
    assert "argv" in r.json()["error"]
    assert platform.storage.count_events() == 0


def test_declared_length_reads_msgpack_array_headers() -> None:
    for n in (0, 15, 16, 65535, 65536, 100_001):
        assert declared_length(msgspec.msgpack.encode([None] * n)) == n
    assert declared_length(b"") is None
    assert declared_length(b"\x81\xa1a\x01") is None  # a map
    assert declared_length(b"\xdd\x00\x01") is None  # truncated header


def test_batch_declaring_too_many_events_is_refused_before_decoding(platform: Platform,
                                                                    agent: EnrolledAgent) -> None:
    # An array32 header claiming 200k events followed by nothing: refused by count, not by the decoder.
    r = _post(platform, agent, compress(b"\xdd" + struct.pack(">I", 200_000)))
    assert r.status_code == 400 and r.json()["error"] == "batch declares 200000 events; at most 100000 per batch"


def test_batch_event_limit_is_configurable(small_platform: Platform) -> None:
    agent = enroll(small_platform)
    events = [exec_event(10 + i, "/bin/true", ["true"]) for i in range(4)]
    r = _post(small_platform, agent, batch_body(events))
    assert r.status_code == 400 and "at most 3 per batch" in r.json()["error"]
    assert small_platform.storage.count_events() == 0
    assert _post(small_platform, agent, batch_body(events[:3])).json() == {"accepted": 3, "duplicate": False}


@pytest.mark.parametrize("event", [
    exit_event(1, "/bin/true", 0, ts=(1 << 64) - 1),
    exit_event(1 << 63, "/bin/true", 0),
    exec_event(1 << 63, "/bin/true", ["true"]),  # msgpack ints reach 2**64 - 1
], ids=["ts", "exit-pid", "exec-pid"])
def test_integers_beyond_int64_get_400_and_store_nothing(platform: Platform, agent: EnrolledAgent,
                                                         event: ProcessExec) -> None:
    r = _post(platform, agent, batch_body([event]))
    assert r.status_code == 400 and "out of range" in r.json()["error"]
    assert platform.storage.count_events() == 0
    # The batch id was rolled back with its events: a corrected retry is not a "duplicate".
    with platform.storage.db.read() as conn:
        assert conn.execute(sa.select(schema.batches)).first() is None


class _SlowStorage(SqlStorage):
    """The real store, holding each batch a while and recording how many are stored at once."""

    def __init__(self, path: Path) -> None:
        super().__init__(Database(str(path)))
        self.active = 0
        self.peak = 0
        self._count_lock = threading.Lock()

    def ingest_batch(self, agent_id: str, batch_id: str, events: list[EventRow], last_health: bytes | None,
                     now: int, *, analyse: Callable[[Connection], None] | None = None) -> IngestResult:
        with self._count_lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(0.1)
            return super().ingest_batch(agent_id, batch_id, events, last_health, now, analyse=analyse)
        finally:
            with self._count_lock:
                self.active -= 1


@pytest.mark.parametrize("workers", [1, 2])
def test_concurrent_batches_are_decoded_and_stored_a_few_at_a_time(tmp_path: Path, workers: int) -> None:
    data_dir = tmp_path / "platform"
    _, creds = open_data_dir(data_dir)  # creates the schema and credentials
    storage = _SlowStorage(data_dir / "heron.db")
    app = create_app(storage, PlatformConfig(retention_days=0, ingest_workers=workers))
    with TestClient(app) as client:
        r = client.post("/api/v1/enroll", headers={"Authorization": f"Bearer {creds.enrollment_token}"},
                        json={"agent_version": "0.1.0", "host": {"hostname": "web-1"}})
        agent = EnrolledAgent(r.json()["agent_id"], r.json()["token"])

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://heron") as http:
            posts = [http.post("/api/v1/ingest", headers=_headers(agent),
                               content=batch_body([exec_event(100 + i, "/bin/true", ["true"])]))
                     for i in range(8)]
            return [r.status_code for r in await asyncio.gather(*posts)]

    try:
        assert asyncio.run(burst()) == [200] * 8
        assert storage.count_events() == 8
        assert storage.peak == workers
    finally:
        storage.close()


def test_non_ascii_digit_content_length_gets_400(platform: Platform, agent: EnrolledAgent) -> None:
    # "²".isdigit() is true but int("²") raises: the length check must not crash on it.
    headers: dict[str, str | bytes] = {**_headers(agent), "Content-Length": "\u00b2".encode("latin-1")}
    r = platform.client.post("/api/v1/ingest", content=b"", headers=headers)
    assert r.status_code == 400 and r.json() == {"error": "invalid Content-Length"}
