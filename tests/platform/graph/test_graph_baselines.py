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
    baseline_fleet_hosts: int = 2


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
    # The same behaviour again on this host: just counted.
    assert run(gdb, builder, "agent-a", after + SEC, child(104, "/usr/bin/sh", ["sh", "-c", "id"], after)) == []
    # On another host that has run nginx for longer than its learning window, it is new there too
    # (another host's 'new' edge makes nothing known), once.
    b = GraphBuilder(Cfg())
    assert run(gdb, b, "agent-b", T0, nginx()) == []  # b's own window for nginx: [T0, T0 + LEARN)
    on_b = run(gdb, b, "agent-b", after + SEC, child(105, "/usr/bin/sh", ["sh", "-c", "id"], after))
    assert [(x.evidence["dst"].split()[0], x.agent_id, x.evidence["clusters"], x.score) for x in on_b] == \
        [("sh", "agent-b", 0, 90.0)]  # rarity counts baselines only: a's 'new' copy makes it no less rare
    assert run(gdb, builder, "agent-b", after + 2 * SEC, child(107, "/usr/bin/sh", ["sh", "-c", "id"], after)) == []
    assert edge_baselines(gdb, "spawned")[("/usr/bin/sh", "agent-b")] == "new"
    # An analyst marks it expected: every host's copy, and a third host (past its own window) later copies that.
    with gdb.begin() as conn:
        assert mark_expected(conn, d.evidence["edge"], "alice") == 2
        assert mark_expected(conn, 999_999, "alice") == 0
    assert run(gdb, builder, "agent-c", T0, nginx()) == []
    again = child(106, "/usr/bin/sh", ["sh", "-c", "id"], after)
    assert run(gdb, builder, "agent-c", after + SEC, again) == []  # the parent: the known nginx cluster
    assert {a: b for (dst, a), b in edge_baselines(gdb, "spawned").items() if dst == "/usr/bin/sh"} == \
        {"agent-a": "expected", "agent-b": "expected", "agent-c": "expected"}


def test_anomalies_under_the_alert_score_stay_new_edges_without_a_detection(gdb: Database) -> None:
    builder = GraphBuilder(QuietCfg())
    assert run(gdb, builder, "agent-a", T0, nginx(), child(101, "/usr/bin/id", ["id"], T0)) == []
    after = T0 + 2 * LEARN
    assert run(gdb, builder, "agent-a", after, child(102, "/usr/bin/sh", ["sh", "-c", "id"], after)) == []  # 90 < 95
    assert edge_baselines(gdb, "spawned")[("/usr/bin/sh", "agent-a")] == "new"


