"""GraphBuilder: the pipeline's graph stage (heron.platform.analysis.GraphStage).

Per batch: aggregate the events into nodes and edges in memory, write nodes (nodes.py), look up
which edges are new to this agent (and when it started running each active cluster: its runs
edge), how the rest of the fleet has them, give new edges their baseline, upsert edges (sorted),
and return one anomaly Detection per edge new to this host after its cluster's learning window on
this host (unless expected, or learned on enough other hosts).
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy.engine import Connection

from heron.platform.analysis import Batch, Detection
from heron.platform.graph.baseline import ANOMALY_KINDS, classify, learning, rarity, score, windows
from heron.platform.graph.clusters import ClusterCache
from heron.platform.graph.collect import BatchGraph, Collector, EdgeAgg
from heron.platform.graph.nodes import NodeWriter
from heron.platform.graph.store import EdgeKey, agent_edges, fleet_edges, upsert_edges

_VERBS = {"spawned": "ran a new child", "connected": "connected to a new remote", "listened": "listens on a new port",
          "wrote": "wrote to a new file class"}


class GraphConfig(Protocol):
    @property
    def baseline_learning_s(self) -> float: ...

    @property
    def anomaly_alert_min_score(self) -> float: ...

    @property
    def baseline_fleet_hosts(self) -> int: ...


class GraphBuilder:
    def __init__(self, config: GraphConfig | None = None, *, cache_size: int = 200_000) -> None:
        self.learning_s = 86400.0 if config is None else float(config.baseline_learning_s)
        # Below this an anomaly stays a "new" edge in the graph (and in /api/v1/baselines) but raises
        # no alert: a common destination reached by one more cluster is worth a look, not a page.
        self.min_score = 0.0 if config is None else float(config.anomaly_alert_min_score)
        # An edge new to a host is known (no anomaly) once this many other hosts learned it.
        self.fleet_hosts = 2 if config is None else int(config.baseline_fleet_hosts)
        self.collector = Collector(ClusterCache(cache_size))
        self.nodes = NodeWriter()

    def update(self, conn: Connection, batch: Batch) -> list[Detection]:
        graph = self.collector.collect(conn, batch)
        ids = self.nodes.write(conn, graph.nodes, batch.received) if graph.nodes else {}
        if not graph.edges:
            return []
        edges: dict[EdgeKey, EdgeAgg] = {(ids[s], ids[d], kind): agg for (s, d, kind), agg in graph.edges.items()}
        host = ids[("host", batch.agent_id)]
        active = _active_clusters(graph, ids)
        # One indexed lookup: this agent's copies of the batch's edges and its runs edges to the
        # active clusters (whose first_seen opens each cluster's learning window on this host).
        have = agent_edges(conn, batch.agent_id, set(edges) | {(host, c, "runs") for c in active})
        since = _host_windows(host, active, edges, have)
        fresh = [e for e in edges if e not in have]
        clusters = {s for s, _d, k in fresh if k in ANOMALY_KINDS}
        now = batch.received
        wins = windows(conn, clusters | _cluster_ids(graph, ids), now, self.learning_s)
        learns = {e: learning(edges[e].first, since.get(e[0]), wins.get(e[0]), now, self.learning_s)
                  for e in fresh if e[2] in ANOMALY_KINDS}
        # Only fresh anomaly-kind edges past their cluster's learning on this host need the fleet's copies.
        judged = [e for e, learns_it in learns.items() if not learns_it]
        fleet = fleet_edges(conn, batch.agent_id, judged) if judged else {}
        baselines: dict[EdgeKey, str] = {}
        anomalous: list[EdgeKey] = []
        for edge in fresh:
            baselines[edge], is_anomaly = classify(edge, fleet.get(edge, {}), learns.get(edge, True), self.fleet_hosts)
            if is_anomaly:
                anomalous.append(edge)
        rare = rarity(conn, {(d, k) for _s, d, k in anomalous}) if anomalous else {}
        edge_ids = upsert_edges(conn, batch.agent_id, edges, baselines)
        if not anomalous:
            return []
        labels = {ids[ref]: (ref, agg.label) for ref, agg in graph.nodes.items()}
        found = [self._detection(batch, e, edges[e], edge_ids[e], labels, rare.get((e[1], e[2]), (0, 0)))
                 for e in sorted(anomalous)]
        return [d for d in found if d.score >= self.min_score]

    def _detection(self, batch: Batch, edge: EdgeKey, agg: EdgeAgg, edge_id: int,
                   labels: dict[int, tuple[tuple[str, str], str]], seen: tuple[int, int]) -> Detection:
        src, dst, kind = edge
        n_clusters, n_hosts = seen
        value, severity, rare = score(kind, n_clusters)
        src_label, dst_label = labels[src][1], labels[dst][1]
        where = "in no baseline of the fleet" if n_clusters == 0 else \
            f"in the baseline of {n_clusters} cluster(s) on {n_hosts} host(s)"
        evidence: dict[str, Any] = {"edge": edge_id, "kind": kind, "src": src_label, "dst": dst_label,
                                    "src_id": src, "dst_id": dst, "rarity": round(rare, 3),
                                    "clusters": n_clusters, "hosts": n_hosts}
        return Detection(
            kind="anomaly", name=ANOMALY_KINDS[kind][0], severity=severity, score=value,
            agent_id=batch.agent_id, hostname=batch.hostname, ts=agg.first, event=agg.event,
            summary=f"{src_label} on {batch.hostname} {_VERBS[kind]}: {dst_label} ({where})",
            tags=("anomaly", ANOMALY_KINDS[kind][0]), process=agg.process, cluster=src, evidence=evidence)


def _cluster_ids(graph: BatchGraph, ids: dict[tuple[str, str], int]) -> set[int]:
    """Clusters that ran in this batch get a learning window from their first sighting."""
    return {ids[ref] for ref, agg in graph.nodes.items() if ref[0] == "cluster" and agg.count > 0}


def _active_clusters(graph: BatchGraph, ids: dict[tuple[str, str], int]) -> dict[int, EdgeAgg]:
    """Cluster id -> the span (and earliest event) of its edges in the batch, for clusters that made
    an edge as the source."""
    out: dict[int, EdgeAgg] = {}
    for (src, _dst, _kind), agg in graph.edges.items():
        if src[0] != "cluster":
            continue
        span = out.get(ids[src])
        if span is None:
            out[ids[src]] = EdgeAgg(agg.first, agg.last, 0, agg.event, agg.process)
            continue
        if agg.first < span.first:
            span.first, span.event, span.process = agg.first, agg.event, agg.process
        span.last = max(span.last, agg.last)
    return out


def _host_windows(host: int, active: dict[int, EdgeAgg], edges: dict[EdgeKey, EdgeAgg],
                  have: dict[EdgeKey, int]) -> dict[int, int]:
    """Cluster id -> when this host started running it: the first_seen of its runs edge (stored or
    in this batch). A cluster active on the host without one (a process that started before the
    agent, resolved from a stored exec or guessed) gets a runs edge now, with no execs counted."""
    since: dict[int, int] = {}
    for cluster, agg in active.items():
        runs = (host, cluster, "runs")
        if runs not in edges and runs not in have:
            edges[runs] = agg
        firsts = [t for t in (have.get(runs), edges[runs].first if runs in edges else None) if t is not None]
        since[cluster] = min(firsts)
    return since
