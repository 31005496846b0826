"""Reads for the API: the alert list, and one alert with its context.

The detail's context comes from the events table around the alert's time (``CONTEXT_NS`` either
side of first_ts..last_ts) on the alert's host:
- tree: the alert's processes (those of its detections), their ancestors (from the exec records'
  ``process.ancestors``, looked up by key at any time) and their descendants (exec records whose
  ``parent_key`` — or ``ppid`` when a record has no parent key — is in the tree), ``flagged`` when a
  detection names the process;
- timeline: the detections, the events of the tree's alert processes and descendants, and the
  alert_log, by time;
- graph: the behaviour graph around the process's cluster (heron.platform.graph), when present.
"""

from __future__ import annotations

import importlib
import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from heron.platform.alerts.rows import alert_json, detection_json, load_json
from heron.platform.alerts.summary import summarise
from heron.platform.storage import schema as s

log = logging.getLogger("heron.platform.alerts")
CONTEXT_NS = 600 * 10**9
MAX_EXECS = 5000
MAX_TREE = 300
MAX_TIMELINE_EVENTS = 500
MAX_DETECTIONS = 500
EXEC_LOOKBACK_NS = 30 * 86400 * 10**9  # an alert process's exec record: this long before the alert at most
MAX_MEMBER_EXECS = 1000  # exec records read for the alert's own processes (a key execs again on each exec)


def list_alerts(conn: Connection, *, state: Sequence[str] = (), severity: Sequence[str] = (), host: str | None = None,
                rule: str | None = None, since: int | None = None, limit: int = 100) -> list[dict[str, Any]]:
    a = s.alerts
    q = sa.select(a)
    if state:
        q = q.where(a.c.state.in_(list(state)))
    if severity:
        q = q.where(a.c.severity.in_(list(severity)))
    if host:
        q = q.where(a.c.hostname == host)
    if rule:
        q = q.where(a.c.rule == rule)
    if since is not None:
        q = q.where(a.c.last_ts >= since)
    rows = conn.execute(q.order_by(a.c.last_ts.desc(), a.c.id.desc()).limit(limit)).mappings().all()
    return [alert_json(r) for r in rows]


def _exec_info(ts: int, data: str) -> dict[str, Any] | None:
    ev = load_json(data, None)
    p = ev.get("process") if isinstance(ev, dict) else None
    if not isinstance(p, dict) or not isinstance(p.get("key"), str):
        return None
    return {"key": p["key"], "pid": p.get("pid"), "ppid": p.get("ppid"), "exe": p.get("exe"),
            "argv": p.get("argv") or [], "user": p.get("user"), "parent_key": p.get("parent_key"), "ts": ts,
            "ancestors": p.get("ancestors") or [], "flagged": False}


def process_tree(conn: Connection, agent_id: str, members: Sequence[str], start: int, end: int,
                 flagged: set[str]) -> list[dict[str, Any]]:
    e = s.events.c
    nodes: dict[str, dict[str, Any]] = {}
    rows = conn.execute(sa.select(e.ts, e.data).where(
        e.key.in_(list(members)[:MAX_TREE]), e.type == "process.exec", e.agent_id == agent_id,
        e.ts >= start - EXEC_LOOKBACK_NS, e.ts <= end).order_by(e.ts.desc()).limit(MAX_MEMBER_EXECS)).all()
    for ts, data in reversed(rows):
        info = _exec_info(ts, data)
        if info is not None:
            nodes[info["key"]] = info  # the latest exec of a key wins (exec replaces the program)
    # ancestors, nearest first: [pid, key, exe]; the exec record when we have it, else the triple
    chain: list[tuple[str, int | None, str | None]] = []
    for n in list(nodes.values()):
        for anc in n["ancestors"]:
            if isinstance(anc, list) and len(anc) > 2 and isinstance(anc[1], str):
                chain.append((anc[1], anc[0], anc[2]))
    wanted = [k for k, _, _ in chain if k not in nodes]
    if wanted:
        for ts, data in conn.execute(sa.select(e.ts, e.data).where(
                e.key.in_(wanted[:MAX_TREE]), e.type == "process.exec", e.agent_id == agent_id, e.ts <= end)
                .order_by(e.ts).limit(MAX_MEMBER_EXECS)).all():
            info = _exec_info(ts, data)
            if info is not None:
                nodes[info["key"]] = info
    for key, pid, exe in chain:
        nodes.setdefault(key, {"key": key, "pid": pid, "ppid": None, "exe": exe, "argv": [], "user": None,
                               "parent_key": None, "ts": None, "ancestors": [], "flagged": False})
    # fill parent links of ancestors from the chains (nearest first: chain[i+1] is chain[i]'s parent)
    for n in list(nodes.values()):
        keys = [n["key"], *(a[1] for a in n["ancestors"] if isinstance(a, list) and len(a) > 1)]
        for child, parent in itertools.pairwise(keys):
            if child in nodes and not nodes[child]["parent_key"]:
                nodes[child]["parent_key"] = parent
    # descendants of the alert's own processes only (never of their ancestors: a login shell's other
    # children are the rest of the host): execs in the window whose parent is in that subtree (by key,
    # else by pid)
    execs = [i for ts, data in conn.execute(
        sa.select(e.ts, e.data).where(e.agent_id == agent_id, e.type == "process.exec", e.ts >= start, e.ts <= end)
        .order_by(e.ts).limit(MAX_EXECS)).all() if (i := _exec_info(ts, data)) is not None]
    subtree = {k for k in members if k in nodes}
    grew = True
    while grew and len(nodes) < MAX_TREE:
        grew = False
        pids = {nodes[k]["pid"]: k for k in subtree if nodes[k]["pid"]}
        for info in execs:
            parent = info["parent_key"] or pids.get(info["ppid"])
            if info["key"] not in nodes and parent in subtree:
                info["parent_key"] = parent
                nodes[info["key"]] = info
                subtree.add(info["key"])
                grew = True
    out = []
    for n in nodes.values():
        n = dict(n)
        n.pop("ancestors")
        n["flagged"] = n["key"] in flagged
        out.append(n)
    return sorted(out, key=lambda n: (n["ts"] is None, n["ts"] or 0))[:MAX_TREE]


