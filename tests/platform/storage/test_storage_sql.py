"""SqlStorage on a real SQLite file and a real PostgreSQL database: migrations (fresh and from the old
SQLite schema), atomic batches and the analyse hook, retention, PostgreSQL partitions."""

from __future__ import annotations

import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from old_schema import make_old_database
from platform_helpers import exec_event, health_event

from heron.platform.api.app import run_retention
from heron.platform.api.ingest import event_row
from heron.platform.packages import PackageStore
from heron.platform.storage import partitions, schema
from heron.platform.storage.base import AgentRecord, EventQuery, EventRow
from heron.platform.storage.db import Database
from heron.platform.storage.migrations import LATEST, MIGRATIONS, migrate
from heron.platform.storage.sql import SqlStorage
from heron.schema.events import Package, PackageInventory

DAY = 86_400 * 1_000_000_000


def agent(agent_id: str = "a1", hostname: str = "web-1") -> AgentRecord:
    return AgentRecord(agent_id, hostname, "{}", hostname, "0.1.0", 1, 1, None)


@pytest.fixture
def store(database: Database) -> SqlStorage:
    s = SqlStorage(database)
    s.add_agent(agent(), "hash-1")
    return s


def test_fresh_database_gets_the_whole_schema_once(database: Database) -> None:
    assert migrate(database) == LATEST  # the second run finds nothing to do
    with database.read() as conn:
        versions = conn.execute(sa.select(schema.schema_version.c.version)).scalars().all()
        inspector = sa.inspect(conn)
        for table in schema.metadata.sorted_tables:
            columns = {c["name"] for c in inspector.get_columns(table.name)}
            assert columns == set(table.c.keys()), table.name
    assert sorted(versions) == [n for n, _ in MIGRATIONS]


def test_sqlite_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "heron.db"
    store = SqlStorage.open(str(path))
    store.add_agent(agent(), "hash-1")
    store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    reopened = SqlStorage.open(str(path))
    assert reopened.get_agent("a1") is not None
    reopened.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("version", [1, 2])
def test_old_sqlite_database_is_upgraded_and_keeps_its_data(tmp_path: Path, version: int) -> None:
    path = tmp_path / "old.db"
    make_old_database(path, version)
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO agents (agent_id, hostname, first_seen, last_seen) VALUES ('a1', 'web-1', 1, 2)")
        conn.execute("INSERT INTO tokens (token_hash, kind, agent_id, created) VALUES ('h1', 'agent', 'a1', 3)")
        conn.execute("INSERT INTO tokens (token_hash, kind, created, revoked) VALUES ('h2', 'admin', 4, 5)")
        conn.execute("INSERT INTO batches VALUES ('a1', 'b1', 6, 1)")
        conn.execute("INSERT INTO events (agent_id, hostname, type, ts, pid, exe, cmdline, data)"
                     " VALUES ('a1', 'web-1', 'process.exec', 7, 42, '/bin/sh', '/bin/sh -c x', '{\"ts\":7}')")
        if version == 2:
            pkg = Package(ecosystem="Debian", name="curl", version="7.88.1-10", manager="dpkg", distro="12",
                          purl="pkg:deb/debian/curl@7.88.1-10?distro=debian-12")
            conn.execute("INSERT INTO packages (agent_id, scope, purl, ecosystem, name, version, data, ts)"
                         " VALUES ('a1', 'host', ?, 'Debian', 'curl', '7.88.1-10', ?, 8)",
                         (pkg.purl, __import__("msgspec").json.encode(pkg).decode()))
    store = SqlStorage.open(str(path))
    try:
        with store.db.read() as conn:
            versions = conn.execute(sa.select(schema.schema_version.c.version)).scalars().all()
            token = conn.execute(sa.select(schema.tokens).where(schema.tokens.c.token_hash == "h1")).one()
            assert sa.inspect(conn).has_table("alerts") and sa.inspect(conn).has_table("users")
            indexes = {i["name"] for i in sa.inspect(conn).get_indexes("events")}
        assert sorted(versions) == [n for n, _ in MIGRATIONS]
        assert {"events_ts_type", "events_exec_key"} <= indexes and "events_ts" not in indexes  # migration 4
        assert token.name == "" and token.user_id is None and token.expires is None
        with store.db.read() as conn:  # migration 5 counted the events already stored, per hour
            assert conn.execute(sa.select(schema.event_counts)).all() == [(0, "process.exec", "a1", 1)]
        assert store.find_token("h1") is not None and store.find_token("h2").revoked == 5  # type: ignore[union-attr]
        assert store.has_batch("a1", "b1")
        assert [e.data for e in store.query_events(EventQuery(exe="sh"))] == [b'{"ts":7}']
        packages = PackageStore(store.db)
        assert [p.package.name for p in packages.installed()] == (["curl"] if version == 2 else [])
        packages.apply("a1", [PackageInventory(ts=9, scope="host", full=True, added=[
            Package(ecosystem="Debian", name="zlib1g", version="1:1.2.13", manager="dpkg", distro="12",
                    purl="pkg:deb/debian/zlib1g@1:1.2.13?distro=debian-12")])])
        assert [p.package.name for p in packages.installed()] == ["zlib1g"]
        # New tables and columns are usable.
        store.add_token("h3", "reader", None, 10)
        assert store.ingest_batch("a1", "b2", [event_row(exec_event(1, "/bin/true", ["true"]))], None, 11).accepted
        assert store.count_events() == 2
    finally:
        store.close()
    assert migrate(Database(str(path))) == LATEST


