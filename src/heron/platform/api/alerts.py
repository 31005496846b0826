"""Alerts API: alerts (list, detail, state, expected), suppressions, channels, rules (docs/alerts.md).

Reads need QUERY_ROLES, changes ADMIN_ROLES. Bodies are small JSON objects; anything else is a 4xx.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from heron.detect import SEVERITIES
from heron.platform.alerts import channels, queries
from heron.platform.alerts.runtime import AlertsRuntime
from heron.platform.alerts.state import STATES, StateError, mark_expected, set_state
from heron.platform.alerts.suppress import check_condition
from heron.platform.api.auth import ADMIN_ROLES, QUERY_ROLES, actor, authenticate
from heron.platform.api.context import ApiError, PlatformContext, context, read_body, run_db
from heron.platform.storage import schema as s

MAX_BODY = 64 << 10
MAX_TEXT = 1000
MAX_INT = (1 << 63) - 1
INT_RE = re.compile(r"-?[0-9]{1,19}\Z")


def _runtime(request: Request) -> AlertsRuntime:
    rt = context(request).alerts
    if rt is None:
        raise ApiError(503, "alerts are not enabled on this server")
    return rt


async def _body(request: Request) -> dict[str, Any]:
    raw = await read_body(request, MAX_BODY)
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "body is not valid JSON") from None
    except RecursionError:  # [[[[... : the parser's stack, not our problem to carry
        raise ApiError(400, "body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body must be a JSON object")
    return body


def _int_param(request: Request, name: str, default: int | None = None, lo: int = 0, hi: int = MAX_INT) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not INT_RE.match(raw):
        raise ApiError(400, f"{name} must be an integer")
    value = int(raw)
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be between {lo} and {hi}")
    return value


def _path_id(request: Request) -> int:
    raw = request.path_params.get("id", "")
    if not (isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) < 19):
        raise ApiError(404, "not found")
    return int(raw)


def _list_param(request: Request, name: str, allowed: tuple[str, ...]) -> list[str]:
    raw = request.query_params.get(name, "")
    values = [v for v in raw.split(",") if v]
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ApiError(400, f"{name} must be among {', '.join(allowed)}")
    return values


def _limit(request: Request) -> int:
    cfg = context(request).config
    limit = _int_param(request, "limit", cfg.default_query_limit, 1, cfg.max_query_limit)
    assert limit is not None
    return limit


def _text(body: dict[str, Any], key: str, default: str = "", limit: int = MAX_TEXT) -> str:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, str) or len(v) > limit:
        raise ApiError(400, f"{key} must be a string of at most {limit} characters")
    return v


# -- alerts ----------------------------------------------------------------------------------------

async def list_alerts(request: Request) -> Response:
    await authenticate(request, QUERY_ROLES)
    state = _list_param(request, "state", STATES)
    severity = _list_param(request, "severity", SEVERITIES)
    host = request.query_params.get("host") or None
    rule = request.query_params.get("rule") or None
    since = _int_param(request, "since")
    limit = _limit(request)
    rows = await run_db(request, lambda c: queries.list_alerts(c, state=state, severity=severity, host=host,
                                                              rule=rule, since=since, limit=limit))
    return JSONResponse({"alerts": rows})


async def get_alert(request: Request) -> Response:
    await authenticate(request, QUERY_ROLES)
    alert_id = _path_id(request)
    detail = await run_db(request, lambda c: queries.alert_detail(c, alert_id))
    if detail is None:
        raise ApiError(404, f"no alert {alert_id}")
    return JSONResponse(detail)


async def change_state(request: Request) -> Response:
    who = actor(await authenticate(request, ADMIN_ROLES))
    alert_id = _path_id(request)
    body = await _body(request)
    state = body.get("state")
    if state not in STATES:
        raise ApiError(400, f"state must be one of {', '.join(STATES)}")
    note = _text(body, "note")
    try:
        result = await run_db(request, write=True, fn=lambda c: set_state(c, alert_id, state, who, note))
    except StateError as err:
        raise ApiError(err.status, str(err)) from None
    return JSONResponse(result)


async def mark_alert_expected(request: Request) -> Response:
    who = actor(await authenticate(request, ADMIN_ROLES))
    alert_id = _path_id(request)
    body = await _body(request)
    note = _text(body, "note")
    try:
        result = await run_db(request, write=True, fn=lambda c: mark_expected(c, alert_id, who, note))
    except StateError as err:
        raise ApiError(err.status, str(err)) from None
    return JSONResponse(result)


# -- suppressions ----------------------------------------------------------------------------------

def _suppression_json(r: Any) -> dict[str, Any]:
    return {"id": r.id, "name": r.name, "rule": r.rule, "condition": r.condition, "hostname": r.hostname,
            "created_by": r.created_by, "created": r.created, "expires": r.expires, "enabled": bool(r.enabled),
            "hits": r.hits, "last_hit": r.last_hit}


async def list_suppressions(request: Request) -> Response:
    await authenticate(request, QUERY_ROLES)
    limit = _limit(request)
    rows = await run_db(request, lambda c: [_suppression_json(r) for r in c.execute(
        sa.select(s.suppressions).order_by(s.suppressions.c.id.desc()).limit(limit)).all()])
    return JSONResponse({"suppressions": rows})


async def add_suppression(request: Request) -> Response:
    who = actor(await authenticate(request, ADMIN_ROLES))
    body = await _body(request)
    name = _text(body, "name", limit=200).strip()
    rule = _text(body, "rule", limit=500)
    condition = _text(body, "condition", limit=16 << 10)
    hostname = _text(body, "hostname", limit=255)
    if not name:
        raise ApiError(400, "name is required")
    if not (rule or condition.strip() or hostname):
        raise ApiError(400, "a suppression needs a rule, a condition or a hostname (it would hide everything)")
    try:
        check_condition(condition)
    except ValueError as err:
        raise ApiError(400, f"condition: {err}") from None
    now = time.time_ns()
    expires = body.get("expires")
    ttl = body.get("expires_in_s")
    if ttl is not None:
        if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not 0 < ttl <= 10 * 365 * 86400:
            raise ApiError(400, "expires_in_s must be a positive number of seconds")
        expires = now + int(ttl * 1e9)
    elif expires is not None and (not isinstance(expires, int) or isinstance(expires, bool)
                                  or not now < expires <= MAX_INT):
        raise ApiError(400, "expires must be a future time in ns since the epoch")
    values = dict(name=name, rule=rule, condition=condition, hostname=hostname, created_by=who, created=now,
                  expires=expires, enabled=1, hits=0)

    def insert(c: Connection) -> dict[str, Any]:
        pk = c.execute(sa.insert(s.suppressions).values(**values)).inserted_primary_key
        assert pk is not None
        row = c.execute(sa.select(s.suppressions).where(s.suppressions.c.id == pk[0])).one()
        return _suppression_json(row)
    result = await run_db(request, write=True, fn=insert)
    _runtime(request).recorder.suppressions.invalidate()
    return JSONResponse(result, status_code=201)


async def delete_suppression(request: Request) -> Response:
    await authenticate(request, ADMIN_ROLES)
    sid = _path_id(request)
    n = await run_db(request, write=True,
                     fn=lambda c: c.execute(sa.delete(s.suppressions).where(s.suppressions.c.id == sid)).rowcount)
    if not n:
        raise ApiError(404, f"no suppression {sid}")
    _runtime(request).recorder.suppressions.invalidate()
    return JSONResponse({"deleted": sid})


# -- channels --------------------------------------------------------------------------------------

async def list_channels(request: Request) -> Response:
    caller = await authenticate(request, QUERY_ROLES)
    reveal = caller.kind in ADMIN_ROLES  # a webhook URL is a credential: readers see scheme://host/…

    def read(c: Connection) -> list[dict[str, Any]]:
        out = []
        for r in c.execute(sa.select(s.notification_channels).order_by(s.notification_channels.c.id)).mappings():
            item = channels.channel_json(r, reveal=reveal)
            counts = c.execute(sa.select(s.notifications.c.state, sa.func.count()).where(
                s.notifications.c.channel_id == r["id"]).group_by(s.notifications.c.state)).all()
            item["notifications"] = {state: n for state, n in counts}
            out.append(item)
        return out
    return JSONResponse({"channels": await run_db(request, read)})


async def add_channel(request: Request) -> Response:
    await authenticate(request, ADMIN_ROLES)
    body = await _body(request)
    try:
        ch = channels.validate(body.get("name"), body.get("kind"), body.get("config"),
                               body.get("min_severity", "high"))
    except ValueError as err:
        raise ApiError(400, str(err)) from None
    now = time.time_ns()

    def insert(c: Connection) -> dict[str, Any]:
        t = s.notification_channels
        if c.execute(sa.select(t.c.id).where(t.c.name == ch["name"])).first() is not None:
            raise ApiError(409, f"a channel named {ch['name']!r} exists")
        pk = c.execute(sa.insert(t).values(
            name=ch["name"], kind=ch["kind"], config=json.dumps(ch["config"]), min_severity=ch["min_severity"],
            enabled=1, created=now)).inserted_primary_key
        assert pk is not None
        return channels.channel_json(c.execute(sa.select(t).where(t.c.id == pk[0])).mappings().one())
    return JSONResponse(await run_db(request, write=True, fn=insert), status_code=201)


async def delete_channel(request: Request) -> Response:
    await authenticate(request, ADMIN_ROLES)
    cid = _path_id(request)

    def delete(c: Connection) -> int:
        n = c.execute(sa.delete(s.notification_channels).where(s.notification_channels.c.id == cid)).rowcount
        if n:  # what it had not sent yet never will be
            c.execute(sa.update(s.notifications).where(s.notifications.c.channel_id == cid,
                                                       s.notifications.c.state == "pending")
                      .values(state="failed", last_error="channel deleted"))
        return int(n)
    if not await run_db(request, write=True, fn=delete):
        raise ApiError(404, f"no channel {cid}")
    return JSONResponse({"deleted": cid})


# -- rules -----------------------------------------------------------------------------------------

async def list_rules(request: Request) -> Response:
    await authenticate(request, QUERY_ROLES)
    engine = _runtime(request).engine
    await run_in_threadpool(engine.maybe_reload)
    return JSONResponse(engine.describe())


ROUTES: list[tuple[str, Callable[[Request], Any], str]] = [
    ("/api/v1/alerts", list_alerts, "GET"),
    ("/api/v1/alerts/{id}", get_alert, "GET"),
    ("/api/v1/alerts/{id}/state", change_state, "POST"),
    ("/api/v1/alerts/{id}/expected", mark_alert_expected, "POST"),
    ("/api/v1/suppressions", list_suppressions, "GET"),
    ("/api/v1/suppressions", add_suppression, "POST"),
    ("/api/v1/suppressions/{id}", delete_suppression, "DELETE"),
    ("/api/v1/channels", list_channels, "GET"),
    ("/api/v1/channels", add_channel, "POST"),
    ("/api/v1/channels/{id}", delete_channel, "DELETE"),
    ("/api/v1/rules", list_rules, "GET"),
]


# -- OpenAPI ---------------------------------------------------------------------------------------

def _op(summary: str, *, admin: bool = False, params: list[dict[str, Any]] | None = None,
        body: dict[str, Any] | None = None, ok: str = "200") -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": ["alerts"], "security": [{"bearer": []}],
                          "responses": {ok: {"description": "OK", "content": {"application/json": {}}},
                                        "400": {"description": "bad request"}, "401": {"description": "no caller"},
                                        "403": {"description": "role not allowed" + (" (admin only)" if admin else "")},
                                        "503": {"description": "database unavailable"}}}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _q(name: str, kind: str = "string", desc: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind}, "description": desc}


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
_SEV = {"type": "string", "enum": list(SEVERITIES)}

OPENAPI_PATHS: dict[str, object] = {
    "/api/v1/alerts": {"get": _op("Alerts, most recent first", params=[
        _q("state", desc="comma-separated: open, acknowledged, closed"), _q("severity", desc="comma-separated"),
        _q("host"), _q("rule"), _q("since", "integer", "last_ts >= since (ns)"), _q("limit", "integer")])},
    "/api/v1/alerts/{id}": {"get": _op("One alert: detections, timeline, process tree, graph, log",
                                       params=[_ID])},
    "/api/v1/alerts/{id}/state": {"post": _op("Acknowledge, close or reopen an alert", admin=True, params=[_ID], body={
        "type": "object", "required": ["state"], "properties": {
            "state": {"type": "string", "enum": list(STATES)}, "note": {"type": "string"}}})},
    "/api/v1/alerts/{id}/expected": {"post": _op(
        "Mark the alert's anomalies as expected (folded into the baseline) and close it", admin=True, params=[_ID],
        body={"type": "object", "properties": {"note": {"type": "string"}}})},
    "/api/v1/suppressions": {
        "get": _op("Suppressions with their hit counts", params=[_q("limit", "integer")]),
        "post": _op("Add a suppression (the condition is checked: 400 with the reason)", admin=True, ok="201", body={
            "type": "object", "required": ["name"], "properties": {
                "name": {"type": "string"}, "rule": {"type": "string"}, "condition": {"type": "string"},
                "hostname": {"type": "string", "description": "glob"}, "expires": {"type": "integer"},
                "expires_in_s": {"type": "number"}}})},
    "/api/v1/suppressions/{id}": {"delete": _op("Delete a suppression", admin=True, params=[_ID])},
    "/api/v1/channels": {
        "get": _op("Notification channels with outbox counts (webhook URLs masked to scheme://host/… for readers)"),
        "post": _op("Add a webhook or syslog channel", admin=True, ok="201", body={
            "type": "object", "required": ["name", "kind", "config"], "properties": {
                "name": {"type": "string"}, "kind": {"type": "string", "enum": list(channels.KINDS)},
                "config": {"type": "object", "properties": {"url": {"type": "string"},
                                                           "facility": {"type": "string"},
                                                           "app_name": {"type": "string"}}},
                "min_severity": _SEV}})},
    "/api/v1/channels/{id}": {"delete": _op("Delete a channel (its pending notifications fail)", admin=True,
                                            params=[_ID])},
    "/api/v1/rules": {"get": _op("Active detection rules and the last rule-file load error")},
}


def start_notifier(ctx: PlatformContext) -> asyncio.Task[None] | None:
    """The outbox sender as a task of the running loop (the app's lifespan), or None when this server
    has no alerts or sending is off."""
    if ctx.alerts is None or ctx.config.notify_poll_s <= 0:
        return None
    return asyncio.create_task(ctx.alerts.notifier(ctx.db).run(), name="heron-notify")
