"""The process tree of a detection: its process's key and its ancestors' keys.

What the events carry (docs/events.md): a ``process.exec`` has ``process.key`` and
``process.ancestors`` ([pid, key, exe] nearest first). Network and file events carry a ProcessRef
(``key``, ``pid``, ``ppid``, ``parent_exe``) without ancestors, so their lineage is read from the
process's own ``process.exec`` record in the events table (column ``key``; the batch's events are
already stored when the pipeline runs); when that record is missing (the process started before
the agent and no snapshot reached us), the parent is looked up by ``ppid`` among the host's recent
execs, which gives one level. A process without a key (some collectors) is known as ``pid:N``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from heron.platform.storage import schema as s

MAX_KEYS = 64
PARENT_LOOKBACK_NS = 24 * 3600 * 10**9


@dataclass(frozen=True, slots=True)
class Lineage:
    key: str  # the process's own key ("" when the detection has no process)
    ancestors: tuple[str, ...]  # keys, nearest first


def process_key(process: dict[str, Any] | None) -> str:
    if not process:
        return ""
    key = process.get("key")
    if isinstance(key, str) and key:
        return key
    pid = process.get("pid")
    return f"pid:{pid}" if isinstance(pid, int) and pid > 0 else ""


def _ancestor_keys(process: dict[str, Any]) -> tuple[str, ...]:
    out: list[str] = []
    ancestors = process.get("ancestors")
    if isinstance(ancestors, list):
        for a in ancestors[:MAX_KEYS]:
            if isinstance(a, list) and len(a) > 1 and isinstance(a[1], str) and a[1]:
                out.append(a[1])
    if not out and isinstance(process.get("parent_key"), str) and process["parent_key"]:
        out.append(process["parent_key"])
    return tuple(out)


def _exec_process(conn: Connection, agent_id: str, key: str) -> dict[str, Any] | None:
    row = conn.execute(
        sa.select(s.events.c.data)
        .where(s.events.c.key == key, s.events.c.type == "process.exec", s.events.c.agent_id == agent_id)
        .order_by(s.events.c.ts.desc()).limit(1)).first()
    if row is None:
        return None
    try:
        proc = json.loads(row[0]).get("process")
    except (ValueError, AttributeError):
        return None
    return proc if isinstance(proc, dict) else None


def _parent_by_pid(conn: Connection, agent_id: str, ppid: int, before: int) -> str | None:
    row = conn.execute(
        sa.select(s.events.c.key)
        .where(s.events.c.pid == ppid, s.events.c.type == "process.exec", s.events.c.agent_id == agent_id,
               s.events.c.ts <= before, s.events.c.ts >= before - PARENT_LOOKBACK_NS)
        .order_by(s.events.c.ts.desc()).limit(1)).first()
    return row[0] if row is not None and row[0] else None


def lineage(conn: Connection, agent_id: str, event: dict[str, Any], process: dict[str, Any] | None) -> Lineage:
    key = process_key(process)
    if not process or not key:
        return Lineage(key, ())
    ancestors = _ancestor_keys(process)
    if not ancestors and event.get("type") != "process.exec" and not key.startswith("pid:"):
        exec_proc = _exec_process(conn, agent_id, key)
        if exec_proc is not None:
            ancestors = _ancestor_keys(exec_proc)
    if not ancestors and isinstance(process.get("ppid"), int) and process["ppid"] > 1:
        ts = event.get("ts")
        parent = _parent_by_pid(conn, agent_id, process["ppid"], ts if isinstance(ts, int) else 2**62)
        if parent and parent != key:
            ancestors = (parent,)
    return Lineage(key, ancestors[:MAX_KEYS])
