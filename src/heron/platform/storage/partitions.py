"""PostgreSQL: ``events`` is range-partitioned by ``ts``, one partition per UTC day.

Partitions are made ahead (today and the next ``AHEAD_DAYS`` days) when a server starts and by an
hourly maintenance loop (independent of retention), so ingest never creates tables. A DEFAULT
partition takes any event outside them (an agent's clock years off, a spool replayed after a long
outage): an odd ``ts`` is never refused.
If the default already holds rows of a day whose partition is being made, they are moved into it
first (PostgreSQL refuses a new partition that the default's rows would belong to).

Retention drops whole partitions older than the cutoff (cheap: no row-by-row delete, no bloat);
the caller then deletes the few older rows left in the partition holding the cutoff and in the
default. Several servers may share the database: an advisory lock serialises the maintenance.
"""

from __future__ import annotations

import datetime as dt
import logging

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from heron.platform.storage.db import Database, DatabaseUnavailable
from heron.platform.storage.schema import events

DAY_NS = 86_400 * 1_000_000_000
AHEAD_DAYS = 2
PREFIX = "events_p"  # + YYYYMMDD
DEFAULT_PARTITION = "events_default"
_LOCK_KEY = 0x68_65_72_6F_6E_70  # "heronp": partition maintenance
DROP_LOCK_TIMEOUT = "5s"  # how long a partition drop may hold up ingest waiting for its lock

log = logging.getLogger("heron.platform.storage")

# The columns of schema.events; the primary key must include the partition key.
EVENTS_DDL = """
CREATE TABLE events (
    id       BIGSERIAL NOT NULL,
    agent_id TEXT NOT NULL,
    hostname TEXT NOT NULL,
    type     TEXT NOT NULL,
    ts       BIGINT NOT NULL,
    key      TEXT,
    pid      BIGINT,
    exe      TEXT,
    cmdline  TEXT,
    data     TEXT NOT NULL,
    PRIMARY KEY (id, ts)
) PARTITION BY RANGE (ts)
"""


def create_events_table(conn: Connection) -> None:
    """The partitioned ``events`` table, its default partition and its indexes (inherited by every
    partition)."""
    conn.exec_driver_sql(EVENTS_DDL)
    conn.exec_driver_sql(f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF events DEFAULT")
    for index in events.indexes:
        conn.execute(sa.schema.CreateIndex(index))


def partition_name(day: int) -> str:
    """The partition of day ``day`` (days since the epoch, UTC)."""
    return PREFIX + (dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=day)).strftime("%Y%m%d")


def partition_day(name: str) -> int | None:
    """The day of a partition name made by ``partition_name``, None for any other table."""
    digits = name.removeprefix(PREFIX)
    if digits == name or len(digits) != 8 or not digits.isdigit():
        return None
    try:
        day = dt.datetime.strptime(digits, "%Y%m%d").replace(tzinfo=dt.UTC)
    except ValueError:
        return None
    return (day - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)).days


def _lock(conn: Connection) -> None:
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_LOCK_KEY)))


def list_partitions(conn: Connection) -> list[str]:
    rows = conn.exec_driver_sql(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'events'::regclass ORDER BY c.relname").all()
    return [str(r[0]) for r in rows]


def ensure_partitions(conn: Connection, now_ns: int, ahead: int = AHEAD_DAYS, back: int = 0) -> list[str]:
    """Create the partitions of the days from ``back`` days before ``now_ns`` to ``ahead`` days after
    it that do not exist yet; returns their names."""
    _lock(conn)
    existing = set(list_partitions(conn))
    today = now_ns // DAY_NS
    made = []
    for day in range(today - back, today + ahead + 1):
        name = partition_name(day)
        if name in existing:
            continue
        lo, hi = day * DAY_NS, (day + 1) * DAY_NS
        default = sa.table(DEFAULT_PARTITION, sa.column("ts"))
        stray = conn.execute(sa.select(sa.literal(1)).select_from(default)
                             .where(default.c.ts >= lo, default.c.ts < hi).limit(1)).first()
        if stray is None:
            conn.exec_driver_sql(f"CREATE TABLE {name} PARTITION OF events FOR VALUES FROM ({lo}) TO ({hi})")
        else:  # move that day's rows out of the default, then attach the filled table as its partition
            conn.exec_driver_sql(f"CREATE TABLE {name} (LIKE events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
            conn.exec_driver_sql(  # names are ours (digits only), the bounds are bound parameters
                f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE ts >= %(lo)s AND ts < %(hi)s RETURNING *)"  # noqa: S608
                f" INSERT INTO {name} SELECT * FROM moved", {"lo": lo, "hi": hi})
            conn.exec_driver_sql(f"ALTER TABLE events ATTACH PARTITION {name} FOR VALUES FROM ({lo}) TO ({hi})")
        made.append(name)
    return made


def drop_partitions_before(db: Database, ts: int) -> int:
    """Drop the daily partitions wholly older than ``ts``, one transaction each; returns about how
    many events they held (the planner's estimate, ``pg_class.reltuples``: counting a whole day to
    log it would read it all).

    Dropping a partition locks the parent ``events``; while it waits for running inserts, new ones
    queue behind it. ``lock_timeout`` bounds that stall: on a timeout the partition stays, and
    the next round tries again (the rows are past retention, a later drop loses nothing)."""
    with db.read() as conn:
        old = [name for name in list_partitions(conn)
               if (day := partition_day(name)) is not None and (day + 1) * DAY_NS <= ts]
    dropped = 0
    for name in old:
        try:
            with db.begin() as conn:
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'")
                _lock(conn)
                if name not in list_partitions(conn):
                    continue  # another server dropped it meanwhile
                estimate = conn.execute(sa.select(sa.func.greatest(sa.column("reltuples"), 0))
                                        .select_from(sa.table("pg_class"))
                                        .where(sa.column("relname") == name)).scalar()
                conn.exec_driver_sql(f"DROP TABLE {name}")
        except DatabaseUnavailable as e:  # lock_timeout (55P03) among others: retry next round
            log.warning("retention: partition %s not dropped (%s); retrying next round", name, str(e)[:200])
            break
        dropped += int(estimate or 0)
    return dropped