def test_postgresql_servers_starting_at_once_migrate_once(pg_url: str) -> None:
    results: list[int | BaseException] = []

    def start() -> None:
        db = Database(pg_url)
        try:
            results.append(migrate(db))
        except BaseException as e:  # reported below
            results.append(e)
        finally:
            db.close()

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [LATEST] * 4
    db = Database(pg_url)
    with db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.schema_version)).scalar() == LATEST
    db.close()


def test_batch_and_events_commit_together(store: SqlStorage) -> None:
    rows = [event_row(exec_event(1, "/bin/true", ["true"]))]
    broken = [*rows, EventRow("process.exec", None, None, None, None, None, b"{}")]  # type: ignore[arg-type]
    with pytest.raises(sa.exc.IntegrityError):  # ts NOT NULL, on the second event
        store.ingest_batch("a1", "b1", broken, None, 5)
    # Nothing of the failed batch stayed: the retry with the same id is accepted whole.
    assert not store.has_batch("a1", "b1") and store.count_events() == 0
    assert store.ingest_batch("a1", "b1", rows, None, 6).accepted == 1


def test_analyse_runs_in_the_batch_transaction_once(store: SqlStorage) -> None:
    rows = [event_row(exec_event(i, "/bin/true", ["true"])) for i in range(3)]
    seen: list[int] = []

    def analyse(conn: sa.Connection) -> None:  # sees the batch's own events, uncommitted
        seen.append(conn.execute(sa.select(sa.func.count()).select_from(schema.events)).scalar_one())
        conn.execute(sa.insert(schema.alert_log).values(alert_id=1, ts=1, actor="test", action="analysed"))

    def failing(conn: sa.Connection) -> None:
        analyse(conn)
        raise RuntimeError("analysis failed")

    # A failing analysis rolls back its own writes only (a savepoint): the batch is stored.
    assert isinstance(store.ingest_batch("a1", "b0", rows, None, 1, analyse=failing).analysis_error, RuntimeError)
    assert store.ingest_batch("a1", "b1", rows, None, 2, analyse=analyse).accepted == 3
    assert store.ingest_batch("a1", "b1", rows, None, 3, analyse=analyse).duplicate  # not analysed again
    assert seen == [3, 6]
    with store.db.read() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.alert_log)).scalar_one() == 1


def test_concurrent_ingest_of_one_batch_stores_it_once(store: SqlStorage) -> None:
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


def test_queries_filter_and_order(store: SqlStorage) -> None:
    rows = [event_row(exec_event(1, "/usr/bin/curl", ["curl", "Example.COM"], ts=10)),
            event_row(exec_event(2, "/bin/sh", ["sh", "-c", "50%_off"], ts=20)),
            event_row(health_event(ts=30))]
    store.ingest_batch("a1", "b1", rows, None, 1)
    ids = [e.id for e in store.query_events(EventQuery())]
    assert ids == sorted(ids, reverse=True) and len(ids) == 3
    assert [e.id for e in store.query_events(EventQuery(after_id=ids[-1]))] == sorted(ids)[1:]
    assert len(store.query_events(EventQuery(exe="curl"))) == 1
    assert len(store.query_events(EventQuery(exe="url"))) == 0  # a last component, not a substring
    assert len(store.query_events(EventQuery(text="example.com"))) == 1  # case-insensitive on both
    assert len(store.query_events(EventQuery(text="%_"))) == 1  # LIKE wildcards are literal
    assert len(store.query_events(EventQuery(since=15, until=30))) == 1
    assert len(store.query_events(EventQuery(types=("process.exec", "agent.health"), limit=2))) == 2
    assert store.query_events(EventQuery(hostname="web-1", pid=2))[0].hostname == "web-1"