def _graph(conn: Connection, alert: Mapping[Any, Any], clusters: list[int], process: Any) -> dict[str, Any]:
    """G's neighbourhood of the alert process's cluster (the detection's cluster, else find_cluster)."""
    empty: dict[str, Any] = {"nodes": [], "edges": []}
    try:
        graph: Any = importlib.import_module("heron.platform.graph")
    except ImportError:
        return empty
    try:
        cluster = clusters[0] if clusters else None
        if cluster is None and isinstance(process, dict) and hasattr(graph, "find_cluster"):
            cluster = graph.find_cluster(conn, alert["agent_id"], process)
        if cluster is None:
            return empty
        result = graph.neighbourhood(conn, cluster)
        return result if isinstance(result, dict) else empty
    except Exception:  # the graph is context: an alert shows without it
        log.exception("graph neighbourhood of alert %s", alert["id"])
        return empty


def alert_detail(conn: Connection, alert_id: int) -> dict[str, Any] | None:
    row = conn.execute(sa.select(s.alerts).where(s.alerts.c.id == alert_id)).mappings().first()
    if row is None:
        return None
    dets = [detection_json(r) for r in conn.execute(
        sa.select(s.detections).where(s.detections.c.alert_id == alert_id).order_by(s.detections.c.ts)
        .limit(MAX_DETECTIONS)).mappings().all()]
    logs = [{"ts": r.ts, "actor": r.actor, "action": r.action, "note": r.note} for r in conn.execute(
        sa.select(s.alert_log).where(s.alert_log.c.alert_id == alert_id).order_by(s.alert_log.c.ts,
                                                                                  s.alert_log.c.id)).all()]
    members = [k for k in load_json(row["process_keys"], []) if isinstance(k, str)]
    start, end = row["first_ts"] - CONTEXT_NS, row["last_ts"] + CONTEXT_NS
    flagged = {d["process_key"] for d in dets if d["process_key"]}
    tree = process_tree(conn, row["agent_id"], members, start, end, flagged) if members else []
    ancestor_keys = set(load_json(row["ancestor_keys"], []))
    subtree = [n["key"] for n in tree if n["key"] not in ancestor_keys or n["key"] in members]
    timeline: list[dict[str, Any]] = [{"ts": d["ts"], "kind": "detection", "summary": f"{d['name']}: {d['summary']}",
                                       "detection": d["id"]} for d in dets]
    if subtree:
        e = s.events.c
        for ts, etype, data in conn.execute(
                sa.select(e.ts, e.type, e.data).where(e.agent_id == row["agent_id"], e.key.in_(subtree[:MAX_TREE]),
                                                      e.ts >= start, e.ts <= end)
                .order_by(e.ts).limit(MAX_TIMELINE_EVENTS)).all():
            event = load_json(data, {})
            timeline.append({"ts": ts, "kind": etype, "summary": summarise(event), "event": event})
    timeline += [{"ts": x["ts"], "kind": "log", "summary": f"{x['action']} by {x['actor']}"
                  + (f": {x['note']}" if x["note"] else "")} for x in logs]
    timeline.sort(key=lambda t: t["ts"])
    clusters = [d["cluster"] for d in dets if isinstance(d["cluster"], int)]
    return {"alert": alert_json(row), "detections": dets, "timeline": timeline, "tree": tree,
            "graph": _graph(conn, row, clusters, dets[0]["event"].get("process") if dets else None), "log": logs}


