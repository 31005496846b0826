"""GraphBuilder on real SQLite and PostgreSQL: nodes, edges, process resolution, upsert counts."""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa
from graph_events import SEC, T0, batch, dns, exec_, flow, key, listen, ref, uses, write

from heron.platform.api.context import PlatformConfig
from heron.platform.graph import GraphBuilder, find_cluster, list_nodes, neighbourhood
from heron.platform.storage import schema
from heron.platform.storage.db import Database

NGINX = "/usr/sbin/nginx"
INIT = "/usr/lib/systemd/systemd"


def nodes(db: Database) -> dict[tuple[str, str], Any]:
    with db.read() as conn:
        return {(r.kind, r.key): r for r in conn.execute(sa.select(schema.graph_nodes))}


def edges(db: Database) -> set[tuple[str, str, str, str]]:
    """(src key, kind, dst key, agent) of every edge."""
    n = schema.graph_nodes
    with db.read() as conn:
        names = {r.id: r.key for r in conn.execute(sa.select(n))}
        return {(names[r.src], r.kind, names[r.dst], r.agent_id) for r in conn.execute(sa.select(schema.graph_edges))}


def server_batch(received: int) -> list[dict[str, Any]]:
    return [
        exec_(1, INIT, ["/sbin/init"]),
        exec_(100, NGINX, ["nginx: master process /usr/sbin/nginx -g daemon off;"], parent=(1, INIT)),
        flow(100, NGINX, "93.184.216.34", 443, domain="example.com"),
        flow(100, NGINX, "127.0.0.1", 5432),
        listen(100, NGINX, 80),
        dns(100, NGINX, "example.com"),
        write(100, NGINX, "/var/log/nginx/access.log"),
        uses("pkg:deb/debian/nginx@1.22.1-9?arch=amd64", [ref(100, NGINX)]),
    ]


def test_batch_becomes_nodes_and_edges(gdb: Database) -> None:
    builder = GraphBuilder(PlatformConfig())
    with gdb.begin() as conn:
        assert builder.update(conn, batch("agent-a", "web-1", T0, *server_batch(T0))) == []
    nginx = f"{NGINX}|root|host|nginx: master process /usr/sbin/nginx -g daemon off;"
    found = nodes(gdb)
    assert ("host", "agent-a") in found and found[("host", "agent-a")].label == "web-1"
    assert {k for k, _ in found} == {"host", "cluster", "user", "endpoint", "fileclass", "package"}
    assert found[("cluster", nginx)].count == 1
    assert json.loads(found[("cluster", nginx)].attrs)["exe"] == NGINX
    init = "/usr/lib/systemd/systemd|root|host|"
    assert edges(gdb) == {
        ("agent-a", "runs", init, "agent-a"), ("agent-a", "runs", nginx, "agent-a"),
        ("root", "ran", init, "agent-a"), ("root", "ran", nginx, "agent-a"),
        (init, "spawned", nginx, "agent-a"),
        (nginx, "connected", "example.com:443", "agent-a"), (nginx, "connected", "loopback:5432", "agent-a"),
        (nginx, "listened", "listen:tcp:80", "agent-a"), (nginx, "resolved", "example.com", "agent-a"),
        (nginx, "wrote", "/var/log/nginx/*", "agent-a"), (nginx, "uses", "pkg:deb/debian/nginx", "agent-a"),
    }
    # The same batch again: no new rows, edge counts add up; an existing node is not written within
    # REFRESH_NS of its last_seen (hot rows), its count waits in memory until the next refresh.
    later = [dict(e, ts=T0 + SEC) for e in server_batch(T0)]
    with gdb.begin() as conn:
        builder.update(conn, batch("agent-a", "web-1", T0 + SEC, *later))
    again = nodes(gdb)
    assert again.keys() == found.keys()
    assert again[("cluster", nginx)].count == 1 and again[("cluster", nginx)].last_seen == T0
    minute = T0 + 61 * SEC
    with gdb.begin() as conn:
        builder.update(conn, batch("agent-a", "web-1", minute, *[dict(e, ts=minute) for e in server_batch(T0)]))
    again = nodes(gdb)
    assert again[("cluster", nginx)].count == 3 and again[("cluster", nginx)].last_seen == minute
    assert again[("cluster", nginx)].first_seen == T0
    assert len(edges(gdb)) == 11
    with gdb.read() as conn:
        counts = {r.kind: r._mapping["count"] for r in conn.execute(sa.select(schema.graph_edges))}
        assert counts["spawned"] == 3 and counts["listened"] == 3
        center = found[("cluster", nginx)].id
        hood = neighbourhood(conn, center)
        assert hood["center"] == center and len(hood["edges"]) == 9
        assert {e["kind"] for e in hood["edges"]} == {"runs", "ran", "spawned", "connected", "listened", "resolved",
                                                      "wrote", "uses"}
        assert all(e["hosts"] == ["web-1"] and e["baseline"] == "learned" for e in hood["edges"])
        assert {n["id"] for n in hood["nodes"]} >= {e["dst"] for e in hood["edges"]}
        assert neighbourhood(conn, center, host="web-2")["edges"] == []
        assert neighbourhood(conn, 999_999) == {"center": 999_999, "nodes": [], "edges": []}
        assert [n["key"] for n in list_nodes(conn, kind="endpoint", q="EXAMPLE")] in (
            ["example.com:443", "example.com"], ["example.com", "example.com:443"])
        assert {n["kind"] for n in list_nodes(conn, host="web-1")} == {"host", "cluster", "user", "endpoint",
                                                                      "fileclass", "package"}
        assert list_nodes(conn, host="nowhere") == []
        # No stored exec of that key: the most frequent cluster of the exe stands in.
        assert find_cluster(conn, "agent-a", {"key": key(100), "exe": NGINX, "pid": 100}) == center
        assert find_cluster(conn, "agent-a", {"exe": NGINX, "user": "root"}) == center
        assert find_cluster(conn, "agent-a", {"exe": NGINX, "argv": ["nginx", "-t"]}) is None  # never seen
        assert find_cluster(conn, "agent-a", {"exe": "/nope"}) is None


