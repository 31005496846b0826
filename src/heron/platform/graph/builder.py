"""GraphBuilder: the pipeline's graph stage (heron.platform.analysis.GraphStage).

Per batch: aggregate the events into nodes and edges in memory, upsert nodes (sorted), look up
which edges are new to this agent and to the fleet, give new edges their baseline, upsert edges
(sorted), and return one anomaly Detection per edge that is new to the whole fleet after its
cluster's learning window.
"""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy.engine import Connection

from heron.platform.analysis import Batch, Detection
from heron.platform.graph.baseline import ANOMALY_KINDS, classify, rarity, score, windows
from heron.platform.graph.clusters import ClusterCache
from heron.platform.graph.collect import BatchGraph, Collector, EdgeAgg
from heron.platform.graph.store import EdgeKey, existing_edges, upsert_edges, upsert_nodes

_VERBS = {"spawned": "ran a new child", "connected": "connected to a new remote", "listened": "listens on a new port",
          "wrote": "wrote to a new file class"}


class GraphConfig(Protocol):
    @property
    def baseline_learning_s(self) -> float: ...

    @property
    def anomaly_alert_min_score(self) -> float: ...


class GraphBuilder:
    def __init__(self, config: GraphConfig | None = None, *, cache_size: int = 200_000) -> None:
        self.learning_s = 86400.0 if config is None else float(config.baseline_learning_s)
        # Below this an anomaly stays a "new" edge in the graph (and in /api/v1/baselines) but raises
        # no alert: a common destination reached by one more cluster is worth a look, not a page.
        self.min_score = 0.0 if config is None else float(config.anomaly_alert_min_score)
        self.collector = Collector(ClusterCache(cache_size))

    def update(self, conn: Connection, batch: Batch) -> list[Detection]:
        graph = self.collector.collect(conn, batch)
        if not graph.edges:
            if graph.nodes:
                upsert_nodes(conn, graph.nodes)
            return []
        ids = upsert_nodes(conn, graph.nodes)
        edges: dict[EdgeKey, EdgeAgg] = {(ids[s], ids[d], kind): agg for (s, d, kind), agg in graph.edges.items()}
        existing = existing_edges(conn, ((s, d) for s, d, _k in edges))
        fresh = [e for e in edges if batch.agent_id not in existing.get(e, {})]
        clusters = {s for s, _d, k in fresh if k in ANOMALY_KINDS}
        wins = windows(conn, clusters | _cluster_ids(graph, ids), batch.received, self.learning_s)
        baselines: dict[EdgeKey, str] = {}
        anomalous: list[EdgeKey] = []
        for edge in fresh:
            baselines[edge], is_anomaly = classify(edge, batch.agent_id, existing, wins.get(edge[0]), batch.received)
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
        where = "seen nowhere else in the fleet" if n_clusters == 0 else \
            f"{n_clusters} other cluster(s) on {n_hosts} host(s) do this"
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