def test_nul_characters_are_stored_on_both(store: SqlStorage) -> None:
    row = event_row(exec_event(1, "/tmp/a\x00b", ["a\x00b"]))
    assert store.ingest_batch("a1", "b1", [row], None, 1).accepted == 1
    assert store.query_events(EventQuery(text="a\ufffdb"))  # PostgreSQL text cannot hold NUL


def test_retention_deletes_old_events_and_batches(store: SqlStorage) -> None:
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


# -- PostgreSQL partitions --------------------------------------------------------------------------

@pytest.fixture
def pg_store(pg_url: str) -> SqlStorage:
    s = SqlStorage.open(pg_url)
    s.add_agent(agent(), "hash-1")
    yield s  # type: ignore[misc]
    s.close()


def _partitions(store: SqlStorage) -> list[str]:
    with store.db.read() as conn:
        return partitions.list_partitions(conn)


def _rows_in(store: SqlStorage, table: str) -> int:
    with store.db.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar_one())


def test_pg_events_are_partitioned_by_day_with_a_default(pg_store: SqlStorage) -> None:
    today = time.time_ns() // DAY
    assert _partitions(pg_store) == sorted([partitions.DEFAULT_PARTITION,
                                            *(partitions.partition_name(d) for d in range(today, today + 3))])
    now = time.time_ns()
    odd = [event_row(exec_event(1, "/bin/a", ["a"], ts=1)),  # 1970: no partition but the default
           event_row(exec_event(2, "/bin/b", ["b"], ts=(1 << 63) - 1)),
           event_row(exec_event(3, "/bin/c", ["c"], ts=now))]
    assert pg_store.ingest_batch("a1", "b1", odd, None, now).accepted == 3
    assert _rows_in(pg_store, partitions.DEFAULT_PARTITION) == 2
    assert _rows_in(pg_store, partitions.partition_name(today)) == 1
    with pg_store.db.read() as conn:
        assert conn.exec_driver_sql("SELECT relkind FROM pg_class WHERE relname = 'events'").scalar() == "p"


def test_pg_partition_made_late_takes_its_rows_from_the_default(pg_store: SqlStorage) -> None:
    later = time.time_ns() + 5 * DAY
    pg_store.ingest_batch("a1", "b1", [event_row(exec_event(1, "/bin/a", ["a"], ts=later))], None, 1)
    assert _rows_in(pg_store, partitions.DEFAULT_PARTITION) == 1
    with pg_store.db.begin() as conn:
        made = partitions.ensure_partitions(conn, later, ahead=0)
    assert made == [partitions.partition_name(later // DAY)]
    assert _rows_in(pg_store, made[0]) == 1 and _rows_in(pg_store, partitions.DEFAULT_PARTITION) == 0
    assert len(pg_store.query_events(EventQuery(since=later))) == 1


def test_pg_retention_drops_old_partitions(pg_store: SqlStorage) -> None:
    now = time.time_ns()
    with pg_store.db.begin() as conn:
        partitions.ensure_partitions(conn, now, back=10)
    rows = [event_row(exec_event(i, "/bin/x", ["x"], ts=now - (9 - i % 2) * DAY)) for i in range(100)]
    rows += [event_row(exec_event(1, "/bin/y", ["y"], ts=now - DAY)),
             event_row(exec_event(2, "/bin/z", ["z"], ts=5))]  # in the default partition
    pg_store.ingest_batch("a1", "b1", rows, None, now)
    cutoff = now - 7 * DAY
    old_days = [partitions.partition_name(d) for d in range(now // DAY - 10, cutoff // DAY)]
    assert set(old_days) <= set(_partitions(pg_store))
    with pg_store.db.begin() as conn:  # dropped partitions count by the planner's estimate (reltuples)
        conn.exec_driver_sql("ANALYZE events")
    assert pg_store.delete_events_before(cutoff) == 101
    left = _partitions(pg_store)
    assert not set(old_days) & set(left) and partitions.partition_name(cutoff // DAY) in left
    assert [e.data for e in pg_store.query_events(EventQuery())] == [rows[100].data]
    assert pg_store.delete_events_before(cutoff) == 0
