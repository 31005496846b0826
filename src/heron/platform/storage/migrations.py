"""Numbered schema migrations, for SQLite and PostgreSQL alike.

``migrate`` applies every migration newer than the database in one transaction that also records
their numbers in ``schema_version``: a database is never left half-migrated. On PostgreSQL it first
takes an advisory lock, so servers starting at once migrate one after the other (the second finds
nothing to do).

History (databases made by older releases exist, so this knowledge stays):
1. agents, tokens (token_hash, kind, agent_id, created, revoked), batches, events with indexes.
2. package_scopes, packages, package_activity, listeners (heron.platform.packages).
3. tokens gain name, user_id, last_used, expires (API tokens); users, sessions, the behaviour graph,
   baselines, alerts, detections, alert_log, suppressions, notification channels and notifications.
4. events: index events_ts (ts) becomes events_ts_type (ts, type); partial index events_exec_key
   (agent_id, key, ts) WHERE type = 'process.exec'.
Releases before 3 had SQLite only, with hand-written DDL equivalent to the Core tables of schema.py.

Rules for new migrations: append, never edit one that has shipped. A migration creates tables in
their current shape (``schema.py``) and skips those that exist; one that adds a column skips it when
present (a fresh database got it from the CREATE of an earlier migration).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from heron.platform.storage import partitions, schema
from heron.platform.storage.db import Database

_LOCK_KEY = 0x68_65_72_6F_6E_6D  # "heronm": schema migrations


def _create(conn: Connection, *tables: sa.Table) -> None:
    for table in tables:
        if table is schema.events and conn.dialect.name == "postgresql":
            if not sa.inspect(conn).has_table("events"):
                partitions.create_events_table(conn)
        else:
            table.create(conn, checkfirst=True)


HOUR_NS = 3600 * 1_000_000_000


def _add_columns(conn: Connection, table: sa.Table, *names: str) -> None:
    present = {c["name"] for c in sa.inspect(conn).get_columns(table.name)}
    for name in names:
        if name in present:
            continue
        column = sa.schema.CreateColumn(table.c[name]).compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column}")


def _v1(conn: Connection) -> None:
    _create(conn, schema.agents, schema.tokens, schema.batches, schema.events)


def _v2(conn: Connection) -> None:
    _create(conn, schema.package_scopes, schema.packages, schema.package_activity, schema.listeners)


def _v3(conn: Connection) -> None:
    _add_columns(conn, schema.tokens, "name", "user_id", "last_used", "expires")
    _create(conn, schema.users, schema.sessions, schema.graph_nodes, schema.graph_edges, schema.baselines,
            schema.alerts, schema.detections, schema.alert_log, schema.suppressions,
            schema.notification_channels, schema.notifications)


def _v4(conn: Connection) -> None:
    for index in schema.events.indexes:
        if index.name in ("events_ts_type", "events_exec_key"):
            index.create(conn, checkfirst=True)
    conn.exec_driver_sql("DROP INDEX IF EXISTS events_ts")  # events_ts_type serves every use of it


def _v5(conn: Connection) -> None:
    _create(conn, schema.event_counts)
    e, hour = schema.events.c, HOUR_NS
    bucket = (e.ts - e.ts % hour).label("hour")  # ns timestamps are positive: floor to the hour
    counts = sa.select(bucket, e.type, e.agent_id, sa.func.count()).group_by(bucket, e.type, e.agent_id)
    conn.execute(sa.insert(schema.event_counts).from_select(["hour", "type", "agent_id", "n"], counts))


MIGRATIONS: tuple[tuple[int, Callable[[Connection], None]], ...] = (
    (1, _v1), (2, _v2), (3, _v3), (4, _v4), (5, _v5))
LATEST = MIGRATIONS[-1][0]


def current_version(conn: Connection) -> int:
    schema.schema_version.create(conn, checkfirst=True)
    return int(conn.execute(sa.select(sa.func.max(schema.schema_version.c.version))).scalar() or 0)


def migrate(db: Database, now_ns: int | None = None) -> int:
    """Apply every migration newer than the database; returns the resulting version."""
    now = time.time_ns() if now_ns is None else now_ns
    with db.begin() as conn:
        if db.dialect == "postgresql":
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_LOCK_KEY)))
        version = current_version(conn)
        for number, apply in MIGRATIONS:
            if number <= version:
                continue
            apply(conn)
            conn.execute(sa.insert(schema.schema_version).values(version=number, applied=now))
            version = number
    return version
