"""Storage robustness on a real SQLite file and a real PostgreSQL database: analysis failures roll back
only their savepoint, errors are classified (transient: 503; others: real errors), indexed text is cut,
retention prunes what analysis stores, partition drops give up instead of stalling ingest, and the
migration-4 indexes serve the queries they were made for."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from platform_helpers import exec_event

from heron.platform.api.ingest import event_row
from heron.platform.storage import partitions, schema
from heron.platform.storage.base import AgentRecord, EventQuery
from heron.platform.storage.db import Database, DatabaseUnavailable, is_transient
from heron.platform.storage.sql import GRAPH_MIN_AGE_NS, INDEXED_TEXT_BYTES, SqlStorage, indexed_text

DAY = 86_400 * 1_000_000_000


@pytest.fixture
def store(database: Database) -> SqlStorage:
    s = SqlStorage(database)
    s.add_agent(AgentRecord("a1", "web-1", "{}", "web-1", "0.1.0", 1, 1, None), "hash-1")
    return s


def _count(store: SqlStorage, table: sa.Table) -> int:
    with store.db.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


# -- analysis in a savepoint --------------------------------------------------------------------

def test_failing_analysis_rolls_back_only_itself(store: SqlStorage) -> None:
    rows = [event_row(exec_event(i, "/bin/true", ["true"])) for i in range(3)]

    def failing(conn: sa.Connection) -> None:
        conn.execute(sa.insert(schema.alert_log).values(alert_id=1, ts=1, actor="test", action="half done"))
        raise RuntimeError("a stage has a bug")

    result = store.ingest_batch("a1", "b1", rows, None, 1, analyse=failing)
    assert (result.accepted, result.duplicate) == (3, False)
    assert isinstance(result.analysis_error, RuntimeError)
    assert store.count_events() == 3 and store.has_batch("a1", "b1")  # the events are kept
    assert _count(store, schema.alert_log) == 0  # the analysis' own writes are not


def test_database_error_in_analysis_keeps_the_batch(store: SqlStorage) -> None:
    """A statement failing inside the analysis (PostgreSQL aborts the transaction up to the savepoint)."""
    def bad_sql(conn: sa.Connection) -> None:
        conn.execute(sa.insert(schema.alert_log).values(alert_id=1, ts=None, actor="x", action="y"))

    result = store.ingest_batch("a1", "b1", [event_row(exec_event(1, "/bin/a", ["a"]))], None, 1, analyse=bad_sql)
    assert isinstance(result.analysis_error, sa.exc.IntegrityError)
    assert store.count_events() == 1 and _count(store, schema.alert_log) == 0
    assert store.ingest_batch("a1", "b2", [event_row(exec_event(2, "/bin/b", ["b"]))], None, 2).accepted == 1


def test_transient_error_in_analysis_fails_the_whole_batch(store: SqlStorage) -> None:
    def lost(conn: sa.Connection) -> None:
        raise DatabaseUnavailable("connection lost")

    with pytest.raises(DatabaseUnavailable):
        store.ingest_batch("a1", "b1", [event_row(exec_event(1, "/bin/a", ["a"]))], None, 1, analyse=lost)
    assert store.count_events() == 0 and not store.has_batch("a1", "b1")  # the agent resends it


# -- error classification -----------------------------------------------------------------------

def _wrapped(orig: Exception, kind: type[sa.exc.DBAPIError] = sa.exc.OperationalError) -> sa.exc.DBAPIError:
    return kind("SELECT 1", {}, orig)


@pytest.mark.parametrize(("orig", "transient"), [
    (psycopg.errors.SerializationFailure(), True),
    (psycopg.errors.DeadlockDetected(), True),
    (psycopg.errors.AdminShutdown(), True),
    (psycopg.errors.LockNotAvailable(), True),
    (psycopg.errors.ConnectionFailure(), True),
    (psycopg.OperationalError("connection refused"), True),  # the client's own: no SQLSTATE
    (psycopg.errors.ProgramLimitExceeded(), False),  # index row too large: the same on every retry
    (psycopg.errors.DiskFull(), False),
    (sqlite3.OperationalError("database is locked"), True),
    (sqlite3.OperationalError("no such table: x"), False),
])
def test_only_transient_errors_count_as_unavailable(orig: Exception, transient: bool) -> None:
    assert is_transient(_wrapped(orig)) is transient
    assert not is_transient(RuntimeError("not a database error"))


def test_permanent_error_is_not_reported_as_unavailable(database: Database) -> None:
    with pytest.raises(sa.exc.DBAPIError) as raised, database.begin() as conn:
        conn.execute(sa.text("SELECT * FROM no_such_table"))
    assert not isinstance(raised.value, DatabaseUnavailable)


def test_sqlite_busy_is_unavailable(tmp_path: Path) -> None:
    path = str(tmp_path / "busy.db")
    db = Database(path)
    try:
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(DatabaseUnavailable), db.read() as conn:
                conn.exec_driver_sql("PRAGMA busy_timeout=50")
                conn.exec_driver_sql("SELECT count(*) FROM sqlite_master").all()
        finally:
            other.execute("ROLLBACK")
            other.close()
    finally:
        db.close()


# -- indexed text -------------------------------------------------------------------------------

def test_indexed_text_is_cut_on_a_character_boundary() -> None:
    assert indexed_text("short") == "short" and indexed_text(None) is None
    cut = indexed_text("é" * 2000)
    assert cut is not None and len(cut.encode()) <= INDEXED_TEXT_BYTES and set(cut) == {"é"}
    assert indexed_text("a\x00b") == "a\ufffdb"


def test_huge_random_exe_is_stored_and_found(store: SqlStorage) -> None:
    """4,000 random bytes in exe, key and argv (hex and non-ASCII: incompressible, so a PostgreSQL
    B-tree entry over ~2.7 KB would be refused)."""
    exe = "/" + os.urandom(1000).hex() + "".join(chr(0x4E00 + b) for b in os.urandom(500))
    assert len(exe.encode()) > 3500
    event = exec_event(1, exe, [exe, "x"])
    event.process.key = exe
    assert store.ingest_batch("a1", "b1", [event_row(event)], None, 1).accepted == 1
    found = store.query_events(EventQuery(exe=exe))  # the query cuts its value like the column
    assert len(found) == 1 and exe in found[0].data.decode()  # the full value stays in data
    assert len(store.query_events(EventQuery(key=exe))) == 1


# -- retention of what analysis stores ------------------------------------------------------------

def _alert(conn: sa.Connection, state: str, updated: int) -> int:
    alert_id = conn.execute(sa.insert(schema.alerts).values(
        group_key="g", agent_id="a1", hostname="web-1", title="t", kind="rule", severity="high", state=state,
        first_ts=updated, last_ts=updated, created=updated, updated=updated).returning(schema.alerts.c.id)).scalar_one()
    conn.execute(sa.insert(schema.detections).values(
        alert_id=alert_id, kind="rule", name="r", severity="high", agent_id="a1", hostname="web-1", ts=updated,
        received=updated, event="{}", dedupe_key="d"))
    conn.execute(sa.insert(schema.alert_log).values(alert_id=alert_id, ts=updated, actor="x", action="closed"))
    return int(alert_id)


def _node(conn: sa.Connection, key: str, last_seen: int) -> int:
    return int(conn.execute(sa.insert(schema.graph_nodes).values(
        kind="cluster", key=key, first_seen=1, last_seen=last_seen).returning(schema.graph_nodes.c.id)).scalar_one())


def test_retention_prunes_analysis_tables(store: SqlStorage) -> None:
    now = 400 * DAY
    cutoff = now - 7 * DAY
    old, recent, ancient = now - 10 * DAY, now - DAY, now - 40 * DAY
    with store.db.begin() as conn:
        closed_old = _alert(conn, "closed", old)
        kept = [_alert(conn, "closed", recent), _alert(conn, "open", old), _alert(conn, "acknowledged", old)]
        for state, created in (("sent", old), ("failed", old), ("pending", old), ("sent", recent)):
            conn.execute(sa.insert(schema.notifications).values(
                channel_id=1, alert_id=kept[0], payload="{}", state=state, next_attempt=created, created=created))
        for expires in (old, recent, None):
            conn.execute(sa.insert(schema.suppressions).values(name=f"s{expires}", created=1, expires=expires))
        a, b, c, d, lonely, fresh = (_node(conn, k, t) for k, t in (
            ("a", ancient), ("b", ancient), ("c", ancient), ("d", ancient), ("lonely", ancient), ("fresh", recent)))
        conn.execute(sa.insert(schema.baselines).values(cluster=lonely, learning_since=1, learning_until=2))
        conn.execute(sa.insert(schema.baselines).values(cluster=fresh, learning_since=1, learning_until=2))
        for src, dst, baseline, seen in ((a, b, "learned", ancient), (a, c, "new", ancient),
                                         (c, d, "expected", old), (b, d, "expected", ancient)):
            conn.execute(sa.insert(schema.graph_edges).values(src=src, dst=dst, kind="spawned", agent_id="a1",
                                                              first_seen=1, last_seen=seen, baseline=baseline))
    store.delete_events_before(cutoff, now=now)
    with store.db.read() as conn:
        assert sorted(conn.execute(sa.select(schema.alerts.c.id)).scalars()) == sorted(kept)
        assert closed_old not in conn.execute(sa.select(schema.detections.c.alert_id)).scalars().all()
        assert closed_old not in conn.execute(sa.select(schema.alert_log.c.alert_id)).scalars().all()
        assert _count(store, schema.detections) == 3 and _count(store, schema.alert_log) == 3
        assert sorted(conn.execute(sa.select(schema.notifications.c.state)).scalars()) == ["pending", "sent"]
        assert sorted(conn.execute(sa.select(schema.suppressions.c.name)).scalars()) == sorted(["sNone", f"s{recent}"])
        # learned/expected edges older than max(retention, 30 days) go; 'new' ones wait for an analyst;
        # c->d was seen 10 days ago: older than the retention but not than 30 days.
        edges = {(s, d_, k) for s, d_, k in conn.execute(
            sa.select(schema.graph_edges.c.src, schema.graph_edges.c.dst, schema.graph_edges.c.baseline))}
        assert edges == {(a, c, "new"), (c, d, "expected")}
        # b lost its only edges, lonely never had one (and its baseline goes with it); fresh is recent
        nodes = set(conn.execute(sa.select(schema.graph_nodes.c.id)).scalars())
        assert nodes == {a, c, d, fresh}
        assert list(conn.execute(sa.select(schema.baselines.c.cluster)).scalars()) == [fresh]
    assert store.prune_analysis(cutoff, now) == {k: 0 for k in store.prune_analysis(cutoff, now)}


def test_graph_edges_outlive_a_short_retention(store: SqlStorage) -> None:
    now = 400 * DAY
    with store.db.begin() as conn:
        a, b = _node(conn, "a", now - 20 * DAY), _node(conn, "b", now - 20 * DAY)
        conn.execute(sa.insert(schema.graph_edges).values(src=a, dst=b, kind="spawned", agent_id="a1",
                                                          first_seen=1, last_seen=now - 20 * DAY))
    counts = store.prune_analysis(now - DAY, now)  # a 1-day retention still keeps 30 days of baselines
    assert counts["graph_edges"] == counts["graph_nodes"] == 0
    assert store.prune_analysis(now - DAY, now + GRAPH_MIN_AGE_NS)["graph_edges"] == 1


def test_pruning_works_in_chunks(store: SqlStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("heron.platform.storage.sql.ANALYSIS_CHUNK", 7)
    with store.db.begin() as conn:
        for _ in range(30):
            _alert(conn, "closed", 5)
    assert store.prune_analysis(10, 100 * DAY)["alerts"] == 30
    assert _count(store, schema.alerts) == _count(store, schema.detections) == 0


# -- PostgreSQL partitions ------------------------------------------------------------------------

@pytest.fixture
def pg_store(pg_url: str) -> Iterator[SqlStorage]:
    s = SqlStorage.open(pg_url)
    s.add_agent(AgentRecord("a1", "web-1", "{}", "web-1", "0.1.0", 1, 1, None), "hash-1")
    yield s
    s.close()


def test_pg_maintain_partitions_makes_the_coming_days(pg_store: SqlStorage) -> None:
    later = time.time_ns() + 10 * DAY
    made = pg_store.maintain_partitions(later)
    assert made == [partitions.partition_name(d) for d in range(later // DAY, later // DAY + 3)]
    assert pg_store.maintain_partitions(later) == []


def test_sqlite_has_no_partitions_to_maintain(tmp_path: Path) -> None:
    store = SqlStorage.open(str(tmp_path / "heron.db"))
    try:
        assert store.maintain_partitions() == []
    finally:
        store.close()


def test_pg_partition_drop_gives_up_on_a_held_lock(pg_store: SqlStorage, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long transaction holding the parent (a slow insert, a report) must not make the drop queue
    every ingest behind it for long: the drop times out and is retried next round."""
    monkeypatch.setattr(partitions, "DROP_LOCK_TIMEOUT", "200ms")
    now = time.time_ns()
    with pg_store.db.begin() as conn:
        partitions.ensure_partitions(conn, now, back=10)
    old = partitions.partition_name(now // DAY - 9)
    pg_store.ingest_batch("a1", "b1", [event_row(exec_event(i, "/bin/x", ["x"], ts=now - 9 * DAY))
                                       for i in range(50)], None, now)
    with pg_store.db.begin() as conn:
        conn.exec_driver_sql("ANALYZE events")
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with pg_store.db.begin() as conn:
            conn.exec_driver_sql(f"SELECT count(*) FROM {old}").all()  # ACCESS SHARE until commit
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        assert partitions.drop_partitions_before(pg_store.db, now - 7 * DAY) == 0
        assert time.monotonic() - started < 5
        with pg_store.db.read() as conn:
            assert old in partitions.list_partitions(conn)
    finally:
        release.set()
        holder.join()
    assert partitions.drop_partitions_before(pg_store.db, now - 7 * DAY) == 50  # estimate from ANALYZE
    with pg_store.db.read() as conn:
        assert old not in partitions.list_partitions(conn)


# -- migration 4 indexes ------------------------------------------------------------------------

def _plan(db: Database, stmt: sa.Select[tuple[object, ...]]) -> str:
    sql = str(stmt.compile(dialect=db.engine.dialect, compile_kwargs={"literal_binds": True}))
    with db.read() as conn:
        if db.dialect == "sqlite":
            return " ".join(str(r[-1]) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql))
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # tiny tables: make the planner show its choice
        return " ".join(str(r[0]) for r in conn.exec_driver_sql("EXPLAIN " + sql))


