"""Reading the graph: nodes, a node's neighbourhood (fleet-wide or one host), a process's cluster."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from heron.platform.graph.clusters import best_guess, cluster_of_exec, known_clusters, stored_execs
from heron.platform.graph.keys import image_of
from heron.platform.graph.store import chunks
from heron.platform.storage import schema

_BASELINE_RANK = {"new": 0, "learned": 1, "expected": 2}  # fleet-wide view shows the least settled


def node_json(row: Any) -> dict[str, Any]:
    try:
        attrs = json.loads(row.attrs)
    except ValueError:
        attrs = {}
    return {"id": int(row.id), "kind": row.kind, "key": row.key, "label": row.label, "attrs": attrs,
            "first_seen": row.first_seen, "last_seen": row.last_seen, "count": int(row.count)}


def host_agents(conn: Connection, host: str) -> list[str]:
    """Agent ids of a host given by hostname or agent id."""
    n = schema.graph_nodes
    rows = conn.execute(sa.select(n.c.key).where(n.c.kind == "host", sa.or_(n.c.key == host, n.c.label == host)))
    return sorted(r[0] for r in rows)


def list_nodes(conn: Connection, kind: str | None = None, q: str | None = None, host: str | None = None,
               limit: int = 100) -> list[dict[str, Any]]:
    n, e = schema.graph_nodes, schema.graph_edges
    stmt = sa.select(n)
    if kind:
        stmt = stmt.where(n.c.kind == kind)
    if q:
        stmt = stmt.where(sa.or_(n.c.label.icontains(q, autoescape=True), n.c.key.icontains(q, autoescape=True)))
    if host is not None:
        agents = host_agents(conn, host)
        touching = sa.union(sa.select(e.c.src).where(e.c.agent_id.in_(agents)),
                            sa.select(e.c.dst).where(e.c.agent_id.in_(agents)))
        stmt = stmt.where(sa.or_(n.c.id.in_(touching), sa.and_(n.c.kind == "host", n.c.key.in_(agents))))
    rows = conn.execute(stmt.order_by(n.c.last_seen.desc(), n.c.id).limit(limit))
    return [node_json(r) for r in rows]


def neighbourhood(conn: Connection, node_id: int, host: str | None = None, limit: int = 200) -> dict[str, Any]:
    """The node, its edges (both directions, most recent first) and the nodes at their other ends.

    Edges are aggregated over agents (``hosts`` lists the hostnames that have the edge; the id is
    the lowest of its per-host rows, and any of them works for ``mark_expected``) unless ``host``
    restricts them to one host's agents. Empty nodes/edges when the node does not exist."""
    n, e = schema.graph_nodes, schema.graph_edges
    center = conn.execute(sa.select(n).where(n.c.id == node_id)).first()
    if center is None:
        return {"center": node_id, "nodes": [], "edges": []}
    touches = sa.or_(e.c.src == node_id, e.c.dst == node_id)
    agents = host_agents(conn, host) if host is not None else None
    if agents is not None:
        touches = sa.and_(touches, e.c.agent_id.in_(agents))
    groups = conn.execute(
        sa.select(e.c.src, e.c.dst, e.c.kind, sa.func.min(e.c.id), sa.func.min(e.c.first_seen),
                  sa.func.max(e.c.last_seen), sa.func.sum(e.c.count))
        .where(touches).group_by(e.c.src, e.c.dst, e.c.kind)
        .order_by(sa.func.max(e.c.last_seen).desc(), sa.func.min(e.c.id)).limit(limit)).all()
    per_edge: dict[tuple[int, int, str], list[tuple[str, str]]] = {}
    keys = [(int(g[0]), int(g[1]), g[2]) for g in groups]
    for part in chunks(keys):  # indexed IN lists, cross product dropped here (a row-value IN scans on SQLite)
        wanted = set(part)
        stmt = sa.select(e.c.src, e.c.dst, e.c.kind, e.c.agent_id, e.c.baseline).where(
            e.c.src.in_(sorted({k[0] for k in part})), e.c.dst.in_(sorted({k[1] for k in part})),
            e.c.kind.in_(sorted({k[2] for k in part})))
        if agents is not None:
            stmt = stmt.where(e.c.agent_id.in_(agents))
        for src, dst, kind, agent_id, baseline in conn.execute(stmt):
            if (int(src), int(dst), kind) in wanted:
                per_edge.setdefault((int(src), int(dst), kind), []).append((agent_id, baseline))
    all_agents = sorted({a for rows in per_edge.values() for a, _b in rows})
    hostnames = _hostnames(conn, all_agents)
    node_ids = {node_id} | {k[0] for k in keys} | {k[1] for k in keys}
    nodes = []
    for part in chunks(sorted(node_ids)):
        nodes += [node_json(r) for r in conn.execute(sa.select(n).where(n.c.id.in_(list(part))))]
    edges = []
    for (src, dst, kind), g in zip(keys, groups, strict=True):
        rows = per_edge.get((src, dst, kind), [])
        baseline = min((b for _a, b in rows), key=lambda b: _BASELINE_RANK.get(b, 0), default="learned")
        edges.append({"id": int(g[3]), "src": src, "dst": dst, "kind": kind,
                      "hosts": sorted({hostnames.get(a, a) for a, _b in rows}),
                      "first_seen": int(g[4]), "last_seen": int(g[5]), "count": int(g[6] or 0), "baseline": baseline})
    nodes.sort(key=lambda x: (x["id"] != node_id, x["kind"], x["label"]))
    return {"center": node_id, "nodes": nodes, "edges": edges}


def _hostnames(conn: Connection, agent_ids: list[str]) -> dict[str, str]:
    n = schema.graph_nodes
    out: dict[str, str] = {}
    for part in chunks(agent_ids):
        rows = conn.execute(sa.select(n.c.key, n.c.label).where(n.c.kind == "host", n.c.key.in_(list(part))))
        for key, label in rows:
            out[key] = label
    return out


def find_cluster(conn: Connection, agent_id: str, process: dict[str, Any]) -> int | None:
    """The cluster node id of a process (an exec's Process or any event's ProcessRef), or None."""
    key = process.get("key")
    if isinstance(process.get("argv"), list):
        cluster = cluster_of_exec(process)
    elif isinstance(key, str) and (found := stored_execs(conn, agent_id, [key])):
        cluster = found[key]
    elif isinstance(process.get("exe"), str) and process["exe"]:
        exe = process["exe"]
        user = process.get("user") if isinstance(process.get("user"), str) else None
        cluster = best_guess(known_clusters(conn, [exe]).get(exe, []), exe, user, image_of(process))
    else:
        return None
    n = schema.graph_nodes
    row = conn.execute(sa.select(n.c.id).where(n.c.kind == "cluster", n.c.key == cluster.key)).first()
    return int(row[0]) if row is not None else None
