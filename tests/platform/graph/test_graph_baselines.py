"""Baselines on real SQLite and PostgreSQL: learning, anomalies once per new edge, fleet-wide, reset, expected."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from graph_events import SEC, T0, batch, exec_, flow, listen, write

from heron.platform.analysis import Detection
from heron.platform.graph import GraphBuilder, list_baselines, mark_expected, neighbourhood, reset_learning
from heron.platform.storage import schema
from heron.platform.storage.db import Database

NGINX = "/usr/sbin/nginx"
INIT = "/usr/lib/systemd/systemd"
LEARN = SEC  # learning_s = 1.0


@dataclass(frozen=True)
class Cfg:
    baseline_learning_s: float = 1.0
    anomaly_alert_min_score: float = 0.0


@dataclass(frozen=True)
class QuietCfg(Cfg):
    anomaly_alert_min_score: float = 95.0


def run(db: Database, builder: GraphBuilder, agent: str, received: int, *events: dict[str, object]) -> list[Detection]:
    with db.begin() as conn:
        return builder.update(conn, batch(agent, agent.replace("agent", "host"), received, *events))


def nginx(pid: int = 100) -> dict[str, object]:
    return exec_(pid, NGINX, ["nginx: worker process"], parent=(1, INIT))


def child(pid: int, exe: str, argv: list[str], ts: int) -> dict[str, object]:
    return exec_(pid, exe, argv, parent=(100, NGINX), ts=ts)


def edge_baselines(db: Database, kind: str) -> dict[tuple[str, str], str]:
    """(dst label, agent) -> baseline of edges of one kind."""
    n, e = schema.graph_nodes, schema.graph_edges
    with db.read() as conn:
        labels = {r.id: r.key for r in conn.execute(sa.select(n))}
        return {(labels[r.dst].split("|")[0], r.agent_id): r.baseline
                for r in conn.execute(sa.select(e).where(e.c.kind == kind))}


def test_new_child_after_learning(gdb: Database) -> None:
    builder = GraphBuilder(Cfg())
    assert run(gdb, builder, "agent-a", T0, nginx(), child(101, "/usr/bin/id", ["id"], T0)) == []
    assert edge_baselines(gdb, "spawned")[("/usr/bin/id", "agent-a")] == "learned"
    after = T0 + 2 * LEARN
    found = run(gdb, builder, "agent-a", after, child(102, "/usr/bin/sh", ["sh", "-c", "id"], after),
                child(103, "/usr/bin/id", ["id"], after))  # id: learned, not new
    assert len(found) == 1
    d = found[0]
    assert (d.kind, d.name, d.agent_id, d.hostname, d.ts) == ("anomaly", "new_child", "agent-a", "host-a", after)
    assert d.severity == "high" and d.score == 90.0  # unseen anywhere: base 50 + rarity 40
    assert d.process is not None and d.process["exe"] == "/usr/bin/sh"
    assert d.evidence["kind"] == "spawned" and d.evidence["rarity"] == 1.0
    assert d.evidence["src"].startswith("nginx") and d.evidence["dst"].startswith("sh")
    assert "nginx" in d.summary and "host-a" in d.summary and "new child" in d.summary
    with gdb.read() as conn:
        hood = neighbourhood(conn, d.cluster or 0)
    assert any(e["id"] == d.evidence["edge"] and e["baseline"] == "new" for e in hood["edges"])
    # The same behaviour again, on this host and on another host of the fleet: nothing new.
    assert run(gdb, builder, "agent-a", after + SEC, child(104, "/usr/bin/sh", ["sh", "-c", "id"], after)) == []
    assert run(gdb, GraphBuilder(Cfg()), "agent-b", after + SEC, nginx(),
               child(105, "/usr/bin/sh", ["sh", "-c", "id"], after)) == []
    assert edge_baselines(gdb, "spawned")[("/usr/bin/sh", "agent-b")] == "new"
    # An analyst marks it expected: every host's copy, and a third host later copies that.
    with gdb.begin() as conn:
        assert mark_expected(conn, d.evidence["edge"], "alice") == 2
        assert mark_expected(conn, 999_999, "alice") == 0
    again = child(106, "/usr/bin/sh", ["sh", "-c", "id"], after)
    assert run(gdb, builder, "agent-c", after + SEC, nginx(), again) == []
    assert {a: b for (dst, a), b in edge_baselines(gdb, "spawned").items() if dst == "/usr/bin/sh"} == \
        {"agent-a": "expected", "agent-b": "expected", "agent-c": "expected"}


def test_anomalies_under_the_alert_score_stay_new_edges_without_a_detection(gdb: Database) -> None:
    builder = GraphBuilder(QuietCfg())
    assert run(gdb, builder, "agent-a", T0, nginx(), child(101, "/usr/bin/id", ["id"], T0)) == []
    after = T0 + 2 * LEARN
    assert run(gdb, builder, "agent-a", after, child(102, "/usr/bin/sh", ["sh", "-c", "id"], after)) == []  # 90 < 95
    assert edge_baselines(gdb, "spawned")[("/usr/bin/sh", "agent-a")] == "new"


def test_reset_learning(gdb: Database) -> None:
    builder = GraphBuilder(Cfg())
    run(gdb, builder, "agent-a", T0, nginx())
    with gdb.read() as conn:
        cluster = conn.execute(sa.select(schema.graph_nodes.c.id).where(
            schema.graph_nodes.c.key.startswith(NGINX + "|"))).scalar_one()
    later = T0 + 5 * LEARN
    with gdb.begin() as conn:
        row = reset_learning(conn, cluster, "alice", later, learning_s=1.0)
        assert row is not None and row["learning_until"] == later + LEARN
        assert reset_learning(conn, 999_999, "alice", later) is None
    assert run(gdb, builder, "agent-a", later + LEARN // 2, child(110, "/usr/bin/curl", ["curl", "x"], later)) == []
    assert edge_baselines(gdb, "spawned")[("/usr/bin/curl", "agent-a")] == "learned"
    # After the new window: anomalies again.
    found = run(gdb, builder, "agent-a", later + 2 * LEARN, child(111, "/usr/bin/wget", ["wget", "x"], later))
    assert [d.name for d in found] == ["new_child"]
    with gdb.read() as conn:
        (b,) = list_baselines(conn, later + 2 * LEARN, cluster=cluster)
    assert b["reset_by"] == "alice" and b["learning"] is False
    assert b["edges"] == {"learned": 1, "new": 1}


def test_other_kinds_and_rarity(gdb: Database) -> None:
    builder = GraphBuilder(Cfg())
    # During learning: a postgres client cluster connects to db:5432; nginx learns little.
    psql = exec_(50, "/usr/bin/psql", ["psql", "-h", "db"])
    run(gdb, builder, "agent-a", T0, nginx(), psql, flow(50, "/usr/bin/psql", "10.0.0.9", 5432, domain="db.internal"))
    after = T0 + 2 * LEARN
    found = run(gdb, builder, "agent-a", after,
                flow(100, NGINX, "10.0.0.9", 5432, domain="db.internal", ts=after),  # psql goes there too
                flow(100, NGINX, "203.0.113.7", 4444, ts=after),  # nobody goes there
                listen(100, NGINX, 8443, ts=after),
                write(100, NGINX, "/etc/cron.d/job", ts=after),
                write(100, NGINX, "/etc/cron.d/other", ts=after))  # same class: one anomaly
    by = {(d.name, d.evidence["dst"]): d for d in found}
    assert set(by) == {("new_remote", "db.internal:5432"), ("new_remote", "203.0.113.7:4444"),
                       ("new_listen", "listen:tcp:8443"), ("new_file_class", "/etc/cron.d/*")}
    common, rare = by[("new_remote", "db.internal:5432")], by[("new_remote", "203.0.113.7:4444")]
    assert common.evidence["clusters"] == 1 and common.evidence["rarity"] == 0.5
    assert rare.score > common.score
    assert all(0 <= d.score <= 100 for d in found)
    assert run(gdb, builder, "agent-a", after + SEC, flow(100, NGINX, "203.0.113.7", 4444, ts=after)) == []