def test_parent_resolved_across_batches_and_servers(gdb: Database) -> None:
    """The parent's exec is in an earlier batch: this server's cache finds it; another server (empty
    cache) finds the stored exec event; without either, the parent's most frequent cluster is used."""
    parent = exec_(200, "/usr/bin/bash", ["bash", "/opt/deploy.sh"], user="deploy")
    with gdb.begin() as conn:
        GraphBuilder().update(conn, batch("agent-a", "web-1", T0, parent))
        conn.execute(sa.insert(schema.events).values(agent_id="agent-a", hostname="web-1", type="process.exec",
                                                     ts=T0, key=key(200), pid=200, exe="/usr/bin/bash",
                                                     data=json.dumps(parent)))
    bash = "/usr/bin/bash|deploy|host|/opt/deploy.sh"
    for n, builder in enumerate((GraphBuilder(), GraphBuilder())):
        child = exec_(300 + n, "/usr/bin/rsync", ["rsync", "-a", "src", "dst"], parent=(200, "/usr/bin/bash"),
                      user="deploy")
        with gdb.begin() as conn:
            builder.update(conn, batch("agent-a", "web-1", T0 + SEC, child))
    assert (bash, "spawned", "/usr/bin/rsync|deploy|host|-a src dst", "agent-a") in edges(gdb)
    # Unknown parent key: the most frequent bash cluster of that user stands in.
    orphan = exec_(400, "/usr/bin/tar", ["tar", "xf", "a.tar"], parent=(399, "/usr/bin/bash"), user="deploy")
    with gdb.begin() as conn:
        GraphBuilder().update(conn, batch("agent-a", "web-1", T0 + SEC, orphan))
    assert (bash, "spawned", "/usr/bin/tar|deploy|host|xf a.tar", "agent-a") in edges(gdb)
    with gdb.read() as conn:
        assert find_cluster(conn, "agent-a", {"key": key(200), "exe": "/usr/bin/bash"}) == \
            nodes(gdb)[("cluster", bash)].id


def test_containers(gdb: Database) -> None:
    cid = "c0ffee" * 10 + "abcd"
    with gdb.begin() as conn:
        GraphBuilder().update(conn, batch("agent-a", "web-1", T0, exec_(5, "/usr/bin/redis-server",
                                                                         ["redis-server", "*:6379"], container_id=cid)))
    found = edges(gdb)
    redis = "/usr/bin/redis-server|root|container|*:<n>"
    assert {("agent-a", "runs", cid, "agent-a"), (cid, "runs", redis, "agent-a")} <= found
    assert nodes(gdb)[("container", cid)].label == cid[:12]


def test_thousand_event_batch_cost(gdb: Database) -> None:
    """Per-batch cost of a 1,000-event batch of mixed events (printed; bounded loosely here)."""
    builder = GraphBuilder()

    def events(round_: int) -> list[dict[str, Any]]:
        out = []
        for i in range(250):
            pid = 1000 + round_ * 1000 + i
            exe = f"/usr/bin/tool{i % 40}"
            out.append(exec_(pid, exe, [exe, "--run", str(i)], parent=(1, "/usr/lib/systemd/systemd")))
            out.append(flow(pid, exe, f"10.0.{i % 7}.{i % 50}", 443 + i % 3))
            out.append(dns(pid, exe, f"svc{i % 30}.example.com"))
            out.append(write(pid, exe, f"/var/lib/tool{i % 20}/state.{i}"))
        return out

    timings = []
    for round_ in range(4):
        evs = events(round_)
        assert len(evs) == 1000
        start = time.perf_counter()
        with gdb.begin() as conn:
            builder.update(conn, batch("agent-a", "web-1", T0 + round_ * SEC, *evs))
        timings.append(time.perf_counter() - start)
    print(f"\n{gdb.dialect}: 1000-event batch: first {timings[0] * 1000:.0f} ms, "
          f"then {min(timings[1:]) * 1000:.0f}-{max(timings[1:]) * 1000:.0f} ms")
    assert max(timings[1:]) < 2.0
