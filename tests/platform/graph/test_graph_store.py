"""Graph writes on real SQLite and PostgreSQL: indexed lookups, hot node rows, the cluster cache."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from graph_events import SEC, T0, batch, exec_, flow, key, write

from heron.platform.graph import GraphBuilder, neighbourhood
from heron.platform.graph.clusters import Cluster, ClusterCache, known_clusters
from heron.platform.storage import schema
from heron.platform.storage.db import Database

NGINX = "/usr/sbin/nginx"


@contextmanager
def statements(db: Database) -> Iterator[list[tuple[str, Any]]]:
    """Every SQL statement (with its parameters) the engine runs meanwhile."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        seen.append((sql, params))

    sa.event.listen(db.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(db.engine, "before_cursor_execute", record)


def busy_batch(n: int, ts: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        exe = f"/usr/bin/tool{i % 7}"
        out += [exec_(1000 + i, exe, [exe, str(i)], parent=(1, "/usr/lib/systemd/systemd"), ts=ts),
                flow(1000 + i, exe, f"10.9.{i % 5}.{i}", 443, ts=ts), write(1000 + i, exe, f"/srv/d{i}/f", ts=ts)]
    return out


def test_graph_lookups_use_indexes_on_sqlite(gdb: Database) -> None:
    """No statement of a batch scans graph_edges or graph_nodes (a row-value IN made SQLite scan)."""
    if gdb.dialect != "sqlite":
        pytest.skip("SQLite query plans")
    builder = GraphBuilder()
    with gdb.begin() as conn:
        builder.update(conn, batch("agent-a", "web-1", T0, *busy_batch(40, T0)))
    with gdb.begin() as conn:  # agent-b runs the same clusters: its own learning windows open at T0
        builder.update(conn, batch("agent-b", "web-2", T0, *busy_batch(40, T0)[::3]))
    # Two days on: learned on one host only, agent-b's copies are judged and raise (rarity lookups).
    later = T0 + 2 * 86400 * SEC
    with statements(gdb) as seen, gdb.begin() as conn:
        found = builder.update(conn, batch("agent-b", "web-2", later, *busy_batch(40, later),
                                           flow(77, "/usr/bin/unknown", "10.1.1.1", 22, ts=later)))
    assert found, "the batch should have judged the fleet's copies and scored rarity"
    with statements(gdb) as read, gdb.read() as conn:
        assert neighbourhood(conn, found[0].cluster or 0)["edges"]
    selects = [(sql, p) for sql, p in seen + read if sql.lstrip().upper().startswith("SELECT") and "graph_" in sql]
    assert len(selects) >= 5
    with gdb.read() as conn:
        raw = conn.connection.driver_connection
        assert raw is not None
        for sql, params in selects:
            plan = " / ".join(str(row[3]) for row in raw.execute("EXPLAIN QUERY PLAN " + sql, params))
            assert "SCAN graph_edges" not in plan and "SCAN graph_nodes" not in plan, (sql, plan)


def test_hot_node_rows_are_not_rewritten_per_batch(gdb: Database) -> None:
    builder = GraphBuilder()

    def run(ts: int, *evs: dict[str, Any]) -> None:
        _update(gdb, builder, ts, *evs)

    run(T0, exec_(5, NGINX, ["nginx"]), exec_(6, "/usr/bin/id", ["id"]))
    with statements(gdb) as seen:
        run(T0 + SEC, exec_(7, NGINX, ["nginx"]), exec_(8, "/usr/bin/id", ["id"]))  # within a minute
    assert not [s for s, _p in seen if s.lstrip().upper().startswith(("UPDATE GRAPH_NODES", "INSERT INTO GRAPH_NODES"))]
    assert _node(gdb, "cluster", f"{NGINX}|root|host|").count == 1
    assert _node(gdb, "cluster", "/usr/bin/id|root|host|").count == 1
    # A minute later nginx is refreshed with its pending count; id's pending count, older than a
    # minute, is flushed although id is not in the batch.
    run(T0 + 62 * SEC, exec_(9, NGINX, ["nginx"]))
    row = _node(gdb, "cluster", f"{NGINX}|root|host|")
    assert (row.count, row.last_seen) == (3, T0 + 62 * SEC)
    row = _node(gdb, "cluster", "/usr/bin/id|root|host|")
    assert (row.count, row.last_seen) == (2, T0)
    assert builder.nodes.pending() == {}


def test_a_node_locked_by_another_batch_is_skipped_not_waited_for(gdb: Database) -> None:
    if gdb.dialect != "postgresql":
        pytest.skip("row locks: PostgreSQL")
    builder = GraphBuilder()
    _update(gdb, builder, T0, exec_(5, NGINX, ["nginx"]))
    root = _node(gdb, "user", "root").id
    held, release, done = threading.Event(), threading.Event(), threading.Event()

    def other_server() -> None:  # another server's batch holding the row until it commits
        with gdb.begin() as conn:
            conn.execute(sa.select(schema.graph_nodes.c.id).where(schema.graph_nodes.c.id == root).with_for_update())
            held.set()
            release.wait(10)
        done.set()

    thread = threading.Thread(target=other_server)
    thread.start()
    try:
        assert held.wait(10)
        with gdb.begin() as conn:
            conn.execute(sa.text("SET LOCAL lock_timeout = '2s'"))  # waiting would fail the batch
            builder.update(conn, batch("agent-a", "web-1", T0 + 120 * SEC, exec_(6, NGINX, ["nginx"],
                                                                                   ts=T0 + 120 * SEC)))
        assert not done.is_set()
    finally:
        release.set()
        thread.join(10)
    assert _node(gdb, "user", "root").last_seen == T0  # skipped ...
    assert _node(gdb, "cluster", f"{NGINX}|root|host|").last_seen == T0 + 120 * SEC  # ... the others written
    assert builder.nodes.pending() == {root: 1}
    _update(gdb, builder, T0 + 200 * SEC, exec_(7, NGINX, ["nginx"], ts=T0 + 200 * SEC))
    assert _node(gdb, "user", "root").count == 3


def test_cluster_cache_shares_clusters_and_is_thread_safe() -> None:
    cache = ClusterCache(size=50)
    a, b = Cluster("/bin/sh", "root", "host", "-c <tmp>"), Cluster("/bin/sh", "root", "host", "-c <tmp>")
    cache.put("agent-a", "k1", a)
    cache.put("agent-b", "k2", b)
    assert cache.get("agent-b", "k2") is a  # one object per cluster
    errors: list[BaseException] = []

    def hammer(n: int) -> None:
        try:
            for i in range(20_000):
                cache.put("agent", f"{n}-{i}", a)
                cache.get("agent", f"{n}-{i - 25}")
                cache.put_miss("agent", f"m{n}-{i}", None, T0 + i)
                cache.miss("agent", f"m{n}-{i - 3}", T0 + i)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(cache) == 50


def test_unresolvable_processes_are_looked_up_once_per_ttl(gdb: Database) -> None:
    builder = GraphBuilder()
    _update(gdb, builder, T0, exec_(5, NGINX, ["nginx"]))

    def lookups(ts: int) -> int:
        with statements(gdb) as seen:
            _update(gdb, builder, ts, flow(99, NGINX, "10.0.0.1", 80, ts=ts))  # key 99: exec never seen
        return sum(1 for sql, _p in seen if "FROM events" in sql or "ORDER BY graph_nodes.count" in sql)

    assert lookups(T0 + SEC) == 2  # the stored exec, then the known clusters of nginx
    assert lookups(T0 + 2 * SEC) == 0  # remembered: the same guess
    assert lookups(T0 + 70 * SEC) == 2  # after the TTL: looked up again
    # The guess stands in: nginx's known cluster made the edge.
    with gdb.read() as conn:
        n, e = schema.graph_nodes, schema.graph_edges
        src = conn.execute(sa.select(n.c.key).join(e, e.c.src == n.c.id).where(e.c.kind == "connected")).scalar()
    assert src == f"{NGINX}|root|host|"
    assert builder.collector.cache.get("agent-a", key(99)) is None  # a guess is not a resolution


def test_known_clusters_match_the_exe_exactly(gdb: Database) -> None:
    builder = GraphBuilder()
    py, py311 = "/usr/bin/python3", "/usr/bin/python3.11"
    _update(gdb, builder, T0, exec_(5, py, ["python3", "a.py"]), exec_(6, py311, ["python3.11", "b.py"]),
            exec_(7, py.upper(), ["X"]), exec_(8, py, ["python3", "c.py"]), exec_(9, py, ["python3", "c.py"]))
    with gdb.read() as conn:
        found = known_clusters(conn, [py, "/nope"])
    assert list(found) == [py]
    assert [(c.shape, n) for c, n in found[py]] == [("c.py", 2), ("a.py", 1)]


def _update(db: Database, builder: GraphBuilder, ts: int, *events: dict[str, Any]) -> None:
    with db.begin() as conn:
        builder.update(conn, batch("agent-a", "web-1", ts, *[dict(e, ts=ts) for e in events]))


def _node(db: Database, kind: str, node_key: str) -> Any:
    n = schema.graph_nodes
    with db.read() as conn:
        return conn.execute(sa.select(n).where(n.c.kind == kind, n.c.key == node_key)).one()
