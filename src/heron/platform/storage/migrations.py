"""Numbered schema migrations for the SQLite store.

Each entry is applied once, in order, inside one transaction that also records its number in
``schema_version``; a database is never left half-migrated. Append new migrations at the end and
never edit one that has shipped (existing databases already ran it).
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
        CREATE TABLE agents (
            agent_id    TEXT PRIMARY KEY,
            name        TEXT NOT NULL DEFAULT '',
            host        TEXT NOT NULL DEFAULT '{}',   -- host facts, JSON
            hostname    TEXT NOT NULL DEFAULT '',
            version     TEXT NOT NULL DEFAULT '',
            first_seen  INTEGER NOT NULL,              -- ns since the epoch
            last_seen   INTEGER NOT NULL,
            last_health TEXT                           -- last agent.health event, JSON
        );
        CREATE TABLE tokens (
            token_hash TEXT PRIMARY KEY,               -- sha256 hex; the token itself is never stored
            kind       TEXT NOT NULL CHECK (kind IN ('admin', 'reader', 'enroll', 'agent')),
            agent_id   TEXT REFERENCES agents(agent_id),
            created    INTEGER NOT NULL,
            revoked    INTEGER                         -- ns when revoked, NULL while valid
        );
        CREATE TABLE batches (
            agent_id    TEXT NOT NULL,
            batch_id    TEXT NOT NULL,
            received_at INTEGER NOT NULL,
            n_events    INTEGER NOT NULL,
            PRIMARY KEY (agent_id, batch_id)
        ) WITHOUT ROWID;
        CREATE INDEX batches_received ON batches(received_at);
        CREATE TABLE events (
            id       INTEGER PRIMARY KEY,
            agent_id TEXT NOT NULL,
            hostname TEXT NOT NULL,
            type     TEXT NOT NULL,
            ts       INTEGER NOT NULL,
            key      TEXT,
            pid      INTEGER,
            exe      TEXT,
            cmdline  TEXT,                             -- exe + argv, for text search
            data     TEXT NOT NULL                     -- the event as JSON
        );
        CREATE INDEX events_ts ON events(ts);
        CREATE INDEX events_type_id ON events(type, id);
        CREATE INDEX events_agent_id ON events(agent_id, id);
        CREATE INDEX events_host_id ON events(hostname, id);
        CREATE INDEX events_key ON events(key);
        CREATE INDEX events_pid ON events(pid);
        CREATE INDEX events_exe ON events(exe);
        """,
    ),
)


def current_version(conn: sqlite3.Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied INTEGER)")
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def migrate(conn: sqlite3.Connection, now_ns: int) -> int:
    """Apply every migration newer than the database; returns the resulting version."""
    version = current_version(conn)
    for number, sql in MIGRATIONS:
        if number <= version:
            continue
        # executescript would COMMIT first; run the statements one by one inside our transaction.
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version, applied) VALUES (?, ?)", (number, now_ns))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        version = number
    return version


def _statements(sql: str) -> list[str]:
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
