"""Writing a batch's nodes without holding hot rows (PostgreSQL row locks last until the batch commits).

Nodes such as user ``root`` or a common cluster are in nearly every batch of every server; an upsert
that updates them on every batch would lock them until its batch commits and serialise all ingest.
So, per batch:

- existing nodes are read without locks (indexed ``kind = ? AND key IN (...)``);
- missing ones are inserted ``ON CONFLICT DO NOTHING`` in key order (a concurrent insert is re-read);
- an existing node is only written when its stored ``last_seen`` is more than ``REFRESH_NS`` behind
  the batch's (or ``first_seen`` moves earlier). Such a refresh takes the row with ``FOR UPDATE SKIP
  LOCKED``: a row another batch holds is skipped, never waited for. Rows colder than ``COLD_NS`` are
  locked waiting instead: retention may be deleting them, and a deleted node is inserted anew.
- node counts of existing nodes (execs of a cluster, events otherwise) accumulate in memory per
  server and are added when the node is next refreshed, or after ``REFRESH_NS`` at the latest (at
  most ``FLUSH_MAX`` per batch). They are approximate: counts pending on a server that stops, or in
  a batch that rolls back, are lost. Edge counts are exact.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from heron.platform.graph.collect import NodeAgg, NodeRef
from heron.platform.graph.store import chunks, upsert
from heron.platform.storage import schema

NS = 1_000_000_000
REFRESH_NS = 60 * NS  # an existing node's last_seen is written at most this stale
COLD_NS = 86_400 * NS  # older rows may be pruned by retention (30 days): lock them waiting
GIVE_UP_NS = 10 * REFRESH_NS  # a pending count whose row stays locked or was deleted is dropped then
FLUSH_MAX = 500  # pending counts of nodes absent from the batch flushed per batch
MAX_INT64 = (1 << 63) - 1


class NodeWriter:
    """Writes nodes (see the module doc); one per server, shared by its ingest workers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[int, int]] = {}  # node id -> (count not yet written, since ns)

    def pending(self) -> dict[int, int]:
        with self._lock:
            return {k: n for k, (n, _since) in self._pending.items()}

    def write(self, conn: Connection, nodes: dict[NodeRef, NodeAgg], now: int) -> dict[NodeRef, int]:
        """Ids of the batch's nodes, inserting the new ones; ``now`` is the batch's receive time."""
        stored = _existing(conn, nodes)
        ids = {ref: row[0] for ref, row in stored.items()}
        cold = sorted(row[0] for ref, row in stored.items() if row[2] < nodes[ref].last - COLD_NS)
        if cold:  # deleted meanwhile by retention: insert anew below
            alive = _lock(conn, cold, skip_locked=False)
            for ref in [r for r, row in stored.items() if row[0] in cold and row[0] not in alive]:
                del ids[ref], stored[ref]
        inserted, raced = _insert(conn, {ref: agg for ref, agg in nodes.items() if ref not in ids})
        ids.update(inserted)
        ids.update({ref: row[0] for ref, row in raced.items()})
        self._refresh(conn, nodes, stored | raced, now)
        return ids

    def _refresh(self, conn: Connection, nodes: dict[NodeRef, NodeAgg],
                 stored: dict[NodeRef, tuple[int, int, int]], now: int) -> None:
        updates: dict[int, tuple[int, int]] = {}  # id -> (first, last) to merge in
        with self._lock:
            for ref, (node_id, first, last) in stored.items():
                agg = nodes[ref]
                if agg.count > 0:
                    n, since = self._pending.get(node_id, (0, now))
                    self._pending[node_id] = (n + agg.count, since)
                if last < agg.last - REFRESH_NS or first > agg.first:
                    updates[node_id] = (agg.first, agg.last)
            aged = [k for k, (_n, since) in self._pending.items() if since <= now - REFRESH_NS and k not in updates]
        for node_id in aged[:FLUSH_MAX]:
            updates[node_id] = (MAX_INT64, 0)  # count only
        if not updates:
            return
        locked = _lock(conn, sorted(updates), skip_locked=True)
        with self._lock:
            counts = {k: self._pending.pop(k, (0, 0))[0] for k in locked}
            for k in updates.keys() - locked:  # held elsewhere or deleted: retried, given up after 10 minutes
                if self._pending.get(k, (0, now))[1] <= now - GIVE_UP_NS:
                    del self._pending[k]
        rows = [{"b_id": k, "b_first": updates[k][0], "b_last": updates[k][1], "b_n": counts[k]}
                for k in sorted(locked)]
        if rows:
            t = schema.graph_nodes
            b_first, b_last = sa.bindparam("b_first", type_=sa.BigInteger), sa.bindparam("b_last", type_=sa.BigInteger)
            conn.execute(sa.update(t).where(t.c.id == sa.bindparam("b_id")).values(
                first_seen=sa.case((b_first < t.c.first_seen, b_first), else_=t.c.first_seen),
                last_seen=sa.case((b_last > t.c.last_seen, b_last), else_=t.c.last_seen),
                count=t.c.count + sa.bindparam("b_n", type_=sa.BigInteger)), rows)


def _existing(conn: Connection, nodes: Iterable[NodeRef]) -> dict[NodeRef, tuple[int, int, int]]:
    """(kind, key) -> (id, first_seen, last_seen) of stored nodes; one ``kind = ? AND key IN`` per 500."""
    t = schema.graph_nodes
    by_kind: dict[str, list[str]] = {}
    for kind, key in nodes:
        by_kind.setdefault(kind, []).append(key)
    found: dict[NodeRef, tuple[int, int, int]] = {}
    for kind, keys in sorted(by_kind.items()):
        for part in chunks(sorted(keys)):
            rows = conn.execute(sa.select(t.c.id, t.c.key, t.c.first_seen, t.c.last_seen)
                                .where(t.c.kind == kind, t.c.key.in_(list(part))))
            for node_id, key, first, last in rows:
                found[(kind, key)] = (int(node_id), int(first), int(last))
    return found


def _lock(conn: Connection, ids: list[int], *, skip_locked: bool) -> set[int]:
    """Lock these rows (PostgreSQL; SQLite's writer already holds the database): the ones present
    and, with ``skip_locked``, not held by another transaction."""
    t = schema.graph_nodes
    got: set[int] = set()
    for part in chunks(ids):
        stmt = sa.select(t.c.id).where(t.c.id.in_(list(part))).order_by(t.c.id)
        got |= {int(r[0]) for r in conn.execute(stmt.with_for_update(skip_locked=skip_locked))}
    return got


def _insert(conn: Connection, nodes: dict[NodeRef, NodeAgg]) -> tuple[dict[NodeRef, int],
                                                                      dict[NodeRef, tuple[int, int, int]]]:
    """Insert new nodes in key order: (ids of the inserted, stored rows of those another server
    inserted meanwhile)."""
    t = schema.graph_nodes
    rows = [{"kind": kind, "key": key, "label": agg.label, "attrs": json.dumps(agg.attrs, sort_keys=True),
             "first_seen": agg.first, "last_seen": agg.last, "count": agg.count}
            for (kind, key), agg in sorted(nodes.items())]
    ids: dict[NodeRef, int] = {}
    for part in chunks(rows):
        stmt = upsert(conn, t).values(list(part)).on_conflict_do_nothing(index_elements=[t.c.kind, t.c.key])
        for node_id, kind, key in conn.execute(stmt.returning(t.c.id, t.c.kind, t.c.key)):
            ids[(kind, key)] = int(node_id)
    raced = [ref for ref in nodes if ref not in ids]
    return ids, (_existing(conn, raced) if raced else {})
