"""The Storage protocol on a ``Database`` (SQLAlchemy Core): one code path for SQLite and PostgreSQL.

Writes run in ``db.begin()`` transactions, so a batch, its events and whatever ``analyse`` adds
commit together or not at all; reads use ``db.read()``. Events are inserted with one executemany
per batch. ``analyse`` runs in a savepoint: when it fails for a reason a retry would not cure (a bug,
a value a stage cannot store), only its work is rolled back and the events are kept, so one poison
batch cannot stop an agent's telemetry (its spool would resend it forever).

Indexed text columns (type, key, exe, hostname) are cut to ``INDEXED_TEXT_BYTES`` of UTF-8: a
PostgreSQL B-tree refuses an entry over ~2.7 KB, and an exe path is whatever the agent reports. The
full value stays in ``data``.

Retention differs by database: PostgreSQL drops whole daily partitions (``partitions.py``), SQLite
deletes in chunks so ingest never waits long on its single writer. The same round prunes what
analysis keeps (``prune_analysis``): closed alerts, delivered notifications, expired suppressions,
and graph edges and nodes not seen for longer than the retention (at least ``GRAPH_MIN_AGE_NS``:
learned edges are the baselines).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from heron.platform.storage import migrations, partitions
from heron.platform.storage.base import (
    AgentRecord,
    EventQuery,
    EventRow,
    IngestResult,
    StoredEvent,
    TokenKind,
    TokenRecord,
)
from heron.platform.storage.db import Database, DatabaseUnavailable, is_transient
from heron.platform.storage.migrations import HOUR_NS
from heron.platform.storage.schema import (
    agents,
    alert_log,
    alerts,
    baselines,
    batches,
    detections,
    event_counts,
    graph_edges,
    graph_nodes,
    notifications,
    suppressions,
    tokens,
)
from heron.platform.storage.schema import events as event_table

log = logging.getLogger("heron.platform.storage")

DELETE_CHUNK = 5000  # rows per retention transaction on SQLite
ANALYSIS_CHUNK = 1000  # ids per pruning transaction (an IN list: stays under SQLite's parameter limit)
INDEXED_TEXT_BYTES = 1024  # B-tree entries stay far below PostgreSQL's ~2.7 KB limit
GRAPH_MIN_AGE_NS = 30 * 86_400 * 10**9  # graph edges not seen for this long (or the retention, if longer) go
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _text(value: str | None) -> str | None:
    """PostgreSQL text cannot hold NUL; SQLite could, but both must store the same thing."""
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


def indexed_text(value: str | None) -> str | None:
    """``value`` as stored in an indexed column: NUL replaced, cut to INDEXED_TEXT_BYTES of UTF-8
    (never inside a character)."""
    value = _text(value)
    if value is None or len(value) <= INDEXED_TEXT_BYTES // 4:  # fast path: cannot be longer in UTF-8
        return value
    raw = value.encode("utf-8", "replace")
    return value if len(raw) <= INDEXED_TEXT_BYTES else raw[:INDEXED_TEXT_BYTES].decode("utf-8", "ignore")


def _check_int64(row: EventRow) -> None:
    """Refuse what neither database can hold before writing anything (SQLite would raise
    OverflowError, PostgreSQL a DataError that aborts the transaction)."""
    lo, hi = _INT64
    for value in (row.ts, row.pid):
        if isinstance(value, int) and not lo <= value <= hi:
            raise OverflowError("integer out of range (64-bit signed)")


class SqlStorage:
    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    def open(cls, url: str) -> SqlStorage:
        """Open ``url`` (a SQLite path or postgresql://), migrate it and create the coming partitions."""
        db = Database(url)
        try:
            migrations.migrate(db)
            if db.dialect == "postgresql":
                with db.begin() as conn:
                    partitions.ensure_partitions(conn, time.time_ns())
        except BaseException:
            db.close()
            raise
        return cls(db)

    @property
    def path(self) -> str | None:
        """The SQLite file, or None on PostgreSQL."""
        return self.db.path

    # -- tokens ----------------------------------------------------------------------------------
    def add_token(self, token_hash: str, kind: TokenKind, agent_id: str | None, now: int) -> None:
        with self.db.begin() as c:
            c.execute(sa.insert(tokens).values(token_hash=token_hash, kind=kind, agent_id=agent_id, created=now))

    def find_token(self, token_hash: str) -> TokenRecord | None:
        with self.db.read() as c:
            row = c.execute(sa.select(tokens.c.token_hash, tokens.c.kind, tokens.c.agent_id, tokens.c.created,
                                      tokens.c.revoked).where(tokens.c.token_hash == token_hash)).first()
        if row is None:
            return None
        return TokenRecord(str(row.token_hash), row.kind, row.agent_id, int(row.created), row.revoked)

    def revoke_token(self, token_hash: str, now: int) -> bool:
        with self.db.begin() as c:
            result = c.execute(sa.update(tokens).where(tokens.c.token_hash == token_hash, tokens.c.revoked.is_(None))
                               .values(revoked=now))
            return result.rowcount == 1

    # -- agents ----------------------------------------------------------------------------------
    def add_agent(self, agent: AgentRecord, token_hash: str) -> None:
        with self.db.begin() as c:
            c.execute(sa.insert(agents).values(
                agent_id=agent.agent_id, name=_text(agent.name), host=_text(agent.host),
                hostname=_text(agent.hostname), version=_text(agent.version), first_seen=agent.first_seen,
                last_seen=agent.last_seen, last_health=_text(agent.last_health)))
            c.execute(sa.insert(tokens).values(token_hash=token_hash, kind="agent", agent_id=agent.agent_id,
                                               created=agent.first_seen))

    def update_agent(self, agent_id: str, host: str, hostname: str, version: str, now: int) -> bool:
        with self.db.begin() as c:
            result = c.execute(sa.update(agents).where(agents.c.agent_id == agent_id).values(
                host=_text(host), hostname=_text(hostname), version=_text(version), last_seen=now))
            return result.rowcount == 1

    _AGENT_COLUMNS = (agents.c.agent_id, agents.c.name, agents.c.host, agents.c.hostname, agents.c.version,
                      agents.c.first_seen, agents.c.last_seen, agents.c.last_health)

    def get_agent(self, agent_id: str) -> AgentRecord | None:
        with self.db.read() as c:
            row = c.execute(sa.select(*self._AGENT_COLUMNS).where(agents.c.agent_id == agent_id)).first()
        return AgentRecord(*row) if row is not None else None

    def list_agents(self) -> list[AgentRecord]:
        with self.db.read() as c:
            rows = c.execute(sa.select(*self._AGENT_COLUMNS).order_by(agents.c.hostname, agents.c.agent_id)).all()
        return [AgentRecord(*r) for r in rows]

    # -- events ----------------------------------------------------------------------------------
    def has_batch(self, agent_id: str, batch_id: str) -> bool:
        with self.db.read() as c:
            return c.execute(sa.select(sa.literal(1)).where(
                batches.c.agent_id == agent_id, batches.c.batch_id == batch_id)).first() is not None

    def ingest_batch(
        self, agent_id: str, batch_id: str, events: list[EventRow], last_health: bytes | None, now: int,
        *, analyse: Callable[[Connection], None] | None = None,
    ) -> IngestResult:
        """Store the batch; ``analyse`` runs in the same transaction after the events are inserted,
        only for a new batch (a duplicate repeats none of it), in a savepoint (see the module doc)."""
        for row in events:
            _check_int64(row)
        with self.db.begin() as c:
            inserted = c.execute(
                self.db.insert(batches).values(agent_id=agent_id, batch_id=batch_id, received_at=now,
                                               n_events=len(events))
                .on_conflict_do_nothing(index_elements=["agent_id", "batch_id"])
                .returning(batches.c.batch_id)).first()  # (psycopg's rowcount is -1 here)
            if inserted is None:
                return IngestResult(accepted=0, duplicate=True)
            hostname = c.execute(sa.select(agents.c.hostname).where(agents.c.agent_id == agent_id)).scalar()
            if events:
                host = indexed_text(hostname or "")
                c.execute(sa.insert(event_table), [
                    {"agent_id": agent_id, "hostname": host, "type": indexed_text(e.type), "ts": e.ts,
                     "key": indexed_text(e.key), "pid": e.pid, "exe": indexed_text(e.exe),
                     "cmdline": _text(e.cmdline), "data": e.data.decode()} for e in events])
                self._count_events(c, agent_id, events)
            values: dict[str, Any] = {"last_seen": now}
            if last_health is not None:
                values["last_health"] = last_health.decode()
            c.execute(sa.update(agents).where(agents.c.agent_id == agent_id).values(**values))
            analysis_error = self._analyse(c, analyse) if analyse is not None else None
        return IngestResult(accepted=len(events), duplicate=False, analysis_error=analysis_error)

    def _count_events(self, conn: Connection, agent_id: str, events: list[EventRow]) -> None:
        """Add the batch to the hourly per-type counters (sorted: concurrent servers lock rows in one order)."""
        counts = Counter((e.ts - e.ts % HOUR_NS, indexed_text(e.type)) for e in events)
        ins = self.db.insert(event_counts)
        stmt = ins.on_conflict_do_update(index_elements=["hour", "type", "agent_id"],
                                         set_={"n": event_counts.c.n + ins.excluded.n})
        conn.execute(stmt, [{"hour": h, "type": t, "agent_id": agent_id, "n": n}
                            for (h, t), n in sorted(counts.items())])

    @staticmethod
    def _analyse(conn: Connection, analyse: Callable[[Connection], None]) -> Exception | None:
        """Run ``analyse`` in a savepoint. A transient database error propagates (the whole batch
        fails, the agent resends it); any other error rolls back the savepoint only and is returned."""
        try:
            with conn.begin_nested():
                analyse(conn)
        except Exception as e:
            if isinstance(e, DatabaseUnavailable) or is_transient(e):
                raise
            return e
        return None

    def query_events(self, query: EventQuery) -> list[StoredEvent]:
        e = event_table
        where: list[sa.ColumnElement[bool]] = []
        for column, text in ((e.c.type, query.type), (e.c.hostname, query.hostname), (e.c.key, query.key)):
            if text is not None:
                where.append(column == indexed_text(text))  # as stored: cut like the column
        for column, value in ((e.c.agent_id, query.agent_id), (e.c.pid, query.pid)):
            if value is not None:
                where.append(column == value)
        if query.types:
            where.append(e.c.type.in_(query.types))
        if query.exe is not None:
            where.append(sa.or_(e.c.exe == indexed_text(query.exe),
                                e.c.exe.like("%/" + _like_escape(query.exe), escape="\\")))
        if query.text:
            # Case-insensitive on both databases (SQLite's LIKE already is for ASCII).
            where.append(e.c.cmdline.ilike("%" + _like_escape(query.text) + "%", escape="\\"))
        if query.since is not None:
            where.append(e.c.ts >= query.since)
        if query.until is not None:
            where.append(e.c.ts < query.until)
        if query.after_id is not None:
            where.append(e.c.id > query.after_id)
        order = e.c.id.asc() if query.after_id is not None else e.c.id.desc()
        stmt = (sa.select(e.c.id, e.c.agent_id, e.c.hostname, e.c.data).where(*where)
                .order_by(order).limit(max(0, query.limit)))
        with self.db.read() as c:
            rows = c.execute(stmt).all()
        return [StoredEvent(int(i), str(a), str(h), str(d).encode()) for i, a, h, d in rows]

    def maintain_partitions(self, now: int | None = None) -> list[str]:
        """PostgreSQL: create the coming days' event partitions (run at start and hourly, whatever
        the retention); returns the partitions made. Nothing to do on SQLite."""
        if self.db.dialect != "postgresql":
            return []
        with self.db.begin() as c:
            return partitions.ensure_partitions(c, time.time_ns() if now is None else now)

    def delete_events_before(self, ts: int, now: int | None = None) -> int:
        """Retention: events and batch records older than ``ts`` (returns how many events; on
        PostgreSQL the dropped partitions count by the planner's estimate), then ``prune_analysis``."""
        deleted = partitions.drop_partitions_before(self.db, ts) if self.db.dialect == "postgresql" else 0
        deleted += self._delete_in_chunks(ts)
        with self.db.begin() as c:
            c.execute(sa.delete(batches).where(batches.c.received_at < ts))
            c.execute(sa.delete(event_counts).where(event_counts.c.hour < ts - ts % HOUR_NS))
        self.prune_analysis(ts, time.time_ns() if now is None else now)
        return deleted

    def prune_analysis(self, ts: int, now: int) -> dict[str, int]:
        """Delete what analysis stored and no longer needs, in chunks; returns the counts per table.

        - closed alerts last updated before ``ts``, with their detections and log;
        - sent or failed notifications created before ``ts`` (pending ones are still being retried);
        - suppressions that expired before ``ts``;
        - graph edges with baseline learned/expected not seen since the graph cutoff (``ts`` or
          ``now - GRAPH_MIN_AGE_NS``, the earlier): 'new' edges wait for an analyst;
        - then nodes not seen since that cutoff with no edge left, and the baselines of those that
          were process clusters (a cluster seen again learns anew).
        """
        graph_cutoff = min(ts, now - GRAPH_MIN_AGE_NS)
        n, g = graph_nodes.c, graph_edges.c
        counts = {
            "alerts": self._prune(alerts.c.id, [alerts.c.state == "closed", alerts.c.updated < ts],
                                  cascade=(detections.c.alert_id, alert_log.c.alert_id)),
            "notifications": self._prune(notifications.c.id, [notifications.c.state.in_(["sent", "failed"]),
                                                              notifications.c.created < ts]),
            "suppressions": self._prune(suppressions.c.id, [suppressions.c.expires.is_not(None),
                                                            suppressions.c.expires < ts]),
            "graph_edges": self._prune(g.id, [g.baseline.in_(["learned", "expected"]), g.last_seen < graph_cutoff]),
            # last_seen also guards against a concurrent batch adding an edge to the node: its upsert
            # moves last_seen, which PostgreSQL re-checks on the locked row before deleting it.
            "graph_nodes": self._prune(n.id, [n.last_seen < graph_cutoff,
                                              ~sa.exists().where(g.src == n.id), ~sa.exists().where(g.dst == n.id)],
                                       cascade=(baselines.c.cluster,)),
        }
        if any(counts.values()):
            log.info("retention: pruned %s", ", ".join(f"{v} {k}" for k, v in counts.items() if v))
        return counts

    def _prune(self, id_column: sa.Column[int], where: Sequence[sa.ColumnElement[bool]],
               cascade: Sequence[sa.Column[int]] = ()) -> int:
        """Delete the rows of ``id_column``'s table matching ``where``, ANALYSIS_CHUNK per transaction,
        with the rows of other tables whose ``cascade`` column refers to them."""
        table = id_column.table
        deleted = 0
        while True:
            with self.db.begin() as c:
                ids = [int(i) for i in c.execute(sa.select(id_column).where(*where).limit(ANALYSIS_CHUNK)).scalars()]
                gone = ([int(i) for i in c.execute(sa.delete(table).where(id_column.in_(ids), *where)
                                                   .returning(id_column)).scalars()] if ids else [])
                for column in cascade:  # only for rows still matching when deleted (re-checked above)
                    if gone:
                        c.execute(sa.delete(column.table).where(column.in_(gone)))
            deleted += len(gone)
            if len(ids) < ANALYSIS_CHUNK:
                return deleted

    def _delete_in_chunks(self, ts: int) -> int:
        """Rows older than ``ts`` left after dropping partitions (SQLite: all of them; PostgreSQL:
        the partition holding the cutoff and the default partition)."""
        deleted = 0
        while True:
            chunk = sa.select(event_table.c.id).where(event_table.c.ts < ts).limit(DELETE_CHUNK).scalar_subquery()
            with self.db.begin() as c:
                n = c.execute(sa.delete(event_table).where(event_table.c.ts < ts, event_table.c.id.in_(chunk))).rowcount
            deleted += n
            if n < DELETE_CHUNK:
                return deleted

    def count_events(self) -> int:
        with self.db.read() as c:
            return int(c.execute(sa.select(sa.func.count()).select_from(event_table)).scalar_one())

    def close(self) -> None:
        self.db.close()
