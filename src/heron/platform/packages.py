"""Per-agent package inventories, package activity and listening sockets, kept from ingested events.

``apply`` runs on every ingested batch, *before* the batch is stored (so a crash between the two
is repaired by the agent's retry), and is idempotent and order-tolerant: each row remembers the
timestamp of the record that last set it and only a record at least as new changes it
(last-writer-wins per package). Removed packages stay as tombstones until the next complete
inventory, so a retried older "added" cannot revive them.

- ``package.inventory``: a complete record (``full``) replaces the scope: packages it does not
  list are marked removed, except those of a package manager the record reports an error for
  (their database could not be read, so absence means nothing; an error not naming a manager
  protects every package). Records older than the scope's last complete one are ignored.
- ``package.activity``: ``active`` uses set a package active (with processes, files, last use);
  ``inactive`` purls are no longer used (their last use becomes the record's time); a ``full``
  record makes every other package of the scope inactive.
- ``net.listen``: open/closed listening sockets per process; a start-up snapshot
  (source ``network.snapshot``) drops what an earlier agent run left open.

Tables live in the platform's database (migration 2); this class opens its own short-lived
connections to the same file, so it needs a file-backed store.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from heron.schema.events import NetListen, Package, PackageActivity, PackageInventory, ProcessRef
from heron.vuln.ecosystems import OS_MANAGERS

log = logging.getLogger("heron.platform.packages")

SNAPSHOT_SOURCE = "network.snapshot"
_SNAPSHOT_SLACK_NS = 60 * 1_000_000_000  # listeners older than a snapshot by this much are gone
_CLOSED_KEEP_NS = 86_400 * 1_000_000_000  # closed listener rows kept a day (late retries)
_KNOWN_MANAGERS = OS_MANAGERS | {"python", "npm"}

_encode = msgspec.json.Encoder().encode
_decode_package = msgspec.json.Decoder(Package).decode
_decode_refs = msgspec.json.Decoder(list[ProcessRef]).decode


@dataclass(frozen=True, slots=True)
class InstalledPackage:
    """One installed package of one agent's scope, with its activity."""

    agent_id: str
    hostname: str
    scope: str
    container_id: str | None
    package: Package
    active: bool
    last_used_ts: int
    processes: tuple[ProcessRef, ...]
    files: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Listener:
    agent_id: str
    protocol: str
    addr: str
    port: int
    process_key: str
    pid: int
    exe: str

    @property
    def public(self) -> bool:
        """Reachable from other hosts: any address but loopback (unparseable ones count as public)."""
        try:
            return not ipaddress.ip_address(self.addr.split("%", 1)[0]).is_loopback
        except ValueError:
            return True


def store_path(storage: object) -> Path | None:
    """The database file of a file-backed platform store (SqliteStorage), else None."""
    path = getattr(storage, "path", None)
    if not isinstance(path, str) or not path or path == ":memory:":
        return None
    return Path(path)


def _protected_managers(errors: Sequence[str]) -> set[str] | None:
    """Managers whose packages a complete record must not remove; None means all of them."""
    protected: set[str] = set()
    for error in errors:
        head = error.split(":", 1)[0].strip()
        if head not in _KNOWN_MANAGERS:
            return None
        protected.add(head)
    return protected