def test_reset_learning(gdb: Database) -> None:
    """A reset reopens learning for the cluster on every host, also where the host's own window
    (from when it started running the cluster) is long over."""
    builder = GraphBuilder(Cfg())
    run(gdb, builder, "agent-a", T0, nginx())
    run(gdb, builder, "agent-b", T0, nginx())
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
    assert run(gdb, builder, "agent-b", later + LEARN // 2, flow(100, NGINX, "10.4.4.4", 25, ts=later)) == []
    assert edge_baselines(gdb, "connected")[("10.4.4.4:25", "agent-b")] == "learned"
    # After the new window: anomalies again.
    found = run(gdb, builder, "agent-a", later + 2 * LEARN, child(111, "/usr/bin/wget", ["wget", "x"], later))
    assert [d.name for d in found] == ["new_child"]
    with gdb.read() as conn:
        (b,) = list_baselines(conn, later + 2 * LEARN, cluster=cluster)
    assert b["reset_by"] == "alice" and b["learning"] is False
    assert b["edges"] == {"learned": 2, "new": 1}  # curl on agent-a, 10.4.4.4:25 on agent-b; wget


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


def test_one_host_cannot_silence_the_fleet(gdb: Database) -> None:
    """A hostile (or first compromised) host reporting an edge does not make it known elsewhere;
    the edge is known on a new host once ``baseline_fleet_hosts`` other hosts learned it."""
    builder = GraphBuilder(Cfg())
    evil = "198.51.100.66"
    run(gdb, builder, "agent-h", T0, nginx())  # nginx's learning window opens fleet-wide
    run(gdb, builder, "agent-r", T0, nginx())
    after = T0 + 2 * LEARN
    hostile = run(gdb, builder, "agent-h", after, flow(100, NGINX, evil, 443, ts=after))
    assert [x.name for x in hostile] == ["new_remote"]
    real = run(gdb, builder, "agent-r", after + SEC, flow(100, NGINX, evil, 443, ts=after))
    assert [(x.name, x.agent_id, x.score) for x in real] == [("new_remote", "agent-r", 75.0)]
    assert run(gdb, builder, "agent-r", after + 2 * SEC, flow(100, NGINX, evil, 443, ts=after)) == []  # once

    # Learned on two hosts (during learning): known on a third; learned on one: still new there.
    common, single = "10.1.1.1", "10.2.2.2"
    redis = "/usr/bin/redis-cli"
    learn = [exec_(60, redis, ["redis-cli"]), flow(60, redis, common, 6379), flow(60, redis, single, 6379)]
    run(gdb, builder, "agent-1", after, *learn)
    run(gdb, builder, "agent-2", after, *learn[:2])
    later = after + 2 * LEARN
    # agent-3 has run redis-cli since T0 (its own window, on its clock, is over; a host that started
    # it now would learn both edges quietly: test_a_host_that_starts_running_a_cluster_later_...).
    run(gdb, builder, "agent-3", T0, exec_(60, redis, ["redis-cli"]))
    found = run(gdb, builder, "agent-3", later, flow(60, redis, common, 6379, ts=later),
                flow(60, redis, single, 6379, ts=later))
    assert [(x.evidence["dst"], x.evidence["clusters"], x.evidence["hosts"]) for x in found] == \
        [(f"{single}:6379", 1, 1)]
    got = edge_baselines(gdb, "connected")
    assert got[("10.1.1.1:6379", "agent-3")] == "learned" and got[("10.2.2.2:6379", "agent-3")] == "new"


def test_fleet_hosts_threshold_is_configurable(gdb: Database) -> None:
    @dataclass(frozen=True)
    class OneHost(Cfg):
        baseline_fleet_hosts: int = 1

    builder = GraphBuilder(OneHost())
    redis = "/usr/bin/redis-cli"
    run(gdb, builder, "agent-1", T0, exec_(60, redis, ["redis-cli"]), flow(60, redis, "10.2.2.2", 6379))
    later = T0 + 2 * LEARN
    run(gdb, builder, "agent-2", T0, exec_(60, redis, ["redis-cli"]))  # agent-2's own window: [T0, T0 + LEARN)
    assert run(gdb, builder, "agent-2", later, flow(60, redis, "10.2.2.2", 6379, ts=later)) == []
    assert run(gdb, builder, "agent-3", T0, exec_(60, redis, ["redis-cli"])) == []
    assert [d.name for d in run(gdb, builder, "agent-3", later, flow(60, redis, "10.3.3.3", 6379, ts=later))] == \
        ["new_remote"]  # learned nowhere: the threshold of one host still needs one


def test_a_host_that_starts_running_a_cluster_later_learns_it_quietly(gdb: Database) -> None:
    """Learning windows are per (cluster, host): nginx deployed on host B a month after host A learns
    there during B's own window (no flood of anomalies), then B's new edges are anomalies."""
    builder = GraphBuilder(Cfg())
    run(gdb, builder, "agent-a", T0, nginx(), flow(100, NGINX, "10.0.0.1", 5432), listen(100, NGINX, 80))
    month = T0 + 30 * 86400 * SEC
    b_edges = [exec_(100, NGINX, ["nginx: worker process"], parent=(1, INIT), ts=month),
               flow(100, NGINX, "10.0.0.1", 5432, ts=month), listen(100, NGINX, 80, ts=month),
               flow(100, NGINX, "10.0.0.2", 6379, ts=month), write(100, NGINX, "/var/cache/nginx/x", ts=month),
               child(101, "/usr/bin/id", ["id"], month)]
    assert run(gdb, builder, "agent-b", month, *b_edges) == []  # A's (fleet) window closed a month ago
    assert run(gdb, builder, "agent-b", month + LEARN // 2,
               flow(100, NGINX, "10.0.0.3", 443, ts=month + LEARN // 2)) == []  # still within B's window
    got = edge_baselines(gdb, "connected")
    assert {k: v for k, v in got.items() if k[1] == "agent-b"} == {
        ("10.0.0.1:5432", "agent-b"): "learned", ("10.0.0.2:6379", "agent-b"): "learned",
        ("10.0.0.3:443", "agent-b"): "learned"}
    with gdb.read() as conn:
        cluster = conn.execute(sa.select(schema.graph_nodes.c.id).where(
            schema.graph_nodes.c.key.startswith(NGINX + "|"))).scalar_one()
        (base,) = list_baselines(conn, month, cluster=cluster)
    assert base["learning"] is False  # the cluster-wide window: only the reset mechanism now
    # B's window over: a new edge there is an anomaly, once; what B learned stays quiet.
    late = month + 2 * LEARN
    found = run(gdb, builder, "agent-b", late, flow(100, NGINX, "203.0.113.5", 4444, ts=late),
                flow(100, NGINX, "10.0.0.2", 6379, ts=late))
    assert [(d.name, d.agent_id, d.evidence["dst"]) for d in found] == [("new_remote", "agent-b", "203.0.113.5:4444")]
    assert run(gdb, builder, "agent-b", late + SEC, flow(100, NGINX, "203.0.113.5", 4444, ts=late + SEC)) == []

    # Host C's nginx started before its agent (no exec seen): its first activity opens C's window,
    # recorded as a runs edge with no execs; the host's clock may be off (two days behind here):
    # the window is measured on the host's own clock.
    skew = 2 * 86400 * SEC
    c_start = month + 10 * SEC
    assert run(gdb, builder, "agent-c", c_start, flow(500, NGINX, "10.0.0.9", 53, ts=c_start - skew)) == []
    n, e = schema.graph_nodes, schema.graph_edges
    with gdb.read() as conn:
        runs = conn.execute(sa.select(e.c.count, e.c.first_seen).join(n, n.c.id == e.c.dst).where(
            e.c.agent_id == "agent-c", e.c.kind == "runs", n.c.kind == "cluster")).all()
    assert [tuple(r) for r in runs] == [(0, c_start - skew)]
    assert run(gdb, builder, "agent-c", c_start + LEARN // 2,
               flow(500, NGINX, "10.0.0.8", 53, ts=c_start - skew + LEARN // 2)) == []
    found = run(gdb, builder, "agent-c", c_start + 2 * LEARN,
                flow(500, NGINX, "10.0.0.7", 53, ts=c_start - skew + 2 * LEARN))
    assert [(d.name, d.agent_id) for d in found] == [("new_remote", "agent-c")]


def test_a_hostile_first_host_cannot_silence_a_second_host(gdb: Database) -> None:
    """The hostile host reports the evil edge during its own learning (so it is 'learned' there):
    one learned host is fewer than baseline_fleet_hosts, and the second host still raises it. A
    second hostile enrolment later (its own window) makes two; that is the configured threshold."""
    builder = GraphBuilder(Cfg())
    evil = "198.51.100.66"
    run(gdb, builder, "agent-h", T0, nginx(), flow(100, NGINX, evil, 443))
    assert edge_baselines(gdb, "connected")[(f"{evil}:443", "agent-h")] == "learned"
    run(gdb, builder, "agent-r", T0, nginx())
    after = T0 + 2 * LEARN
    found = run(gdb, builder, "agent-r", after, flow(100, NGINX, evil, 443, ts=after))
    assert [(x.name, x.agent_id, x.evidence["hosts"]) for x in found] == [("new_remote", "agent-r", 1)]
    # Joining later, a host learns the edge in its own window; now learned on two hosts.
    later = after + 10 * LEARN
    run(gdb, builder, "agent-h2", later, exec_(100, NGINX, ["nginx: worker process"], parent=(1, INIT), ts=later),
        flow(100, NGINX, evil, 443, ts=later))
    run(gdb, builder, "agent-s", T0, nginx())
    assert run(gdb, builder, "agent-s", later + SEC, flow(100, NGINX, evil, 443, ts=later)) == []
