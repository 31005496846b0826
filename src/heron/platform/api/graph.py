"""Behaviour graph and baselines API (docs/graph.md).

GET /api/v1/graph/nodes, GET /api/v1/graph/neighbourhood, GET /api/v1/baselines (QUERY_ROLES);
POST /api/v1/baselines/{cluster}/reset, POST /api/v1/graph/edges/{id}/expected (ADMIN_ROLES).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from heron.platform.api.auth import ADMIN_ROLES, QUERY_ROLES, actor, authenticate
from heron.platform.api.context import ApiError, context, run_db
from heron.platform.graph import list_baselines, list_nodes, mark_expected, neighbourhood, reset_learning

NODE_KINDS = frozenset({"host", "container", "image", "cluster", "user", "endpoint", "fileclass", "package"})
MAX_TEXT = 256
MAX_ID = (1 << 63) - 1


def _text(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    if len(value) > MAX_TEXT:
        raise ApiError(400, f"{name} longer than {MAX_TEXT} characters")
    return value


def _id(raw: str | None, name: str) -> int:
    if raw is None or not raw.isascii() or not raw.isdigit() or int(raw) > MAX_ID:
        raise ApiError(400, f"{name} must be a positive integer id")
    return int(raw)


def _limit(request: Request, default: int) -> int:
    cfg = context(request).config
    raw = request.query_params.get("limit")
    if raw is None or raw == "":
        return min(default, cfg.max_query_limit)
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= cfg.max_query_limit:
        raise ApiError(400, f"limit must be an integer from 1 to {cfg.max_query_limit}")
    return int(raw)


async def get_nodes(request: Request) -> Response:
    await authenticate(request, QUERY_ROLES)
    kind, q, host = _text(request, "kind"), _text(request, "q"), _text(request, "host")
    if kind is not None and kind not in NODE_KINDS:
        raise ApiError(400, f"kind must be one of {', '.join(sorted(NODE_KINDS))}")
    limit = _limit(request, context(request).config.default_query_limit)
    nodes = await run_db(request, lambda c: list_nodes(c, kind=kind, q=q, host=host, limit=limit))
    return JSONResponse({"nodes": nodes})


async def get_neighbourhood(request: Request) -> Response:
    await authenticate(request, QUERY_ROLES)
    node = _id(request.query_params.get("node"), "node")
    host, limit = _text(request, "host"), _limit(request, 200)
    hood = await run_db(request, lambda c: neighbourhood(c, node, host=host, limit=limit))
    if not hood["nodes"]:
        raise ApiError(404, f"no graph node {node}")
    return JSONResponse(hood)


async def get_baselines(request: Request) -> Response:
    await authenticate(request, QUERY_ROLES)
    raw = request.query_params.get("cluster")
    cluster = _id(raw, "cluster") if raw not in (None, "") else None
    limit = _limit(request, context(request).config.default_query_limit)
    rows = await run_db(request, lambda c: list_baselines(c, time.time_ns(), cluster=cluster, limit=limit))
    return JSONResponse({"baselines": rows})


async def reset_baseline(request: Request) -> Response:
    record = await authenticate(request, ADMIN_ROLES)
    cluster = _id(request.path_params.get("cluster"), "cluster")
    learning_s = context(request).config.baseline_learning_s
    who, now = actor(record), time.time_ns()

    def reset(conn: Connection) -> list[dict[str, Any]] | None:
        if reset_learning(conn, cluster, who, now, learning_s=learning_s) is None:
            return None
        return list_baselines(conn, now, cluster=cluster, limit=1)

    rows = await run_db(request, reset, write=True)
    if not rows:
        raise ApiError(404, f"no process cluster {cluster}")
    return JSONResponse({"baseline": rows[0]})


async def mark_edge_expected(request: Request) -> Response:
    record = await authenticate(request, ADMIN_ROLES)
    edge = _id(request.path_params.get("id"), "edge id")
    who = actor(record)
    changed = await run_db(request, lambda c: mark_expected(c, edge, who), write=True)
    if not changed:
        raise ApiError(404, f"no graph edge {edge}")
    return JSONResponse({"edge": edge, "baseline": "expected", "changed": changed})


ROUTES: list[tuple[str, Callable[[Request], Any], str]] = [
    ("/api/v1/graph/nodes", get_nodes, "GET"),
    ("/api/v1/graph/neighbourhood", get_neighbourhood, "GET"),
    ("/api/v1/graph/edges/{id}/expected", mark_edge_expected, "POST"),
    ("/api/v1/baselines", get_baselines, "GET"),
    ("/api/v1/baselines/{cluster}/reset", reset_baseline, "POST"),
]

_NODE = {"type": "object", "properties": {k: {} for k in (
    "id", "kind", "key", "label", "attrs", "first_seen", "last_seen", "count")}}
_EDGE = {"type": "object", "properties": {k: {} for k in (
    "id", "src", "dst", "kind", "hosts", "first_seen", "last_seen", "count", "baseline")}}
_BASELINE = {"type": "object", "properties": {k: {} for k in (
    "cluster", "label", "key", "learning_since", "learning_until", "learning", "reset_at", "reset_by", "edges")}}


def _q(name: str, schema_type: str = "string", required: bool = False, text: str = "") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": {"type": schema_type}, "description": text}


def _p(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "integer"}}


def _ok(description: str, schema: dict[str, Any], missing: str | None = None) -> dict[str, object]:
    out: dict[str, object] = {
        "200": {"description": description, "content": {"application/json": {"schema": schema}}},
        "400": {"description": "invalid parameter"}, "401": {"description": "no valid credentials"},
        "403": {"description": "role may not do this"}}
    if missing:
        out["404"] = {"description": missing}
    return out


OPENAPI_PATHS: dict[str, object] = {
    "/api/v1/graph/nodes": {"get": {
        "summary": "Behaviour graph nodes (most recently seen first)",
        "parameters": [_q("kind", text="host, container, image, cluster, user, endpoint, fileclass, package"),
                       _q("q", text="substring of label or key"), _q("host", text="hostname or agent id"),
                       _q("limit", "integer")],
        "responses": _ok("nodes", {"type": "object", "properties": {"nodes": {"type": "array", "items": _NODE}}})}},
    "/api/v1/graph/neighbourhood": {"get": {
        "summary": "A node, its edges (aggregated over hosts unless host is given) and their other ends",
        "parameters": [_q("node", "integer", True), _q("host"), _q("limit", "integer")],
        "responses": _ok("neighbourhood", {"type": "object", "properties": {
            "center": {"type": "integer"}, "nodes": {"type": "array", "items": _NODE},
            "edges": {"type": "array", "items": _EDGE}}}, "no such node")}},
    "/api/v1/graph/edges/{id}/expected": {"post": {
        "summary": "Mark an edge expected on every host (admin): the same behaviour is normal from then on",
        "parameters": [_p("id")],
        "responses": _ok("changed", {"type": "object"}, "no such edge")}},
    "/api/v1/baselines": {"get": {
        "summary": "Process clusters' learning windows and edge counts by baseline state",
        "parameters": [_q("cluster", "integer"), _q("limit", "integer")],
        "responses": _ok("baselines", {"type": "object", "properties": {
            "baselines": {"type": "array", "items": _BASELINE}}})}},
    "/api/v1/baselines/{cluster}/reset": {"post": {
        "summary": "Restart a cluster's learning window now (admin)",
        "parameters": [_p("cluster")],
        "responses": _ok("the baseline", {"type": "object", "properties": {"baseline": _BASELINE}},
                         "no such cluster")}},
}
