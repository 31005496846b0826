"""Per-cluster baselines: a learning window per (cluster, host), then new behaviour is an anomaly
scored by rarity.

A cluster learns on a host for ``learning_s`` from the ``first_seen`` of that host's ``runs`` edge
(host -> cluster), i.e. on the host's own clock: an edge whose first event in the batch is earlier
than that plus ``learning_s`` is ``learned`` (clock skew between agent and server cancels out). The
cluster-wide ``baselines`` row (from the cluster's first sighting anywhere, server time) is the
analyst's reset: while it is open the cluster learns on every host. After both windows an edge of
an anomaly kind (spawned, connected, listened, wrote) new to a host is ``new`` and raises one
Detection for that host, unless an analyst marked it expected or ``fleet_hosts`` other hosts have it
learned. ``mark_expected`` folds an edge into the baseline fleet-wide; ``reset_learning`` opens a
new cluster-wide window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from heron.platform.graph.store import EdgeKey, chunks, upsert
from heron.platform.storage import schema

# edge kind -> anomaly name, base score (before rarity)
ANOMALY_KINDS: dict[str, tuple[str, float]] = {
    "spawned": ("new_child", 50.0),
    "listened": ("new_listen", 45.0),
    "wrote": ("new_file_class", 40.0),
    "connected": ("new_remote", 35.0),
}
RARITY_WEIGHT = 40.0  # score added for a destination no other cluster reaches
NS = 1_000_000_000
BASELINED = ("learned", "expected")


@dataclass(frozen=True, slots=True)
class Window:
    since: int
    until: int

    def learning(self, now: int) -> bool:
        return now < self.until


def windows(conn: Connection, clusters: set[int], now: int, learning_s: float) -> dict[int, Window]:
    """Learning windows of these clusters; a cluster without one starts learning now."""
    t = schema.baselines
    found: dict[int, Window] = {}
    for part in chunks(sorted(clusters)):
        for cid, since, until in conn.execute(sa.select(t.c.cluster, t.c.learning_since, t.c.learning_until)
                                              .where(t.c.cluster.in_(list(part)))):
            found[int(cid)] = Window(int(since), int(until))
    missing = sorted(clusters - found.keys())
    if missing:
        until = now + int(learning_s * NS)
        rows = [{"cluster": cid, "learning_since": now, "learning_until": until} for cid in missing]
        for part in chunks(rows):
            conn.execute(upsert(conn, t).values(list(part)).on_conflict_do_nothing(index_elements=[t.c.cluster]))
        for cid in missing:
            found[cid] = Window(now, until)
    return found


def rarity(conn: Connection, targets: set[tuple[int, str]]) -> dict[tuple[int, str], tuple[int, int]]:
    """(dst, kind) -> (clusters, hosts) that have such an edge in their baseline (learned or expected;
    another host's unvetted 'new' edge makes nothing common), before this batch's inserts.
    Filters on ``dst IN (..) AND kind IN (..)`` (index graph_edges_dst) and drops the cross product."""
    t = schema.graph_edges
    out: dict[tuple[int, str], tuple[int, int]] = {}
    for part in chunks(sorted(targets)):
        wanted = set(part)
        stmt = (sa.select(t.c.dst, t.c.kind, sa.func.count(sa.distinct(t.c.src)),
                          sa.func.count(sa.distinct(t.c.agent_id)))
                .where(t.c.dst.in_(sorted({d for d, _k in part})), t.c.kind.in_(sorted({k for _d, k in part})),
                       t.c.baseline.in_(BASELINED))
                .group_by(t.c.dst, t.c.kind))
        for dst, kind, n_clusters, n_hosts in conn.execute(stmt):
            if (int(dst), kind) in wanted:
                out[(int(dst), kind)] = (int(n_clusters), int(n_hosts))
    return out


def score(kind: str, n_clusters: int) -> tuple[float, str, float]:
    """(score 0-100, severity, rarity 0-1) of a new edge whose destination ``n_clusters`` other
    clusters already reach: unseen anywhere is rarest."""
    base = ANOMALY_KINDS[kind][1]
    rare = 1.0 / (1 + n_clusters)
    value = min(100.0, round(base + RARITY_WEIGHT * rare, 1))
    severity = "high" if value >= 85 else "medium" if value >= 60 else "low"
    return value, severity, rare


def learning(edge_first: int, host_since: int | None, window: Window | None, now: int, learning_s: float) -> bool:
    """Whether a cluster's edge first made at ``edge_first`` (event time) is made while the cluster
    learns on this host: within ``learning_s`` of ``host_since`` (first_seen of the host's runs edge
    to the cluster, event time: the same clock), or while the cluster-wide window (first sighting
    or an analyst's reset, server time) is open."""
    if window is None or window.learning(now):
        return True
    return host_since is None or edge_first < host_since + int(learning_s * NS)


def classify(edge: EdgeKey, fleet: dict[str, int], learns: bool, fleet_hosts: int = 2) -> tuple[str, bool]:
    """(baseline, is_anomaly) of an edge this agent does not have yet; ``learns``: made while its
    cluster learns on this host (``learning``); ``fleet`` is the other hosts' copies ({baseline:
    hosts}). Known: an analyst marked it expected, or ``fleet_hosts`` other hosts learned it (one
    hostile or compromised host cannot make an edge silent fleet-wide)."""
    kind = edge[2]
    if kind not in ANOMALY_KINDS or learns:
        return "learned", False
    if fleet.get("expected", 0) > 0:
        return "expected", False
    if fleet.get("learned", 0) >= fleet_hosts:
        return "learned", False
    return "new", True


def reset_learning(conn: Connection, cluster_id: int, actor: str, now: int,
                   learning_s: float = 86400.0) -> dict[str, Any] | None:
    """Restart a cluster's learning window at ``now`` on every host (a host's own window, from when
    it started running the cluster, ends no earlier); None when no such cluster. Edges it already
    has keep their baseline; new ones during the window are learned."""
    nodes = schema.graph_nodes
    exists = conn.execute(sa.select(nodes.c.id).where(nodes.c.id == cluster_id, nodes.c.kind == "cluster")).first()
    if exists is None:
        return None
    t = schema.baselines
    row = {"cluster": cluster_id, "learning_since": now, "learning_until": now + int(learning_s * NS),
           "reset_at": now, "reset_by": actor}
    stmt = upsert(conn, t).values(row)
    conn.execute(stmt.on_conflict_do_update(index_elements=[t.c.cluster], set_={
        k: stmt.excluded[k] for k in ("learning_since", "learning_until", "reset_at", "reset_by")}))
    return row


def mark_expected(conn: Connection, edge_id: int, actor: str) -> int:
    """Fold an edge into its cluster's baseline fleet-wide (every host's copy of it): the same
    behaviour raises nothing from then on. Returns the rows changed (0: no such edge)."""
    t = schema.graph_edges
    edge = conn.execute(sa.select(t.c.src, t.c.dst, t.c.kind).where(t.c.id == edge_id)).first()
    if edge is None:
        return 0
    result = conn.execute(sa.update(t).where(t.c.src == edge.src, t.c.dst == edge.dst, t.c.kind == edge.kind)
                          .values(baseline="expected"))
    return int(result.rowcount)


def list_baselines(conn: Connection, now: int, cluster: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
    """Baselines with their cluster's label and edge counts by baseline state."""
    b, n, e = schema.baselines, schema.graph_nodes, schema.graph_edges
    stmt = (sa.select(b, n.c.label, n.c.key).join(n, n.c.id == b.c.cluster)
            .order_by(b.c.learning_until.desc(), b.c.cluster).limit(limit))
    if cluster is not None:
        stmt = stmt.where(b.c.cluster == cluster)
    rows = conn.execute(stmt).mappings().all()
    counts: dict[int, dict[str, int]] = {}
    ids = [int(r["cluster"]) for r in rows]
    for part in chunks(ids):
        for src, baseline, count in conn.execute(
                sa.select(e.c.src, e.c.baseline, sa.func.count()).where(e.c.src.in_(list(part)))
                .group_by(e.c.src, e.c.baseline)):
            counts.setdefault(int(src), {})[baseline] = int(count)
    return [{"cluster": int(r["cluster"]), "label": r["label"], "key": r["key"],
             "learning_since": r["learning_since"], "learning_until": r["learning_until"],
             "learning": now < r["learning_until"], "reset_at": r["reset_at"], "reset_by": r["reset_by"],
             "edges": counts.get(int(r["cluster"]), {})} for r in rows]
