"""SqliteStorage on a real file: migrations, file modes, atomic batches, retention."""

from __future__ import annotations

import sqlite3
import stat
import threading
from pathlib import Path

import pytest
from platform_helpers import exec_event, health_event

from heron.platform.api.app import run_retention
from heron.platform.api.ingest import event_row
from heron.platform.storage.base import AgentRecord, EventQuery, EventRow
from heron.platform.storage.migrations import MIGRATIONS
from heron.platform.storage.sqlite import SqliteStorage

DAY = 86_400 * 1_000_000_000


def agent(agent_id: str = "a1", hostname: str = "web-1") -> AgentRecord:
    return AgentRecord(agent_id, hostname, "{}", hostname, "0.1.0", 1, 1, None)


def test_migrations_apply_once_and_wal_is_on(tmp_path: Path) -> None:
    path = tmp_path / "heron.db"
    store = SqliteStorage(path)
    assert store.schema_version == MIGRATIONS[-1][0]
    store.add_agent(agent(), "hash-1")
    store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reopened = SqliteStorage(path)  # re-applying would fail: CREATE TABLE agents already exists
    assert reopened.get_agent("a1") is not None
    reopened.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_version")]
    assert versions == [n for n, _ in MIGRATIONS]


def test_batch_and_events_commit_together(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path / "heron.db")
    store.add_agent(agent(), "hash-1")
    rows = [event_row(exec_event(1, "/bin/true", ["true"]))]
    broken = [*rows, EventRow("process.exec", None, None, None, None, None, b"{}")]  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):  # ts NOT NULL, on the second event
        store.ingest_batch("a1", "b1", broken, None, 5)
    # Nothing of the failed batch stayed: the retry with the same id is accepted whole.
    assert not store.has_batch("a1", "b1") and store.count_events() == 0
    assert store.ingest_batch("a1", "b1", rows, None, 6).accepted == 1
    store.close()


def test_concurrent_ingest_of_one_batch_stores_it_once(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path / "heron.db")
    store.add_agent(agent(), "hash-1")
    rows = [event_row(exec_event(i, "/bin/true", ["true"])) for i in range(50)]
    results: list[bool] = []

    def worker() -> None:
        results.append(store.ingest_batch("a1", "same", rows, None, 1).duplicate)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] + [True] * 7
    assert store.count_events() == 50
    store.close()


def test_retention_deletes_old_events_and_batches(tmp_path: Path) -> None:
    store = SqliteStorage(tmp_path / "heron.db")
    store.add_agent(agent(), "hash-1")
    now = 100 * DAY
    old = [event_row(exec_event(i, "/bin/old", ["old"], ts=now - 10 * DAY)) for i in range(12_000)]
    new = [event_row(exec_event(1, "/bin/new", ["new"], ts=now - DAY)),
           event_row(health_event(ts=now - 2 * DAY))]
    store.ingest_batch("a1", "old", old, None, now - 10 * DAY)
    store.ingest_batch("a1", "new", new, None, now - DAY)
    assert run_retention(store, 7, now_ns=now) == 12_000  # several delete chunks
    kept = store.query_events(EventQuery(limit=100))
    assert len(kept) == 2 and store.count_events() == 2
    assert not store.has_batch("a1", "old") and store.has_batch("a1", "new")
    assert run_retention(store, 7, now_ns=now) == 0
    store.close()
