"""The SQLite schema as releases before migration 3 made it (their migrations 1 and 2, verbatim):
fixtures for the upgrade tests. Never edit: real databases were made with exactly this."""

from __future__ import annotations

import sqlite3
from pathlib import Path

V1 = """
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
"""

V2 = """
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
"""


def make_old_database(path: Path, version: int) -> None:
    """A SQLite database exactly as the old code left it at ``version`` (1 or 2)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied INTEGER)")
        conn.execute("BEGIN IMMEDIATE")
        for number, sql in ((1, V1), (2, V2))[:version]:  # statement by statement: executescript commits
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_version (version, applied) VALUES (?, ?)", (number, 1))
        conn.execute("COMMIT")
    finally:
        conn.close()


def _statements(sql: str) -> list[str]:
    lines = [line.split("--", 1)[0] for line in sql.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
