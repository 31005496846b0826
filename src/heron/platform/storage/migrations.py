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
    (
        2,
        """
        CREATE TABLE package_scopes (                  -- heron.platform.packages
            agent_id     TEXT NOT NULL,
            scope        TEXT NOT NULL,                -- 'host' or a container id
            container_id TEXT,
            distro       TEXT NOT NULL DEFAULT '',
            full_ts      INTEGER NOT NULL DEFAULT 0,   -- newest complete inventory applied
            updated_ts   INTEGER NOT NULL DEFAULT 0,
            errors       TEXT NOT NULL DEFAULT '[]',   -- JSON list
            PRIMARY KEY (agent_id, scope)
        );
        CREATE TABLE packages (
            agent_id  TEXT NOT NULL,
            scope     TEXT NOT NULL,
            purl      TEXT NOT NULL,
            location  TEXT NOT NULL DEFAULT '',
            ecosystem TEXT NOT NULL,
            name      TEXT NOT NULL,
            version   TEXT NOT NULL,
            data      TEXT NOT NULL,                   -- the Package, JSON
            ts        INTEGER NOT NULL,                -- the inventory record that last set this row
            removed   INTEGER NOT NULL DEFAULT 0,      -- 1: removed at ts (kept so a late retry cannot revive it)
            PRIMARY KEY (agent_id, scope, purl, location)
        );
        CREATE INDEX packages_name ON packages(ecosystem, name);
        CREATE TABLE package_activity (
            agent_id     TEXT NOT NULL,
            scope        TEXT NOT NULL,
            purl         TEXT NOT NULL,
            active       INTEGER NOT NULL,
            last_used_ts INTEGER NOT NULL DEFAULT 0,
            ts           INTEGER NOT NULL,
            processes    TEXT NOT NULL DEFAULT '[]',   -- ProcessRef list, JSON
            files        TEXT NOT NULL DEFAULT '[]',
            PRIMARY KEY (agent_id, scope, purl)
        );
        CREATE TABLE listeners (
            agent_id    TEXT NOT NULL,
            protocol    TEXT NOT NULL,
            addr        TEXT NOT NULL,
            port        INTEGER NOT NULL,
            process_key TEXT NOT NULL DEFAULT '',
            pid         INTEGER NOT NULL DEFAULT 0,
            exe         TEXT NOT NULL DEFAULT '',
            state       TEXT NOT NULL,
            ts          INTEGER NOT NULL,
            PRIMARY KEY (agent_id, protocol, addr, port, process_key)
        );
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