def test_exec_lookups_use_the_partial_index(store: SqlStorage) -> None:
    e = schema.events.c
    lineage = (sa.select(e.data).where(e.key == "k", e.type == "process.exec", e.agent_id == "a1")
               .order_by(e.ts.desc()).limit(1))
    clusters = (sa.select(e.key, e.data).where(e.agent_id == "a1", e.type == "process.exec", e.key.in_(["k", "j"]))
                .order_by(e.ts))
    name = "events_exec_key" if store.db.dialect == "sqlite" else "_agent_id_key_ts_idx"  # PG: per partition
    for stmt in (lineage, clusters):
        assert name in _plan(store.db, stmt)


def test_overview_count_reads_only_the_ts_type_index(store: SqlStorage) -> None:
    from heron.platform.api.overview import events_per_type

    now = time.time_ns()
    store.ingest_batch("a1", "b1", [event_row(exec_event(i, "/bin/a", ["a"], ts=now - i * 10**9))
                                    for i in range(2000)], None, now)
    if store.db.dialect == "postgresql":  # index-only scans need the visibility map; statistics
        with store.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE events")
    e = schema.events.c
    since = now - DAY
    window = sa.select(e.type).where(e.ts >= since).order_by(e.ts.desc()).limit(1_000_000).subquery()
    plan = _plan(store.db, sa.select(window.c.type, sa.func.count()).group_by(window.c.type))
    if store.db.dialect == "sqlite":
        assert "COVERING INDEX events_ts_type" in plan, plan
    else:  # partitions name their copy <partition>_ts_type_idx
        assert "Index Only Scan" in plan and "ts_type_idx" in plan and "Heap" not in plan, plan
    with store.db.read() as conn:
        assert events_per_type(conn, since) == {"process.exec": 2000}  # from the hourly counters
    with store.db.read() as conn:
        names = {i["name"] for i in sa.inspect(conn).get_indexes("events")}
    assert {"events_ts_type", "events_exec_key"} <= names and "events_ts" not in names
