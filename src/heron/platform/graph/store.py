"""Upserts and lookups of a batch's aggregated edges (SQLite and PostgreSQL, SQLAlchemy Core).

Edge rows are per agent, so only batches of the same agent touch the same rows; they go in
sorted key order (no deadlocks) as one executemany INSERT .. ON CONFLICT DO UPDATE .. RETURNING
(SQLAlchemy sends it as multi-row statements, compiled once and cached). Nodes: nodes.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

from heron.platform.graph.collect import EdgeAgg
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


EdgeKey = tuple[int, int, str]  # (src id, dst id, kind)


def _pair_chunks(edges: Iterable[EdgeKey]) -> Iterable[tuple[set[EdgeKey], list[int], list[int], list[str]]]:
    """Edges in chunks of ``CHUNK`` with their src, dst and kind lists. Queries filter on
    ``src IN (..) AND dst IN (..)`` (the unique index's leading columns) and drop the cross-product
    rows in Python: a row-value ``(src, dst) IN (VALUES ..)`` makes SQLite scan the whole table."""
    for part in chunks(sorted(set(edges))):
        yield (set(part), sorted({e[0] for e in part}), sorted({e[1] for e in part}), sorted({e[2] for e in part}))


def agent_edges(conn: Connection, agent_id: str, edges: Iterable[EdgeKey]) -> dict[EdgeKey, int]:
    """The ones among these edges that this agent already has, with their first_seen."""
    t = schema.graph_edges
    found: dict[EdgeKey, int] = {}
    for wanted, srcs, dsts, _kinds in _pair_chunks(edges):
        rows = conn.execute(sa.select(t.c.src, t.c.dst, t.c.kind, t.c.first_seen)
                            .where(t.c.src.in_(srcs), t.c.dst.in_(dsts), t.c.agent_id == agent_id))
        for src, dst, kind, first in rows:
            if (edge := (int(src), int(dst), kind)) in wanted:
                found[edge] = int(first)
    return found


def fleet_edges(conn: Connection, agent_id: str, edges: Iterable[EdgeKey]) -> dict[EdgeKey, dict[str, int]]:
    """Other agents' copies of these edges: edge -> {baseline: number of hosts}."""
    t = schema.graph_edges
    found: dict[EdgeKey, dict[str, int]] = {}
    for wanted, srcs, dsts, kinds in _pair_chunks(edges):
        rows = conn.execute(sa.select(t.c.src, t.c.dst, t.c.kind, t.c.baseline, sa.func.count())
                            .where(t.c.src.in_(srcs), t.c.dst.in_(dsts), t.c.kind.in_(kinds), t.c.agent_id != agent_id)
                            .group_by(t.c.src, t.c.dst, t.c.kind, t.c.baseline))
        for src, dst, kind, baseline, hosts in rows:
            edge = (int(src), int(dst), kind)
            if edge in wanted:
                found.setdefault(edge, {})[baseline] = int(hosts)
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
