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

Tables live in the platform's database (migration 2), reached through its ``Database`` (SQLite
or PostgreSQL, one code path).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from heron.platform.storage import schema
from heron.platform.storage.db import Database
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


def _protected_managers(errors: Sequence[str]) -> set[str] | None:
    """Managers whose packages a complete record must not remove; None means all of them."""
    protected: set[str] = set()
    for error in errors:
        head = error.split(":", 1)[0].strip()
        if head not in _KNOWN_MANAGERS:
            return None
        protected.add(head)
    return protected


def _unique(rows: list[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
    """One row per conflict key, the last winning: PostgreSQL refuses an upsert that would change
    one row twice in a command (a record listing a package twice)."""
    return list({tuple(r[k] for k in keys): r for r in rows}.values())


class PackageStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def _greatest(self, a: Any, b: Any) -> Any:
        return sa.func.greatest(a, b) if self.db.dialect == "postgresql" else sa.func.max(a, b)

    # -- ingest ----------------------------------------------------------------------------------
    def apply(self, agent_id: str, events: Sequence[object]) -> int:
        """Fold the package and listener events of one batch in; returns how many were relevant."""
        relevant: list[PackageInventory | PackageActivity | NetListen] = [
            e for e in events if isinstance(e, PackageInventory | PackageActivity | NetListen)]
        if not relevant:
            return 0
        relevant.sort(key=lambda e: e.ts)
        ls = schema.listeners
        with self.db.begin() as c:
            snapshots = [e.ts for e in relevant if isinstance(e, NetListen) and e.source == SNAPSHOT_SOURCE]
            if snapshots:
                c.execute(sa.delete(ls).where(ls.c.agent_id == agent_id,
                                              ls.c.ts < min(snapshots) - _SNAPSHOT_SLACK_NS))
            for event in relevant:
                if isinstance(event, PackageInventory):
                    self._inventory(c, agent_id, event)
                elif isinstance(event, PackageActivity):
                    self._activity(c, agent_id, event)
                elif isinstance(event, NetListen):
                    self._listen(c, agent_id, event)
            newest = max(e.ts for e in relevant)
            c.execute(sa.delete(ls).where(ls.c.agent_id == agent_id, ls.c.state == "closed",
                                          ls.c.ts < newest - _CLOSED_KEEP_NS))
        return len(relevant)

    def _inventory(self, c: Connection, agent_id: str, ev: PackageInventory) -> None:
        ps, pk = schema.package_scopes, schema.packages
        full_ts = c.execute(sa.select(ps.c.full_ts).where(ps.c.agent_id == agent_id, ps.c.scope == ev.scope)).scalar()
        if full_ts is not None and ev.ts < full_ts:
            return  # a complete inventory newer than this record has been applied
        scope = self.db.insert(ps).values(agent_id=agent_id, scope=ev.scope, container_id=ev.container_id,
                                          distro=ev.distro, full_ts=ev.ts if ev.full else 0, updated_ts=ev.ts,
                                          errors=json.dumps(ev.errors))
        x = scope.excluded
        c.execute(scope.on_conflict_do_update(index_elements=["agent_id", "scope"], set_={
            "container_id": x.container_id, "distro": x.distro,
            "full_ts": self._greatest(ps.c.full_ts, x.full_ts),
            "updated_ts": self._greatest(ps.c.updated_ts, x.updated_ts),
            "errors": sa.case((x.updated_ts >= ps.c.updated_ts, x.errors), else_=ps.c.errors)}))
        upsert = self.db.insert(pk)
        x = upsert.excluded
        upsert = upsert.on_conflict_do_update(
            index_elements=["agent_id", "scope", "purl", "location"],
            set_={"ecosystem": x.ecosystem, "name": x.name, "version": x.version, "data": x.data, "ts": x.ts,
                  "removed": x.removed},
            where=x.ts >= pk.c.ts)
        for removed, listed in ((0, ev.added), (1, ev.removed)):
            rows = _unique([{"agent_id": agent_id, "scope": ev.scope, "purl": p.purl, "location": p.location,
                             "ecosystem": p.ecosystem, "name": p.name, "version": p.version,
                             "data": _encode(p).decode(), "ts": ev.ts, "removed": removed} for p in listed],
                           "purl", "location")
            if rows:
                c.execute(upsert, rows)
        if not ev.full:
            return
        protected = _protected_managers(ev.errors)
        if protected is None:
            return
        # Everything the complete record did not (re)set is gone, but for unreadable databases.
        stale = c.execute(sa.select(pk.c.purl, pk.c.location, pk.c.data).where(
            pk.c.agent_id == agent_id, pk.c.scope == ev.scope, pk.c.ts < ev.ts, pk.c.removed == 0)).all()
        gone = [{"b_purl": purl, "b_location": location} for purl, location, data in stale
                if _decode_package(data).manager not in protected]
        if gone:
            c.execute(sa.update(pk).where(pk.c.agent_id == agent_id, pk.c.scope == ev.scope,
                                          pk.c.purl == sa.bindparam("b_purl"),
                                          pk.c.location == sa.bindparam("b_location"))
                      .values(removed=1, ts=ev.ts), gone)
        # Tombstones older than a complete inventory can no longer be contradicted by a retry.
        c.execute(sa.delete(pk).where(pk.c.agent_id == agent_id, pk.c.scope == ev.scope, pk.c.removed == 1,
                                      pk.c.ts < ev.ts))

    def _activity(self, c: Connection, agent_id: str, ev: PackageActivity) -> None:
        pa = schema.package_activity
        upsert = self.db.insert(pa)
        x = upsert.excluded
        active = _unique([{"agent_id": agent_id, "scope": ev.scope, "purl": use.purl, "active": 1,
                           "last_used_ts": use.last_used_ts or ev.ts, "ts": ev.ts,
                           "processes": _encode(use.processes).decode(), "files": json.dumps(use.files)}
                          for use in ev.active], "purl")
        if active:
            c.execute(upsert.on_conflict_do_update(
                index_elements=["agent_id", "scope", "purl"],
                set_={"active": 1, "last_used_ts": self._greatest(pa.c.last_used_ts, x.last_used_ts), "ts": x.ts,
                      "processes": x.processes, "files": x.files},
                where=x.ts >= pa.c.ts), active)
        inactive = _unique([{"agent_id": agent_id, "scope": ev.scope, "purl": purl, "active": 0,
                             "last_used_ts": ev.ts, "ts": ev.ts} for purl in ev.inactive], "purl")
        if inactive:
            c.execute(upsert.on_conflict_do_update(
                index_elements=["agent_id", "scope", "purl"],
                set_={"active": 0, "last_used_ts": self._greatest(pa.c.last_used_ts, x.last_used_ts), "ts": x.ts},
                where=x.ts >= pa.c.ts), inactive)
        if ev.full:
            c.execute(sa.update(pa).where(pa.c.agent_id == agent_id, pa.c.scope == ev.scope, pa.c.active == 1,
                                          pa.c.ts < ev.ts)
                      .values(active=0, last_used_ts=self._greatest(pa.c.last_used_ts, ev.ts), ts=ev.ts))

    def _listen(self, c: Connection, agent_id: str, ev: NetListen) -> None:
        ls = schema.listeners
        p = ev.process
        upsert = self.db.insert(ls).values(
            agent_id=agent_id, protocol=ev.protocol, addr=ev.addr, port=ev.port, process_key=p.key if p else "",
            pid=p.pid if p else 0, exe=p.exe if p else "", state="closed" if ev.state == "closed" else "open",
            ts=ev.ts)
        x = upsert.excluded
        c.execute(upsert.on_conflict_do_update(
            index_elements=["agent_id", "protocol", "addr", "port", "process_key"],
            set_={"pid": x.pid, "exe": x.exe, "state": x.state, "ts": x.ts}, where=x.ts >= ls.c.ts))

    # -- queries ---------------------------------------------------------------------------------
    def installed(self, hostname: str | None = None, agent_id: str | None = None) -> list[InstalledPackage]:
        """Installed packages (not removed) with their activity, optionally of one host/agent."""
        p, g, s, a = schema.packages, schema.agents, schema.package_scopes, schema.package_activity
        coalesce = sa.func.coalesce
        stmt = (
            sa.select(p.c.agent_id, coalesce(g.c.hostname, ""), p.c.scope, s.c.container_id, p.c.data,
                      coalesce(a.c.active, 0), coalesce(a.c.last_used_ts, 0), coalesce(a.c.processes, "[]"),
                      coalesce(a.c.files, "[]"))
            .select_from(p.outerjoin(g, g.c.agent_id == p.c.agent_id)
                         .outerjoin(s, sa.and_(s.c.agent_id == p.c.agent_id, s.c.scope == p.c.scope))
                         .outerjoin(a, sa.and_(a.c.agent_id == p.c.agent_id, a.c.scope == p.c.scope,
                                               a.c.purl == p.c.purl)))
            .where(p.c.removed == 0)
            .order_by(g.c.hostname, p.c.scope, p.c.name))
        if hostname:
            stmt = stmt.where(g.c.hostname == hostname)
        if agent_id:
            stmt = stmt.where(p.c.agent_id == agent_id)
        with self.db.read() as conn:
            rows = conn.execute(stmt).all()
        return [InstalledPackage(agent_id=str(a), hostname=str(h), scope=str(s), container_id=cid,
                                 package=_decode_package(data), active=bool(active), last_used_ts=int(last),
                                 processes=tuple(_decode_refs(procs)), files=tuple(json.loads(files)))
                for a, h, s, cid, data, active, last, procs, files in rows]

    def listeners(self, agent_ids: Collection[str] | None = None) -> list[Listener]:
        """Open listening sockets."""
        ls = schema.listeners
        with self.db.read() as conn:
            rows = conn.execute(sa.select(ls.c.agent_id, ls.c.protocol, ls.c.addr, ls.c.port, ls.c.process_key,
                                          ls.c.pid, ls.c.exe).where(ls.c.state == "open")).all()
        wanted = set(agent_ids) if agent_ids is not None else None
        return [Listener(str(a), str(pr), str(ad), int(po), str(k), int(pid), str(exe))
                for a, pr, ad, po, k, pid, exe in rows if wanted is None or a in wanted]

    def ecosystems(self) -> list[tuple[str, str, str]]:
        """Distinct (ecosystem, distro, manager) of installed packages (for ``heron vulndb update``)."""
        pk = schema.packages
        with self.db.read() as conn:
            rows = conn.execute(sa.select(pk.c.data).distinct().where(pk.c.removed == 0)).all()
        seen = {(p.ecosystem, p.distro, p.manager) for p in (_decode_package(r[0]) for r in rows)}
        return sorted(seen)


# Batches whose package update was rolled back (an integer SQLite cannot hold), since start.
overflow_batches = 0


def ingest(db: Database, agent_id: str, events: Sequence[object]) -> int:
    """The ingest hook: fold one batch's package and listener events into ``db``. An integer the
    database cannot hold (64-bit) rolls the update back (counted in ``overflow_batches`` and
    logged); the batch is then refused by the event store for the same reason."""
    global overflow_batches
    try:
        return PackageStore(db).apply(agent_id, events)
    except (OverflowError, sa.exc.DataError) as e:
        overflow_batches += 1
        log.warning("packages: batch of agent %s not applied (%s); %d such batches", agent_id, e, overflow_batches)
        return 0
