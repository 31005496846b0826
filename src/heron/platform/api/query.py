"""GET /api/v1/events and GET /api/v1/agents (docs/wire.md, Queries).

Stored events and host facts are already JSON; responses embed them as-is (msgspec.Raw) instead
of decoding and re-encoding every row.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from heron.platform.api.auth import QUERY_ROLES, authenticate
from heron.platform.api.context import ApiError, context
from heron.platform.storage.base import AgentRecord, EventQuery

_MAX_PARAM = 1024
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INT64 = range(-(1 << 63), 1 << 63)  # what SQLite binds; a larger int raises OverflowError
_encoder = msgspec.json.Encoder()


def _json(payload: object) -> Response:
    return Response(_encoder.encode(payload), media_type="application/json")


def _in_range(name: str, number: int) -> int:
    if number not in _INT64:
        raise ApiError(400, f"{name} is out of range (64-bit signed integer)")
    return number


def _int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None
    return _in_range(name, number)


def parse_time(name: str, value: str) -> int:
    """ns since the epoch, given as an integer of ns or an ISO 8601 time (UTC unless it says)."""
    try:
        return _in_range(name, int(value))
    except ValueError:
        pass  # not an integer: an ISO time
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ApiError(400, f"{name} must be ns since the epoch or an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    # Past 2262 the ns count leaves int64.
    return _in_range(name, (when - _EPOCH) // timedelta(microseconds=1) * 1000)


def parse_event_query(request: Request) -> EventQuery:
    params = request.query_params
    for name, value in params.multi_items():
        if len(value) > _MAX_PARAM:
            raise ApiError(400, f"{name} is too long")

    def text(name: str) -> str | None:
        return params.get(name) or None

    cfg = context(request).config
    limit = _int("limit", params["limit"]) if params.get("limit") else cfg.default_query_limit
    types = tuple(t for t in (text("type") or "").split(",") if t)
    pid, after_id = text("pid"), text("after_id")
    since, until = text("since"), text("until")
    return EventQuery(
        types=types,
        agent_id=text("agent"),
        hostname=text("host"),
        key=text("key"),
        pid=_int("pid", pid) if pid else None,
        exe=text("exe"),
        text=text("q"),
        since=parse_time("since", since) if since else None,
        until=parse_time("until", until) if until else None,
        after_id=_int("after_id", after_id) if after_id else None,
        limit=max(1, min(limit, cfg.max_query_limit)),
    )


async def list_events(request: Request) -> Response:
    await authenticate(request, QUERY_ROLES)
    query = parse_event_query(request)
    rows = await run_in_threadpool(context(request).storage.query_events, query)
    items = [
        {"id": r.id, "agent_id": r.agent_id, "host": r.hostname, "event": msgspec.Raw(r.data)} for r in rows
    ]
    last_id = max((r.id for r in rows), default=query.after_id)
    return _json({"events": items, "last_id": last_id})


def agent_json(agent: AgentRecord) -> dict[str, object]:
    return {
        "agent_id": agent.agent_id,
        "name": agent.name,
        "hostname": agent.hostname,
        "version": agent.version,
        "host": msgspec.Raw(agent.host.encode()),
        "first_seen": agent.first_seen,
        "last_seen": agent.last_seen,
        "last_health": msgspec.Raw(agent.last_health.encode()) if agent.last_health else None,
    }


async def list_agents(request: Request) -> Response:
    await authenticate(request, QUERY_ROLES)
    agents = await run_in_threadpool(context(request).storage.list_agents)
    return _json({"agents": [agent_json(a) for a in agents]})
