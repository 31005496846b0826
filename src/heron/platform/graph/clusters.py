"""Which process cluster a process belongs to, also when an event carries only a ProcessRef.

A cluster needs exe, user, image and argv; exec records carry all four, network/file/package
events carry a ProcessRef (no argv) and exec records name their parent only by key and exe.
Resolution order for a process key: the execs of the same batch, a bounded in-memory cache
(per server; only an optimisation, several servers may share a database), the stored
``process.exec`` event of that key, and last the most frequent known cluster of the same exe (same
user first), else a cluster whose shape is "?" (unknown command line).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from heron.platform.graph.keys import argv_shape, cluster_label, image_of, user_of
from heron.platform.storage import schema

MAX_LOOKUPS = 500  # process keys looked up in the events table per batch
MAX_FALLBACK_EXES = 64  # exes looked up among known clusters per batch


@dataclass(frozen=True, slots=True)
class Cluster:
    exe: str
    user: str
    image: str
    shape: str  # argv_shape(argv), or "?" when the command line is unknown

    @property
    def key(self) -> str:
        return f"{self.exe}|{self.user}|{self.image}|{self.shape}"

    @property
    def label(self) -> str:
        return cluster_label(self.exe, self.user, self.shape)

    def attrs(self) -> dict[str, str]:
        return {"exe": self.exe, "user": self.user, "image": self.image, "shape": self.shape}

    @classmethod
    def parse(cls, key: str) -> Cluster:
        exe, user, image, shape = [*key.split("|", 3), "", "", ""][:4]
        return cls(exe, user, image, shape)


def cluster_of_exec(process: dict[str, Any]) -> Cluster:
    argv = process.get("argv")
    return Cluster(str(process.get("exe") or process.get("comm") or "?"), user_of(process), image_of(process),
                   argv_shape(argv) if isinstance(argv, list) else "?")


class ClusterCache:
    """(agent_id, process key) -> Cluster, least recently used evicted."""

    def __init__(self, size: int = 200_000) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str], Cluster] = OrderedDict()

    def get(self, agent_id: str, key: str) -> Cluster | None:
        found = self._items.get((agent_id, key))
        if found is not None:
            self._items.move_to_end((agent_id, key))
        return found

    def put(self, agent_id: str, key: str, cluster: Cluster) -> None:
        self._items[(agent_id, key)] = cluster
        self._items.move_to_end((agent_id, key))
        while len(self._items) > self.size:
            self._items.popitem(last=False)


def stored_execs(conn: Connection, agent_id: str, keys: Iterable[str]) -> dict[str, Cluster]:
    """Clusters of processes whose exec record is stored (one query)."""
    wanted = sorted(set(keys))[:MAX_LOOKUPS]
    if not wanted:
        return {}
    ev = schema.events
    rows = conn.execute(sa.select(ev.c.key, ev.c.data).where(
        ev.c.agent_id == agent_id, ev.c.type == "process.exec", ev.c.key.in_(wanted)).order_by(ev.c.ts))
    found: dict[str, Cluster] = {}
    for key, data in rows:
        try:
            process = json.loads(data).get("process")
        except (ValueError, AttributeError):
            continue
        if isinstance(process, dict):
            found[key] = cluster_of_exec(process)
    return found


def known_clusters(conn: Connection, exes: Iterable[str]) -> dict[str, list[tuple[Cluster, int]]]:
    """Known clusters of each exe with their counts, most frequent first (cluster keys start with
    "exe|"; LIKE rather than a key range, as PostgreSQL's locale collation does not order '|')."""
    nodes = schema.graph_nodes
    wanted = sorted(set(exes))[:MAX_FALLBACK_EXES]
    if not wanted:
        return {}
    ranges = [nodes.c.key.startswith(f"{exe}|", autoescape=True) for exe in wanted]
    rows = conn.execute(sa.select(nodes.c.key, nodes.c.count)
                        .where(nodes.c.kind == "cluster", sa.or_(*ranges)).order_by(nodes.c.count.desc()))
    out: dict[str, list[tuple[Cluster, int]]] = {}
    for key, count in rows:
        cluster = Cluster.parse(key)
        if cluster.exe not in wanted:  # SQLite's LIKE ignores case
            continue
        out.setdefault(cluster.exe, []).append((cluster, int(count)))
    return out


def best_guess(candidates: list[tuple[Cluster, int]], exe: str, user: str | None, image: str) -> Cluster:
    """The most frequent known cluster of this exe and image (same user preferred), else "?"."""
    same_image = [c for c, _ in candidates if c.image == image]
    for cluster in same_image:
        if user is None or cluster.user == user:
            return cluster
    if same_image:
        return same_image[0]
    return Cluster(exe, user or "?", image, "?")
