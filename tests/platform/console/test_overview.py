"""GET /api/v1/overview's query (heron.platform.api.overview) on SQLite and PostgreSQL: agents healthy and
stale, events of the last 24 h per type (older ones not counted, the scan cap reported), open alerts per
severity, recent alerts newest first."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import sqlalchemy as sa
from platform_helpers import EnrolledAgent, Platform, exec_event

from heron.platform.api.overview import DAY_NS, STALE_NS, overview
from heron.platform.storage.db import Database
from heron.platform.storage.migrations import HOUR_NS
from heron.platform.storage.schema import agents, alerts, event_counts, events
from heron.platform.storage.sql import SqlStorage

NOW = 1_800_000_000 * 10**9


@pytest.fixture
def db(database: Database) -> Database:
    return database


def _agent(agent_id: str, last_seen: int, counters: dict[str, int] | None = None) -> dict[str, object]:
    health = json.dumps({"type": "agent.health", "counters": counters or {}}) if counters is not None else None
    return {"agent_id": agent_id, "name": agent_id, "hostname": agent_id, "version": "0.1.0",
            "first_seen": NOW - DAY_NS, "last_seen": last_seen, "last_health": health}


def _event(kind: str, ts: int) -> dict[str, object]:
    return {"agent_id": "a1", "hostname": "a1", "type": kind, "ts": ts, "data": "{}"}


def _alert(n: int, severity: str, state: str, last_ts: int) -> dict[str, object]:
    return {"group_key": f"g{n}", "agent_id": "a1", "hostname": "web-1", "title": f"alert {n}", "kind": "rule",
            "rule": f"rule {n}", "severity": severity, "score": 50.0, "state": state, "pid": 100 + n,
            "exe": "/bin/bash", "first_ts": last_ts - 10, "last_ts": last_ts, "created": last_ts, "updated": last_ts,
            "n_detections": n, "tags": json.dumps(["T1059"])}


def _seed(db: Database) -> None:
    with db.begin() as c:
        c.execute(sa.insert(agents), [
            _agent("fresh-ok", NOW - 10**9, {"network.ebpf.dropped": 0}),
            _agent("fresh-losing", NOW - 10**9, {"process.ebpf.lost": 3}),
            _agent("stale", NOW - STALE_NS - 10**9, {}),
            _agent("no-health", NOW - 10**9, None),
        ])
        rows = [_event("process.exec", NOW - i * 10**9) for i in range(5)]
        rows += [_event("net.flow", NOW - 3600 * 10**9) for _ in range(3)]
        rows += [_event("file.change", NOW - DAY_NS - 10**9) for _ in range(4)]  # older than the window
        c.execute(sa.insert(events), rows)
        hourly = Counter((r["ts"] - r["ts"] % HOUR_NS, r["type"], r["agent_id"]) for r in rows)  # as ingest
        c.execute(sa.insert(event_counts), [{"hour": h, "type": t, "agent_id": a, "n": n}
                                            for (h, t, a), n in hourly.items()])
        c.execute(sa.insert(alerts), [
            _alert(1, "critical", "open", NOW - 50), _alert(2, "high", "open", NOW - 40),
            _alert(3, "high", "open", NOW - 30), _alert(4, "medium", "acknowledged", NOW - 20),
            _alert(5, "critical", "closed", NOW - 10),
        ])


def test_overview_counts(db: Database) -> None:
    _seed(db)
    with db.read() as conn:
        body = overview(conn, NOW, recent=3)
    assert body["agents"] == {"total": 4, "healthy": 2, "stale": 1, "stale_after_ns": STALE_NS}
    assert body["events"] == {"last_24h": {"process.exec": 5, "net.flow": 3}, "since": NOW - DAY_NS, "capped": False}
    assert body["alerts"] == {"open": {"critical": 1, "high": 2}, "acknowledged": {"medium": 1}}
    recent = body["recent_alerts"]
    assert isinstance(recent, list)
    assert [a["id"] for a in recent] == [5, 4, 3]
    assert recent[0] == {"id": 5, "title": "alert 5", "kind": "rule", "rule": "rule 5", "severity": "critical",
                         "score": 50.0, "state": "closed", "host": "web-1", "agent_id": "a1", "pid": 105,
                         "exe": "/bin/bash", "process_key": None, "container_id": None, "time": NOW - 20,
                         "first_ts": NOW - 20, "last_ts": NOW - 10, "n_detections": 5, "tags": ["T1059"],
                         "created": NOW - 10, "updated": NOW - 10}


def test_counts_follow_ingest_and_the_window(db: Database) -> None:
    """Ingest keeps the hourly counters the overview sums: a million stored events cost a few rows."""

    from heron.platform.api.ingest import event_row

    store = SqlStorage(db)
    old = [exec_event(i, "/bin/a", ["a"], ts=NOW - DAY_NS - 3600 * 10**9) for i in range(3)]
    new = [exec_event(i, "/bin/a", ["a"], ts=NOW - i * 10**9) for i in range(7)]
    store.ingest_batch("a1", "b1", [event_row(e) for e in old + new], None, NOW)
    store.ingest_batch("a1", "b1", [event_row(e) for e in new], None, NOW)  # a duplicate batch counts nothing
    store.ingest_batch("a2", "b2", [event_row(e) for e in new[:2]], None, NOW)
    with db.read() as conn:
        assert overview(conn, NOW)["events"]["last_24h"] == {"process.exec": 9}  # type: ignore[index]


def test_empty_database(db: Database) -> None:
    with db.read() as conn:
        body = overview(conn, NOW)
    assert body["agents"] == {"total": 0, "healthy": 0, "stale": 0, "stale_after_ns": STALE_NS}
    assert body["events"] == {"last_24h": {}, "since": NOW - DAY_NS, "capped": False}
    assert body["alerts"] == {"open": {}, "acknowledged": {}} and body["recent_alerts"] == []


def test_overview_endpoint_needs_a_query_role(platform: Platform, agent: EnrolledAgent) -> None:
    assert platform.client.get("/api/v1/overview").status_code == 401
    assert platform.client.get("/api/v1/overview", headers=platform.auth(agent.token)).status_code == 403
    r = platform.client.get("/api/v1/overview", headers=platform.admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["agents"]["total"] == 1 and body["recent_alerts"] == []
    assert set(body) == {"agents", "events", "alerts", "recent_alerts", "time", "ingest"}