class PackageStore:
    def __init__(self, db_path: Path | str) -> None:
        self.path = Path(db_path)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        try:
            yield conn
        finally:
            conn.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -- ingest ----------------------------------------------------------------------------------
    def apply(self, agent_id: str, events: Sequence[object]) -> int:
        """Fold the package and listener events of one batch in; returns how many were relevant."""
        relevant: list[PackageInventory | PackageActivity | NetListen] = [
            e for e in events if isinstance(e, PackageInventory | PackageActivity | NetListen)]
        if not relevant:
            return 0
        relevant.sort(key=lambda e: e.ts)
        with self._write() as c:
            snapshots = [e.ts for e in relevant if isinstance(e, NetListen) and e.source == SNAPSHOT_SOURCE]
            if snapshots:
                c.execute("DELETE FROM listeners WHERE agent_id = ? AND ts < ?",
                          (agent_id, min(snapshots) - _SNAPSHOT_SLACK_NS))
            for event in relevant:
                if isinstance(event, PackageInventory):
                    self._inventory(c, agent_id, event)
                elif isinstance(event, PackageActivity):
                    self._activity(c, agent_id, event)
                elif isinstance(event, NetListen):
                    self._listen(c, agent_id, event)
            newest = max(e.ts for e in relevant)
            c.execute("DELETE FROM listeners WHERE agent_id = ? AND state = 'closed' AND ts < ?",
                      (agent_id, newest - _CLOSED_KEEP_NS))
        return len(relevant)

    def _inventory(self, c: sqlite3.Connection, agent_id: str, ev: PackageInventory) -> None:
        row = c.execute("SELECT full_ts FROM package_scopes WHERE agent_id = ? AND scope = ?",
                        (agent_id, ev.scope)).fetchone()
        if row is not None and ev.ts < row[0]:
            return  # a complete inventory newer than this record has been applied
        c.execute(
            "INSERT INTO package_scopes (agent_id, scope, container_id, distro, full_ts, updated_ts, errors)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id, scope) DO UPDATE SET"
            " container_id = excluded.container_id, distro = excluded.distro,"
            " full_ts = MAX(full_ts, excluded.full_ts), updated_ts = MAX(updated_ts, excluded.updated_ts),"
            " errors = CASE WHEN excluded.updated_ts >= updated_ts THEN excluded.errors ELSE errors END",
            (agent_id, ev.scope, ev.container_id, ev.distro, ev.ts if ev.full else 0, ev.ts, json.dumps(ev.errors)))
        upsert = (
            "INSERT INTO packages (agent_id, scope, purl, location, ecosystem, name, version, data, ts, removed)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id, scope, purl, location) DO UPDATE SET"
            " ecosystem = excluded.ecosystem, name = excluded.name, version = excluded.version,"
            " data = excluded.data, ts = excluded.ts, removed = excluded.removed WHERE excluded.ts >= packages.ts")
        c.executemany(upsert, [(agent_id, ev.scope, p.purl, p.location, p.ecosystem, p.name, p.version,
                                _encode(p).decode(), ev.ts, 0) for p in ev.added])
        c.executemany(upsert, [(agent_id, ev.scope, p.purl, p.location, p.ecosystem, p.name, p.version,
                                _encode(p).decode(), ev.ts, 1) for p in ev.removed])
        if not ev.full:
            return
        protected = _protected_managers(ev.errors)
        if protected is None:
            return
        # Everything the complete record did not (re)set is gone, but for unreadable databases.
        stale = c.execute("SELECT purl, location, data FROM packages WHERE agent_id = ? AND scope = ?"
                          " AND ts < ? AND removed = 0", (agent_id, ev.scope, ev.ts)).fetchall()
        gone = [(ev.ts, agent_id, ev.scope, purl, location) for purl, location, data in stale
                if _decode_package(data).manager not in protected]
        c.executemany("UPDATE packages SET removed = 1, ts = ? WHERE agent_id = ? AND scope = ? AND purl = ?"
                      " AND location = ?", gone)
        # Tombstones older than a complete inventory can no longer be contradicted by a retry.
        c.execute("DELETE FROM packages WHERE agent_id = ? AND scope = ? AND removed = 1 AND ts < ?",
                  (agent_id, ev.scope, ev.ts))

    def _activity(self, c: sqlite3.Connection, agent_id: str, ev: PackageActivity) -> None:
        c.executemany(
            "INSERT INTO package_activity (agent_id, scope, purl, active, last_used_ts, ts, processes, files)"
            " VALUES (?, ?, ?, 1, ?, ?, ?, ?) ON CONFLICT (agent_id, scope, purl) DO UPDATE SET active = 1,"
            " last_used_ts = MAX(last_used_ts, excluded.last_used_ts), ts = excluded.ts,"
            " processes = excluded.processes, files = excluded.files WHERE excluded.ts >= package_activity.ts",
            [(agent_id, ev.scope, use.purl, use.last_used_ts or ev.ts, ev.ts, _encode(use.processes).decode(),
              json.dumps(use.files)) for use in ev.active])
        c.executemany(
            "INSERT INTO package_activity (agent_id, scope, purl, active, last_used_ts, ts)"
            " VALUES (?, ?, ?, 0, ?, ?) ON CONFLICT (agent_id, scope, purl) DO UPDATE SET active = 0,"
            " last_used_ts = MAX(last_used_ts, excluded.last_used_ts), ts = excluded.ts"
            " WHERE excluded.ts >= package_activity.ts",
            [(agent_id, ev.scope, purl, ev.ts, ev.ts) for purl in ev.inactive])
        if ev.full:
            c.execute("UPDATE package_activity SET active = 0, last_used_ts = MAX(last_used_ts, ?), ts = ?"
                      " WHERE agent_id = ? AND scope = ? AND active = 1 AND ts < ?",
                      (ev.ts, ev.ts, agent_id, ev.scope, ev.ts))

    def _listen(self, c: sqlite3.Connection, agent_id: str, ev: NetListen) -> None:
        p = ev.process
        c.execute(
            "INSERT INTO listeners (agent_id, protocol, addr, port, process_key, pid, exe, state, ts)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (agent_id, protocol, addr, port, process_key)"
            " DO UPDATE SET pid = excluded.pid, exe = excluded.exe, state = excluded.state, ts = excluded.ts"
            " WHERE excluded.ts >= listeners.ts",
            (agent_id, ev.protocol, ev.addr, ev.port, p.key if p else "", p.pid if p else 0,
             p.exe if p else "", "closed" if ev.state == "closed" else "open", ev.ts))

    # -- queries ---------------------------------------------------------------------------------
    def installed(self, hostname: str | None = None, agent_id: str | None = None) -> list[InstalledPackage]:
        """Installed packages (not removed) with their activity, optionally of one host/agent."""
        sql = (
            "SELECT p.agent_id, COALESCE(g.hostname, ''), p.scope, s.container_id, p.data,"
            " COALESCE(a.active, 0), COALESCE(a.last_used_ts, 0), COALESCE(a.processes, '[]'),"
            " COALESCE(a.files, '[]') FROM packages p"
            " LEFT JOIN agents g ON g.agent_id = p.agent_id"
            " LEFT JOIN package_scopes s ON s.agent_id = p.agent_id AND s.scope = p.scope"
            " LEFT JOIN package_activity a ON a.agent_id = p.agent_id AND a.scope = p.scope AND a.purl = p.purl"
            " WHERE p.removed = 0 AND (? IS NULL OR g.hostname = ?) AND (? IS NULL OR p.agent_id = ?)"
            " ORDER BY g.hostname, p.scope, p.name")
        params = (hostname or None, hostname, agent_id or None, agent_id)
        with self._connect() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [InstalledPackage(agent_id=str(a), hostname=str(h), scope=str(s), container_id=cid,
                                 package=_decode_package(data), active=bool(active), last_used_ts=int(last),
                                 processes=tuple(_decode_refs(procs)), files=tuple(json.loads(files)))
                for a, h, s, cid, data, active, last, procs, files in rows]

    def listeners(self, agent_ids: Collection[str] | None = None) -> list[Listener]:
        """Open listening sockets."""
        with self._connect() as conn:
            rows = conn.execute("SELECT agent_id, protocol, addr, port, process_key, pid, exe FROM listeners"
                                " WHERE state = 'open'").fetchall()
        wanted = set(agent_ids) if agent_ids is not None else None
        return [Listener(str(a), str(pr), str(ad), int(po), str(k), int(pid), str(exe))
                for a, pr, ad, po, k, pid, exe in rows if wanted is None or a in wanted]

    def ecosystems(self) -> list[tuple[str, str, str]]:
        """Distinct (ecosystem, distro, manager) of installed packages (for ``heron vulndb update``)."""
        with self._connect() as conn:
            rows = conn.execute("SELECT DISTINCT data FROM packages WHERE removed = 0").fetchall()
        seen = {(p.ecosystem, p.distro, p.manager) for p in (_decode_package(r[0]) for r in rows)}
        return sorted(seen)


# Batches whose package update was rolled back (an integer SQLite cannot hold), since start.
overflow_batches = 0


def ingest(storage: object, agent_id: str, events: Sequence[object]) -> int:
    """The ingest hook: fold one batch's package and listener events into the store of
    ``storage`` (a no-op for a store without a file). An integer SQLite cannot hold rolls the
    update back (counted in ``overflow_batches`` and logged); the batch is then refused by the
    event store for the same reason."""
    global overflow_batches
    path = store_path(storage)
    if path is None:
        return 0
    try:
        return PackageStore(path).apply(agent_id, events)
    except OverflowError as e:
        overflow_batches += 1
        log.warning("packages: batch of agent %s not applied (%s); %d such batches", agent_id, e, overflow_batches)
        return 0
