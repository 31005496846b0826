"""Upserts of a batch's aggregated nodes and edges (SQLite and PostgreSQL, SQLAlchemy Core).

Rows go in sorted key order, so two servers writing overlapping batches lock rows in the same
order and cannot deadlock. Each table gets one executemany INSERT .. ON CONFLICT DO UPDATE ..
RETURNING (SQLAlchemy sends it as multi-row statements, compiled once and cached).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

from heron.platform.graph.collect import EdgeAgg, NodeAgg, NodeRef
from heron.platform.storage import schema

CHUNK = 500  # rows per statement / IN list


def upsert(conn: Connection, table: sa.Table) -> Any:
    """INSERT with .on_conflict_do_update for the connection's database."""
    return pg.insert(table) if conn.dialect.name == "postgresql" else sqlite_dialect.insert(table)


def _later(column: sa.ColumnElement[int], new: sa.ColumnElement[int]) -> sa.ColumnElement[int]:
    return sa.case((new > column, new), else_=column)


def _earlier(column: sa.ColumnElement[int], new: sa.ColumnElement[int]) -> sa.ColumnElement[int]:
    return sa.case((new < column, new), else_=column)


def chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def upsert_nodes(conn: Connection, nodes: dict[NodeRef, NodeAgg]) -> dict[NodeRef, int]:
    """Insert or refresh nodes; returns their ids."""
    t = schema.graph_nodes
    rows = [{"kind": kind, "key": key, "label": agg.label, "attrs": json.dumps(agg.attrs, sort_keys=True),
             "first_seen": agg.first, "last_seen": agg.last, "count": agg.count}
            for (kind, key), agg in sorted(nodes.items())]
    ids: dict[NodeRef, int] = {}
    if not rows:
        return ids
    stmt = upsert(conn, t)
    stmt = stmt.on_conflict_do_update(
        index_elements=[t.c.kind, t.c.key],
        set_={"last_seen": _later(t.c.last_seen, stmt.excluded.last_seen),
              "first_seen": _earlier(t.c.first_seen, stmt.excluded.first_seen),
              "count": t.c.count + stmt.excluded.count})
    # executemany: one cached compilation, sent as multi-row statements in parameter order
    for node_id, kind, key in conn.execute(stmt.returning(t.c.id, t.c.kind, t.c.key, sort_by_parameter_order=True),
                                           rows):
        ids[(kind, key)] = int(node_id)
    return ids


EdgeKey = tuple[int, int, str]  # (src id, dst id, kind)


def existing_edges(conn: Connection, pairs: Iterable[tuple[int, int]]) -> dict[EdgeKey, dict[str, str]]:
    """Stored edges between these (src, dst) pairs: (src, dst, kind) -> {agent_id: baseline}."""
    t = schema.graph_edges
    found: dict[EdgeKey, dict[str, str]] = {}
    for part in chunks(sorted(set(pairs))):
        rows = conn.execute(sa.select(t.c.src, t.c.dst, t.c.kind, t.c.agent_id, t.c.baseline)
                            .where(sa.tuple_(t.c.src, t.c.dst).in_(list(part))))
        for src, dst, kind, agent_id, baseline in rows:
            found.setdefault((int(src), int(dst), kind), {})[agent_id] = baseline
    return found


def upsert_edges(conn: Connection, agent_id: str, edges: dict[EdgeKey, EdgeAgg],
                 baselines: dict[EdgeKey, str]) -> dict[EdgeKey, int]:
    """Insert or refresh one agent's edges; ``baselines`` is the baseline of edges new to it (an
    existing edge keeps its own). Returns the ids."""
    t = schema.graph_edges
    rows = [{"src": src, "dst": dst, "kind": kind, "agent_id": agent_id, "first_seen": agg.first,
             "last_seen": agg.last, "count": agg.count, "baseline": baselines.get((src, dst, kind), "learned")}
            for (src, dst, kind), agg in sorted(edges.items())]
    ids: dict[EdgeKey, int] = {}
    if not rows:
        return ids
    stmt = upsert(conn, t)
    stmt = stmt.on_conflict_do_update(
        index_elements=[t.c.src, t.c.dst, t.c.kind, t.c.agent_id],
        set_={"last_seen": _later(t.c.last_seen, stmt.excluded.last_seen),
              "first_seen": _earlier(t.c.first_seen, stmt.excluded.first_seen),
              "count": t.c.count + stmt.excluded.count})
    returning = stmt.returning(t.c.id, t.c.src, t.c.dst, t.c.kind, sort_by_parameter_order=True)
    for edge_id, src, dst, kind in conn.execute(returning, rows):
        ids[(int(src), int(dst), kind)] = int(edge_id)
    return ids
