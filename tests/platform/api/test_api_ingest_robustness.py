"""POST /api/v1/ingest when analysis or the data misbehave, on SQLite and PostgreSQL: a batch whose
analysis fails is stored (200) and counted, a transient database error answers 503, NUL characters
and huge paths are stored, future-dated events are counted; the partition loop runs without retention."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from platform_helpers import EnrolledAgent, Platform, batch_body, exec_event, ingest
from starlette.testclient import TestClient

from heron.platform.analysis import Batch, Detection, Pipeline
from heron.platform.api import app as app_module
from heron.platform.api.app import create_app
from heron.platform.api.context import PlatformConfig
from heron.platform.storage import partitions
from heron.platform.storage.base import EventQuery
from heron.platform.storage.sql import SqlStorage
from heron.schema.events import DnsQuery, FileChange, NetFlow, ProcessRef

BOTH_BACKENDS = {"test_batch_whose_analysis_fails_is_stored_and_counted",
                 "test_transient_error_in_analysis_answers_503", "test_nul_characters_are_replaced_everywhere_once",
                 "test_huge_random_exe_is_accepted", "test_future_events_are_stored_as_sent_and_counted",
                 "test_huge_hostile_values_still_raise_their_alert"}
DAY = 86_400 * 10**9


class Recording:
    def __init__(self) -> None:
        self.batches: list[Batch] = []

    def evaluate(self, batch: Batch) -> list[Detection]:
        self.batches.append(batch)
        return []


class Failing:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def evaluate(self, batch: Batch) -> list[Detection]:
        raise self.error


def _pipeline(platform: Platform, pipeline: Pipeline) -> None:
    app: Any = platform.client.app
    app.state.heron = dataclasses.replace(app.state.heron, pipeline=pipeline)


def _overview_ingest(platform: Platform) -> dict[str, Any]:
    r = platform.client.get("/api/v1/overview", headers=platform.admin)
    assert r.status_code == 200
    counters: dict[str, Any] = r.json()["ingest"]
    return counters


def test_batch_whose_analysis_fails_is_stored_and_counted(platform: Platform, agent: EnrolledAgent) -> None:
    _pipeline(platform, Pipeline(rules=Failing(KeyError("a stage's bug"))))
    for pid in (1, 2):  # before the fix: 500 for ever, the agent resending its oldest batch
        assert ingest(platform, agent, batch_body([exec_event(pid, "/bin/a", ["a"])])) == (
            200, {"accepted": 1, "duplicate": False})
    assert platform.storage.count_events() == 2
    counters = _overview_ingest(platform)
    assert counters["analysis_failures"] == 2 and counters["batches_analysed"] == 2
    assert "KeyError" in counters["last_analysis_error"]


def test_transient_error_in_analysis_answers_503(platform: Platform, agent: EnrolledAgent) -> None:
    error = sa.exc.OperationalError("UPDATE ...", {}, psycopg.errors.SerializationFailure())
    _pipeline(platform, Pipeline(rules=Failing(error)))
    status, body = ingest(platform, agent, batch_body([exec_event(1, "/bin/a", ["a"])]))
    assert status == 503 and "retry" in body["error"]
    assert platform.storage.count_events() == 0  # nothing half-stored: the agent resends the batch
    assert _overview_ingest(platform)["analysis_failures"] == 0


def test_nul_characters_are_replaced_everywhere_once(platform: Platform, agent: EnrolledAgent) -> None:
    rec = Recording()
    _pipeline(platform, Pipeline(rules=rec))
    ref = ProcessRef(key="k\x00", pid=5, exe="/tmp/e\x00vil")
    now = time.time_ns()
    events = [exec_event(5, "/tmp/e\x00vil", ["e\x00vil", "-x\x00"]),
              FileChange(ts=now, source="t", path="/etc/cron.d/x\x00y", action="create", process=ref),
              NetFlow(ts=now, source="t", process=ref, direction="out", protocol="tcp", local_addr="10.0.0.1",
                      remote_addr="10.0.0.2", remote_port=443, domain="ev\x00il.example"),
              DnsQuery(ts=now, source="t", process=ref, query="ev\x00il.example", qtype="A", answers=["1.2.3.4\x00"])]
    assert ingest(platform, agent, batch_body(events))[0] == 200
    stored = platform.storage.query_events(EventQuery(limit=10))
    assert len(stored) == 4 and all(b"\\u0000" not in e.data and b"\x00" not in e.data for e in stored)
    datas = [json.loads(e.data) for e in stored]
    assert {"/etc/cron.d/x\ufffdy", "ev\ufffdil.example"} <= {d.get("path") or d.get("domain") or d.get("query")
                                                             for d in datas}
    assert len(platform.storage.query_events(EventQuery(exe="/tmp/e\ufffdvil"))) == 4
    seen = json.dumps(rec.batches[0].events)
    assert "\\u0000" not in seen and seen.count("\\ufffd") >= 8  # the stages saw the cleaned events


def test_huge_random_exe_is_accepted(platform: Platform, agent: EnrolledAgent) -> None:
    exe = "/" + os.urandom(2000).hex()  # 4,000 random bytes: breaks a B-tree entry on PostgreSQL unless cut
    assert ingest(platform, agent, batch_body([exec_event(1, exe, [exe])]))[0] == 200
    stored = platform.storage.query_events(EventQuery(limit=1))
    assert json.loads(stored[0].data)["process"]["exe"] == exe


def test_huge_hostile_values_still_raise_their_alert(platform: Platform, agent: EnrolledAgent) -> None:
    """A program run from /tmp under a 4,000-byte random name, with a 4,000-byte process key: the graph
    node keys and the alert's group key are bounded, so analysis does not fail (which would lose the
    alert: an evasion) and the alert is there."""
    exe = "/tmp/" + os.urandom(2000).hex()
    ev = exec_event(7, exe, [exe, "x" * 5000])
    ev.process.key = "k" * 4000
    assert ingest(platform, agent, batch_body([ev]))[0] == 200
    assert _overview_ingest(platform)["analysis_failures"] == 0
    alerts = platform.client.get("/api/v1/alerts", headers=platform.admin).json()["alerts"]
    assert [a["rule"] for a in alerts if a["exe"] == exe] == ["Program run from a temporary directory"]


def test_future_events_are_stored_as_sent_and_counted(platform: Platform, agent: EnrolledAgent) -> None:
    now = time.time_ns()
    events = [exec_event(1, "/bin/a", ["a"], ts=now + 3 * DAY), exec_event(2, "/bin/b", ["b"], ts=now + 60 * 10**9)]
    assert ingest(platform, agent, batch_body(events))[0] == 200
    assert sorted(json.loads(e.data)["ts"] for e in platform.storage.query_events(EventQuery())) == [
        events[1].ts, events[0].ts]  # stored with their own ts
    assert _overview_ingest(platform)["future_events"] == 1  # a minute ahead is clock skew, not counted


def test_partitions_are_maintained_without_retention(pg_migrated_url: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    storage = SqlStorage.open(pg_migrated_url)
    try:
        tomorrow = partitions.partition_name(time.time_ns() // DAY + 1)
        with storage.db.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE {tomorrow}")
        monkeypatch.setattr(app_module, "PARTITION_INTERVAL_S", 0.05)
        with TestClient(create_app(storage, PlatformConfig(retention_days=0, data_dir=tmp_path))):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                with storage.db.read() as conn:
                    if tomorrow in partitions.list_partitions(conn):
                        break
                time.sleep(0.05)
            else:
                pytest.fail("the partition loop did not run with retention_days=0")
    finally:
        storage.close()
