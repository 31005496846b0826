"""GET /api/v1/overview: the console's first page in one query round.

Agents (total, healthy, stale), events of the last 24 h per type, open alerts per severity and the
most recent alerts. Every part reads an index or a small table: the 24 h count sums the hourly
counters ingest keeps (``event_counts``), so the page costs the same with millions of events stored
(``capped`` stays in the answer for compatibility and is always false). ``ingest`` holds this
server's ``IngestStats`` (batches stored without analysis because a stage failed, events stamped in
the future), counted in memory since the server started.
"""

from __future__ import annotations

import json
import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from heron.platform.alerts.rows import alert_json
from heron.platform.api.auth import QUERY_ROLES, authenticate
from heron.platform.api.context import context
from heron.platform.storage.db import Database
from heron.platform.storage.migrations import HOUR_NS
from heron.platform.storage.schema import agents, alerts, event_counts

DAY_NS = 86_400 * 10**9
STALE_NS = 5 * 60 * 10**9  # an agent that has sent nothing (not even health) for this long is stale
RECENT_ALERTS = 10
LOSS_WORDS = ("drop", "lost", "error")  # health counters that mean the agent lost data


def _losses(last_health: str | None) -> bool:
    """Whether the agent's last health report counts any lost data."""
    if not last_health:
        return False
    try:
        counters = json.loads(last_health).get("counters") or {}
    except (ValueError, AttributeError):
        return False
    if not isinstance(counters, dict):
        return False
    return any(isinstance(v, int | float) and v > 0 and any(w in str(k) for w in LOSS_WORDS)
               for k, v in counters.items())


def events_per_type(conn: Connection, since: int) -> dict[str, int]:
    """Events per type from the hour holding ``since`` on, from the hourly counters ingest keeps
    (event_counts): a few rows per hour, however many events are stored. By event time, so the
    window is up to an hour wider than 24 h."""
    c = event_counts.c
    stmt = (sa.select(c.type, sa.func.sum(c.n)).where(c.hour >= since - since % HOUR_NS).group_by(c.type))
    return {str(t): int(n) for t, n in conn.execute(stmt)}


def overview(conn: Connection, now: int, *, stale_ns: int = STALE_NS,
             recent: int = RECENT_ALERTS) -> dict[str, object]:
    total = healthy = stale = 0
    for last_seen, last_health in conn.execute(sa.select(agents.c.last_seen, agents.c.last_health)):
        total += 1
        if now - last_seen > stale_ns:
            stale += 1
        elif not _losses(last_health):
            healthy += 1
    per_type = events_per_type(conn, now - DAY_NS)
    by_state: dict[str, dict[str, int]] = {"open": {}, "acknowledged": {}}
    stmt = (sa.select(alerts.c.state, alerts.c.severity, sa.func.count())
            .where(alerts.c.state.in_(list(by_state))).group_by(alerts.c.state, alerts.c.severity))
    for state, severity, n in conn.execute(stmt):
        by_state[state][severity] = int(n)
    rows = conn.execute(sa.select(alerts).order_by(alerts.c.last_ts.desc(), alerts.c.id.desc()).limit(recent))
    return {
        "agents": {"total": total, "healthy": healthy, "stale": stale, "stale_after_ns": stale_ns},
        "events": {"last_24h": per_type, "since": now - DAY_NS, "capped": False},
        "alerts": by_state,
        "recent_alerts": [alert_json(r._mapping) for r in rows],
        "time": now,
    }


def read_overview(db: Database, now: int) -> dict[str, object]:
    with db.read() as conn:
        return overview(conn, now)


async def get_overview(request: Request) -> Response:
    await authenticate(request, QUERY_ROLES)
    body = await run_in_threadpool(read_overview, context(request).db, time.time_ns())
    body["ingest"] = context(request).ingest_stats.snapshot()
    return JSONResponse(body)


_COUNTS = {"type": "object", "additionalProperties": {"type": "integer"}}
OPENAPI_PATHS: dict[str, object] = {
    "/api/v1/overview": {"get": {
        "summary": "The console's overview: agents, events of the last 24 h per type, open alerts (admin or "
                   "reader).",
        "security": [{"bearer": []}],
        "responses": {
            "200": {"description": "overview", "content": {"application/json": {"schema": {
                "type": "object",
                "properties": {
                    "agents": {"type": "object", "properties": {
                        "total": {"type": "integer"}, "healthy": {"type": "integer"},
                        "stale": {"type": "integer"}, "stale_after_ns": {"type": "integer"}}},
                    "events": {"type": "object", "properties": {
                        "last_24h": _COUNTS, "since": {"type": "integer"},
                        "capped": {"type": "boolean", "description": "the window held more rows than were "
                                                                     "counted: the counts are lower bounds"}}},
                    "alerts": {"type": "object", "properties": {"open": _COUNTS, "acknowledged": _COUNTS}},
                    "recent_alerts": {"type": "array", "items": {"type": "object"}},
                    "time": {"type": "integer"},
                    "ingest": {"type": "object", "description": "this server's counters since it started",
                               "properties": {
                                   "since": {"type": "integer"}, "batches_analysed": {"type": "integer"},
                                   "analysis_failures": {"type": "integer", "description": "batches stored "
                                                         "without analysis (a stage failed; see the log)"},
                                   "last_analysis_error": {"type": "string"},
                                   "last_analysis_failure": {"type": ["integer", "null"]},
                                   "future_events": {"type": "integer", "description": "events stamped over "
                                                     "an hour after their batch arrived"}}},
                }}}}},
            "401": {"description": "no valid credentials"},
            "403": {"description": "role may not read"},
            "503": {"description": "database unavailable"},
        },
    }},
}
