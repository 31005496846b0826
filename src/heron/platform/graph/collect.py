"""A batch's events as graph nodes and edges, aggregated in memory (one row per node/edge per batch).

Which events make which edges (see docs/graph.md):
- process.exec: host -runs-> cluster, user -ran-> cluster, container -runs-> cluster, host -runs->
  container, image -runs-> container (when known), parent cluster -spawned-> cluster;
- net.flow (out): cluster -connected-> endpoint; net.listen (open): cluster -listened-> listen endpoint;
- net.dns: cluster -resolved-> domain endpoint;
- file.change: cluster -wrote-> file class (read: -read->);
- package.activity: cluster -uses-> package (active entries' processes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from heron.platform.analysis import Batch
from heron.platform.graph.clusters import (
    Cluster,
    ClusterCache,
    best_guess,
    cluster_of_exec,
    known_clusters,
    stored_execs,
)
from heron.platform.graph.keys import bounded, endpoint_key, fileclass, image_of, listen_key, package_key, user_of

NodeRef = tuple[str, str]  # (kind, key)
EdgeRef = tuple[NodeRef, NodeRef, str]  # (src, dst, edge kind)


@dataclass(slots=True)
class NodeAgg:
    label: str
    attrs: dict[str, Any]
    first: int
    last: int
    count: int = 0


@dataclass(slots=True)
class EdgeAgg:
    first: int
    last: int
    count: int
    event: dict[str, Any]  # the first event that made the edge in this batch
    process: dict[str, Any] | None


@dataclass
class BatchGraph:
    nodes: dict[NodeRef, NodeAgg] = field(default_factory=dict)
    edges: dict[EdgeRef, EdgeAgg] = field(default_factory=dict)

    def node(self, kind: str, key: str, label: str, ts: int, attrs: dict[str, Any] | None = None,
             count: int = 1) -> NodeRef:
        ref = (kind, bounded(key))  # keys made in keys.py are bounded already; users, containers here
        agg = self.nodes.get(ref)
        if agg is None:
            self.nodes[ref] = NodeAgg(label, attrs or {}, ts, ts, count)
        else:
            agg.first, agg.last, agg.count = min(agg.first, ts), max(agg.last, ts), agg.count + count
        return ref

    def edge(self, src: NodeRef, dst: NodeRef, kind: str, ts: int, event: dict[str, Any],
             process: dict[str, Any] | None, count: int = 1) -> None:
        ref = (src, dst, kind)
        agg = self.edges.get(ref)
        if agg is None:
            self.edges[ref] = EdgeAgg(ts, ts, count, event, process)
        else:
            agg.first, agg.last, agg.count = min(agg.first, ts), max(agg.last, ts), agg.count + count


def _ts(event: dict[str, Any]) -> int:
    ts = event.get("ts")
    return ts if isinstance(ts, int) else 0


def _count(event: dict[str, Any]) -> int:
    n = event.get("count")
    return n if isinstance(n, int) and n > 0 else 1


def _process_of(event: dict[str, Any]) -> dict[str, Any] | None:
    p = event.get("process")
    return p if isinstance(p, dict) else None


class Collector:
    """Builds a BatchGraph from a batch, resolving processes to clusters (see clusters.py)."""

    def __init__(self, cache: ClusterCache) -> None:
        self.cache = cache

    def collect(self, conn: Connection, batch: Batch) -> BatchGraph:
        resolved = self._resolve(conn, batch)
        graph = BatchGraph()
        host = graph.node("host", batch.agent_id, batch.hostname or batch.agent_id, batch.received, count=0)
        for event in batch.events:
            etype = event.get("type")
            if etype == "process.exec":
                self._exec(graph, host, event, resolved)
            elif etype in ("net.flow", "net.listen", "net.dns", "file.change"):
                process = _process_of(event)
                cluster = self._cluster(graph, process, resolved, _ts(event))
                if cluster is not None:
                    self._activity(graph, cluster, event, process)
            elif etype == "package.activity":
                self._packages(graph, event, resolved)
        return graph

    # -- process resolution ------------------------------------------------------------------------
    def _resolve(self, conn: Connection, batch: Batch) -> dict[str, Cluster]:
        """process key -> cluster for every process the batch mentions (missing: unresolvable)."""
        agent = batch.agent_id
        resolved: dict[str, Cluster] = {}
        wanted: dict[str, dict[str, Any]] = {}  # key -> a ProcessRef-like dict (exe, user, container)
        for event in batch.events:
            process = _process_of(event)
            if event.get("type") == "process.exec" and process is not None:
                key = process.get("key")
                if isinstance(key, str) and key:
                    resolved[key] = cluster = cluster_of_exec(process)
                    self.cache.put(agent, key, cluster)
                parent = process.get("parent_key")
                ancestors = process.get("ancestors")
                parent_exe = ancestors[0][2] if isinstance(ancestors, list) and ancestors \
                    and isinstance(ancestors[0], list) and len(ancestors[0]) == 3 else None
                if isinstance(parent, str) and parent:
                    wanted.setdefault(parent, {"exe": parent_exe, "container_id": process.get("container_id")})
            elif event.get("type") == "package.activity":
                for use in event.get("active") or ():
                    for ref in (use.get("processes") or ()) if isinstance(use, dict) else ():
                        if isinstance(ref, dict) and isinstance(ref.get("key"), str):
                            wanted.setdefault(ref["key"], ref)
            elif process is not None and isinstance(process.get("key"), str):
                wanted.setdefault(process["key"], process)
        missing = []
        for key in wanted:
            if key in resolved:
                continue
            cached = self.cache.get(agent, key)
            if cached is not None:
                resolved[key] = cached
                continue
            recent, guess = self.cache.miss(agent, key, batch.received)
            if not recent:
                missing.append(key)
            elif guess is not None:
                resolved[key] = guess
        if missing:
            for key, cluster in stored_execs(conn, agent, missing).items():
                resolved[key] = cluster
                self.cache.put(agent, key, cluster)
        unknown = [k for k in missing if k not in resolved]
        guesses = [k for k in unknown if wanted[k].get("exe")]
        known = known_clusters(conn, (str(wanted[k]["exe"]) for k in guesses)) if guesses else {}
        for key in unknown:
            ref = wanted[key]
            guess = None
            if ref.get("exe"):
                exe = str(ref["exe"])
                user = ref.get("user") if isinstance(ref.get("user"), str) else None
                resolved[key] = guess = best_guess(known.get(exe, []), exe, user, image_of(ref))
            self.cache.put_miss(agent, key, guess, batch.received)
        return resolved

    def _cluster(self, graph: BatchGraph, process: dict[str, Any] | None, resolved: dict[str, Cluster],
                 ts: int) -> NodeRef | None:
        """The cluster node of an event's process (None when the event names no process)."""
        if process is None:
            return None
        key = process.get("key")
        cluster = resolved.get(key) if isinstance(key, str) else None
        if cluster is None:
            exe = process.get("exe")
            if not isinstance(exe, str) or not exe:
                return None
            cluster = Cluster(exe, user_of(process), image_of(process), "?")
        return graph.node("cluster", cluster.key, cluster.label, ts, cluster.attrs(), count=0)

    # -- events ------------------------------------------------------------------------------------
    def _exec(self, graph: BatchGraph, host: NodeRef, event: dict[str, Any], resolved: dict[str, Cluster]) -> None:
        process = _process_of(event)
        if process is None:
            return
        ts, n = _ts(event), _count(event)
        cluster = cluster_of_exec(process)  # not resolved[key]: a process that execs twice keeps its key
        node = graph.node("cluster", cluster.key, cluster.label, ts, cluster.attrs(), count=n)
        graph.edge(host, node, "runs", ts, event, process, n)
        user = graph.node("user", cluster.user, cluster.user, ts)
        graph.edge(user, node, "ran", ts, event, process, n)
        container_id = process.get("container_id")
        if isinstance(container_id, str) and container_id:
            container = graph.node("container", container_id, container_id[:12], ts,
                                   {"runtime": process.get("container_runtime") or ""})
            graph.edge(container, node, "runs", ts, event, process, n)
            graph.edge(host, container, "runs", ts, event, process, n)
            image = process.get("container_image")
            if isinstance(image, str) and image:
                graph.edge(graph.node("image", image, image, ts), container, "runs", ts, event, process, n)
        parent_key = process.get("parent_key")
        parent = resolved.get(parent_key) if isinstance(parent_key, str) else None
        if parent is not None:
            src = graph.node("cluster", parent.key, parent.label, ts, parent.attrs(), count=0)
            graph.edge(src, node, "spawned", ts, event, process, n)

    def _activity(self, graph: BatchGraph, cluster: NodeRef, event: dict[str, Any],
                  process: dict[str, Any] | None) -> None:
        etype, ts, n = event.get("type"), _ts(event), _count(event)
        if etype == "net.flow":
            if event.get("direction") != "out":
                return  # inbound flows: the listener's edge says it
            key = endpoint_key(str(event.get("remote_addr") or "?"), int(event.get("remote_port") or 0),
                               event.get("domain"), event.get("remote_class"))
            node = graph.node("endpoint", key, key, ts, {"protocol": event.get("protocol") or ""})
            graph.edge(cluster, node, "connected", ts, event, process, int(event.get("connections") or 1))
        elif etype == "net.listen":
            if event.get("state", "open") != "open":
                return
            key = listen_key(str(event.get("protocol") or "tcp"), int(event.get("port") or 0))
            node = graph.node("endpoint", key, key, ts, {"addr": event.get("addr") or ""})
            graph.edge(cluster, node, "listened", ts, event, process)
        elif etype == "net.dns":
            query = event.get("query")
            if isinstance(query, str) and query:
                domain = query.lower().rstrip(".")
                graph.edge(cluster, graph.node("endpoint", domain, domain, ts, {"dns": True}), "resolved",
                           ts, event, process, n)
        elif etype == "file.change":
            path = event.get("path")
            if isinstance(path, str) and path and process is not None:
                cls = fileclass(path)
                kind = "read" if event.get("action") == "read" else "wrote"
                graph.edge(cluster, graph.node("fileclass", cls, cls, ts), kind, ts, event, process, n)

    def _packages(self, graph: BatchGraph, event: dict[str, Any], resolved: dict[str, Cluster]) -> None:
        ts = _ts(event)
        for use in event.get("active") or ():
            if not isinstance(use, dict) or not isinstance(use.get("purl"), str):
                continue
            key = package_key(use["purl"])
            package = graph.node("package", key, key.removeprefix("pkg:"), ts)
            for ref in use.get("processes") or ():
                if isinstance(ref, dict):
                    cluster = self._cluster(graph, ref, resolved, ts)
                    if cluster is not None:
                        graph.edge(cluster, package, "uses", ts, event, ref)


def to_json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
