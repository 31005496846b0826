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
import sys
import threading
import weakref
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
MAX_GUESS_ROWS = 2000  # clusters read for them


@dataclass(frozen=True, slots=True, weakref_slot=True)
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
    """(agent_id, process key) -> Cluster, least recently used evicted; shared by a server's ingest
    workers (locked). Equal clusters share one object (and agent ids one string), so an entry costs
    little more than its key. Misses (no stored exec: the guess made then, or None) are remembered
    for ``miss_ttl_ns`` of batch time, so such a process costs no lookups in every batch."""

    def __init__(self, size: int = 200_000, miss_ttl_ns: int = 60 * 1_000_000_000) -> None:
        self.size = size
        self.miss_ttl_ns = miss_ttl_ns
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, str], Cluster] = OrderedDict()
        self._misses: OrderedDict[tuple[str, str], tuple[int, Cluster | None]] = OrderedDict()
        self._shared: weakref.WeakValueDictionary[str, Cluster] = weakref.WeakValueDictionary()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, agent_id: str, key: str) -> Cluster | None:
        with self._lock:
            found = self._items.get((agent_id, key))
            if found is not None:
                self._items.move_to_end((agent_id, key))
            return found

    def put(self, agent_id: str, key: str, cluster: Cluster) -> None:
        item = (sys.intern(agent_id), key)
        with self._lock:
            self._items[item] = self._shared.setdefault(cluster.key, cluster)
            self._items.move_to_end(item)
            self._misses.pop(item, None)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def miss(self, agent_id: str, key: str, now: int) -> tuple[bool, Cluster | None]:
        """(True, guess) when this key missed less than the TTL ago."""
        with self._lock:
            found = self._misses.get((agent_id, key))
            if found is None:
                return False, None
            if found[0] <= now - self.miss_ttl_ns:
                del self._misses[(agent_id, key)]
                return False, None
            return True, found[1]

    def put_miss(self, agent_id: str, key: str, guess: Cluster | None, now: int) -> None:
        item = (sys.intern(agent_id), key)
        with self._lock:
            self._misses[item] = (now, None if guess is None else self._shared.setdefault(guess.key, guess))
            self._misses.move_to_end(item)
            while len(self._misses) > self.size // 4 or \
                    (self._misses and next(iter(self._misses.values()))[0] <= now - self.miss_ttl_ns):
                self._misses.popitem(last=False)


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
    """Known clusters of each exe with their counts, most frequent first, at most ``MAX_GUESS_ROWS``
    for the lot. Cluster keys start with "exe|": on SQLite (binary collation) that is the indexed
    range [exe|, exe}); PostgreSQL's locale collation does not order '|' that way, so there it is a
    LIKE over the cluster nodes (no index); the cache remembers the guess (ClusterCache.put_miss)."""
    nodes = schema.graph_nodes
    wanted = sorted(set(exes))[:MAX_FALLBACK_EXES]
    if not wanted:
        return {}
    if conn.dialect.name == "sqlite":
        ranges = [sa.and_(nodes.c.kind == "cluster", nodes.c.key >= f"{exe}|", nodes.c.key < f"{exe}}}")
                  for exe in wanted]
    else:
        ranges = [sa.and_(nodes.c.kind == "cluster", nodes.c.key.startswith(f"{exe}|", autoescape=True))
                  for exe in wanted]
    rows = conn.execute(sa.select(nodes.c.key, nodes.c.count).where(sa.or_(*ranges))
                        .order_by(nodes.c.count.desc()).limit(MAX_GUESS_ROWS))
    out: dict[str, list[tuple[Cluster, int]]] = {}
    for key, count in rows:
        cluster = Cluster.parse(key)
        if cluster.exe in wanted:
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
