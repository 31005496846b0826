"""The platform over its database: the analysis pipeline inside ingest's transaction, several servers
sharing one PostgreSQL database, and ingest answering 503 (retryable) while the database is away."""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from platform_helpers import PG_SERVER, EnrolledAgent, Platform, batch_body, enroll, exec_event, ingest, new_batch_id
from starlette.testclient import TestClient

from heron.platform.analysis import Batch, Detection, Pipeline
from heron.platform.api.app import create_app
from heron.platform.api.context import PlatformConfig
from heron.platform.server import open_data_dir
from heron.platform.storage import schema
from heron.platform.storage.sql import SqlStorage

BOTH_BACKENDS = {"test_ingest_runs_the_pipeline_once_per_new_batch"}  # on SQLite and PostgreSQL


class RecordingRules:
    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def evaluate(self, batch: Batch) -> list[Detection]:
        self.batches.append(batch)
        return []


class WritingAlerts:
    """Writes in the batch's transaction: its row must commit with the batch, or not at all."""

    def record(self, conn: sa.Connection, batch: Batch, detections: list[Detection]) -> None:
        conn.execute(sa.insert(schema.alert_log).values(alert_id=0, ts=batch.received, actor=batch.agent_id,
                                                        action=f"{len(batch.events)} events"))


def test_ingest_runs_the_pipeline_once_per_new_batch(platform: Platform, agent: EnrolledAgent) -> None:
    rules = RecordingRules()
    app: Any = platform.client.app
    app.state.heron = dataclasses.replace(app.state.heron, pipeline=Pipeline(rules=rules, alerts=WritingAlerts()))
    body = batch_body([exec_event(7, "/bin/sh", ["sh", "-c", "id"]), exec_event(8, "/bin/id", ["id"])])
    assert ingest(platform, agent, body, batch_id="b-1") == (200, {"accepted": 2, "duplicate": False})
    assert ingest(platform, agent, body, batch_id="b-1")[1]["duplicate"] is True
    assert len(rules.batches) == 1
    batch = rules.batches[0]
    assert (batch.agent_id, batch.hostname) == (agent.agent_id, "web-1") and batch.received > 0
    assert [(e["type"], e["process"]["exe"]) for e in batch.events] == [("process.exec", "/bin/sh"),
                                                                       ("process.exec", "/bin/id")]
    with platform.storage.db.read() as conn:
        assert conn.execute(sa.select(schema.alert_log.c.action)).scalars().all() == ["2 events"]


@pytest.fixture
def two_servers(tmp_path: Path, pg_migrated_url: str) -> Iterator[tuple[Platform, Platform]]:
    """Two platform apps (own data dirs and connection pools) on one PostgreSQL database."""
    platforms = []
    for name in ("one", "two"):
        storage, creds = open_data_dir(tmp_path / name, pg_migrated_url)
        client = TestClient(create_app(storage, PlatformConfig(retention_days=0)))
        client.__enter__()
        platforms.append(Platform(client, storage, creds, tmp_path / name))
    yield platforms[0], platforms[1]
    for p in platforms:
        p.client.__exit__(None, None, None)
        p.storage.close()


def test_two_servers_share_one_postgresql_database(two_servers: tuple[Platform, Platform]) -> None:
    one, two = two_servers
    agent = enroll(one)  # enrolled on one, sending to two: no state lives in a server
    status, body = ingest(two, agent, batch_body([exec_event(1, "/bin/a", ["a"])]), batch_id="x-1")
    assert (status, body["accepted"]) == (200, 1)
    assert ingest(one, agent, batch_body([exec_event(1, "/bin/a", ["a"])]), batch_id="x-1")[1]["duplicate"]
    ingest(one, agent, batch_body([exec_event(2, "/bin/b", ["b"])]))
    for p in (one, two):  # each sees both batches, and either server's admin token works on the other
        for token in (one.creds.admin_token, two.creds.admin_token):
            r = p.client.get("/api/v1/events", headers=p.auth(token))
            assert r.status_code == 200
            assert sorted(e["event"]["process"]["exe"] for e in r.json()["events"]) == ["/bin/a", "/bin/b"]
        assert [a["agent_id"] for a in p.client.get("/api/v1/agents", headers=p.admin).json()["agents"]] == [
            agent.agent_id]


def _admin_sql(sql: str) -> None:
    with psycopg.connect(PG_SERVER, autocommit=True) as conn:
        conn.execute(sql)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_database_going_away_gives_503_and_serving_goes_on(platform: Platform, agent: EnrolledAgent,
                                                           backend: str) -> None:
    name = urllib.parse.urlsplit(platform.storage.db.url).path.lstrip("/")
    assert ingest(platform, agent, batch_body([exec_event(1, "/bin/a", ["a"])]))[0] == 200
    # The database refuses connections and the open ones are cut, as in a failover or a restart.
    _admin_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    _admin_sql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    try:
        batch = new_batch_id()
        h = {"Authorization": f"Bearer {agent.token}", "X-Heron-Agent": agent.agent_id, "X-Heron-Batch": batch,
             "Content-Type": "application/x-msgpack", "Content-Encoding": "zstd"}
        body = batch_body([exec_event(2, "/bin/b", ["b"])])
        r = platform.client.post("/api/v1/ingest", content=body, headers=h)
        assert r.status_code == 503 and r.headers["retry-after"].isdigit() and "retry" in r.json()["error"]
        r = platform.client.get("/api/v1/events", headers=platform.admin)  # any endpoint: 503, not 500
        assert r.status_code == 503 and "retry-after" in r.headers
        assert platform.client.get("/api/v1/health").status_code == 200  # the server itself is fine
    finally:
        _admin_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
    # The agent's retry of the same batch (it kept it in its spool) is stored, once.
    assert platform.client.post("/api/v1/ingest", content=body, headers=h).json() == {"accepted": 1,
                                                                                      "duplicate": False}
    assert platform.storage.count_events() == 2


def test_storage_open_refuses_an_unsupported_url(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unsupported database"):
        SqlStorage.open("mysql://localhost/heron")
