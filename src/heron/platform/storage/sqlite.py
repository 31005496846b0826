"""SQLite implementation of the Storage protocol (stdlib sqlite3, WAL mode).

One connection guarded by a lock: SQLite serialises writers anyway, and this first platform serves
a handful of agents. Readers can move to their own connections (WAL allows it) when that matters.
The connection runs in autocommit mode and every write takes an explicit ``BEGIN IMMEDIATE``, so
a batch and its events commit together or not at all.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from heron.platform.storage import migrations
from heron.platform.storage.base import (
    AgentRecord,
    EventQuery,
    EventRow,
    IngestResult,
    StoredEvent,
    TokenKind,
    TokenRecord,
)

_DELETE_CHUNK = 5000  # rows per retention transaction, so ingest never waits long on the lock


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class SqliteStorage:
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            # Create the file 0600 ourselves: sqlite would use the umask.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.execute("PRAGMA foreign_keys=ON")
        with self._lock:
            self.schema_version = migrations.migrate(self._conn, time.time_ns())

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _read(self, sql: str, params: tuple[object, ...] | list[object] = ()) -> list[Any]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    # -- tokens ----------------------------------------------------------------------------------
    def add_token(self, token_hash: str, kind: TokenKind, agent_id: str | None, now: int) -> None:
        with self._write() as c:
            c.execute(
                "INSERT INTO tokens (token_hash, kind, agent_id, created) VALUES (?, ?, ?, ?)",
                (token_hash, kind, agent_id, now),
            )

    def find_token(self, token_hash: str) -> TokenRecord | None:
        rows = self._read(
            "SELECT token_hash, kind, agent_id, created, revoked FROM tokens WHERE token_hash = ?",
            (token_hash,),
        )
        if not rows:
            return None
        h, kind, agent_id, created, revoked = rows[0]
        return TokenRecord(str(h), kind, agent_id, int(created), revoked)

    def revoke_token(self, token_hash: str, now: int) -> bool:
        with self._write() as c:
            cur = c.execute(
                "UPDATE tokens SET revoked = ? WHERE token_hash = ? AND revoked IS NULL", (now, token_hash)
            )
            return cur.rowcount == 1

    # -- agents ----------------------------------------------------------------------------------
    def add_agent(self, agent: AgentRecord, token_hash: str) -> None:
        with self._write() as c:
            c.execute(
                "INSERT INTO agents (agent_id, name, host, hostname, version, first_seen, last_seen,"
                " last_health) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (agent.agent_id, agent.name, agent.host, agent.hostname, agent.version,
                 agent.first_seen, agent.last_seen, agent.last_health),
            )
            c.execute(
                "INSERT INTO tokens (token_hash, kind, agent_id, created) VALUES (?, 'agent', ?, ?)",
                (token_hash, agent.agent_id, agent.first_seen),
            )

    def update_agent(self, agent_id: str, host: str, hostname: str, version: str, now: int) -> bool:
        with self._write() as c:
            cur = c.execute(
                "UPDATE agents SET host = ?, hostname = ?, version = ?, last_seen = ? WHERE agent_id = ?",
                (host, hostname, version, now, agent_id),
            )
            return cur.rowcount == 1

    _SELECT_AGENTS = (
        "SELECT agent_id, name, host, hostname, version, first_seen, last_seen, last_health FROM agents"
    )

    def get_agent(self, agent_id: str) -> AgentRecord | None:
        rows = self._read(self._SELECT_AGENTS + " WHERE agent_id = ?", (agent_id,))
        return AgentRecord(*rows[0]) if rows else None

    def list_agents(self) -> list[AgentRecord]:
        rows = self._read(self._SELECT_AGENTS + " ORDER BY hostname, agent_id")
        return [AgentRecord(*r) for r in rows]

    # -- events ----------------------------------------------------------------------------------
    def has_batch(self, agent_id: str, batch_id: str) -> bool:
        return bool(
            self._read("SELECT 1 FROM batches WHERE agent_id = ? AND batch_id = ?", (agent_id, batch_id))
        )

    def ingest_batch(
        self, agent_id: str, batch_id: str, events: list[EventRow], last_health: bytes | None, now: int
    ) -> IngestResult:
        with self._write() as c:
            cur = c.execute(
                "INSERT OR IGNORE INTO batches (agent_id, batch_id, received_at, n_events)"
                " VALUES (?, ?, ?, ?)",
                (agent_id, batch_id, now, len(events)),
            )
            if cur.rowcount == 0:
                return IngestResult(accepted=0, duplicate=True)
            row = c.execute("SELECT hostname FROM agents WHERE agent_id = ?", (agent_id,)).fetchone()
            hostname = row[0] if row else ""
            c.executemany(
                "INSERT INTO events (agent_id, hostname, type, ts, key, pid, exe, cmdline, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(agent_id, hostname, e.type, e.ts, e.key, e.pid, e.exe, e.cmdline, e.data.decode())
                 for e in events],
            )
            if last_health is not None:
                c.execute(
                    "UPDATE agents SET last_seen = ?, last_health = ? WHERE agent_id = ?",
                    (now, last_health.decode(), agent_id),
                )
            else:
                c.execute("UPDATE agents SET last_seen = ? WHERE agent_id = ?", (now, agent_id))
        return IngestResult(accepted=len(events), duplicate=False)

    def query_events(self, query: EventQuery) -> list[StoredEvent]:
        where: list[str] = []
        params: list[object] = []
        for column, value in (("type", query.type), ("agent_id", query.agent_id),
                              ("hostname", query.hostname), ("key", query.key), ("pid", query.pid)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if query.types:
            where.append(f"type IN ({','.join('?' * len(query.types))})")
            params.extend(query.types)
        if query.exe is not None:
            where.append("(exe = ? OR exe LIKE ? ESCAPE '\\')")
            params += [query.exe, "%/" + _like_escape(query.exe)]
        if query.text:
            where.append("cmdline LIKE ? ESCAPE '\\'")
            params.append("%" + _like_escape(query.text) + "%")
        if query.since is not None:
            where.append("ts >= ?")
            params.append(query.since)
        if query.until is not None:
            where.append("ts < ?")
            params.append(query.until)
        if query.after_id is not None:
            where.append("id > ?")
            params.append(query.after_id)
        order = "ASC" if query.after_id is not None else "DESC"
        sql = "SELECT id, agent_id, hostname, data FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY id {order} LIMIT ?"
        params.append(max(0, query.limit))
        return [StoredEvent(int(i), str(a), str(h), str(d).encode())
                for i, a, h, d in self._read(sql, params)]

    def delete_events_before(self, ts: int) -> int:
        deleted = 0
        while True:
            with self._write() as c:
                cur = c.execute(
                    "DELETE FROM events WHERE id IN (SELECT id FROM events WHERE ts < ? LIMIT ?)",
                    (ts, _DELETE_CHUNK),
                )
                n = cur.rowcount
            deleted += n
            if n < _DELETE_CHUNK:
                break
        with self._write() as c:
            c.execute("DELETE FROM batches WHERE received_at < ?", (ts,))
        return deleted

    def count_events(self) -> int:
        return int(self._read("SELECT COUNT(*) FROM events")[0][0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
