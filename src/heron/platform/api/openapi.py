"""The OpenAPI document served at /api/v1/openapi.json: a description of docs/wire.md."""

from __future__ import annotations

from heron import __version__

_BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def _param(name: str, description: str, kind: str = "string") -> dict[str, object]:
    return {"name": name, "in": "query", "required": False, "description": description,
            "schema": {"type": kind}}


def _responses(*codes: tuple[int, str]) -> dict[str, object]:
    return {str(code): {"description": text} for code, text in codes}


_ERRORS = ((400, "malformed request"), (401, "unknown or revoked token"), (403, "token may not do this"))

HOST_FACTS = {
    "type": "object",
    "properties": {k: {"type": "string"} for k in
                   ("hostname", "machine_id", "boot_id", "kernel", "distro", "arch")},
}
AGENT_UPDATE = {
    "type": "object",
    "required": ["host"],
    "properties": {"agent_version": {"type": "string"}, "host": HOST_FACTS},
}
ENROLL = {**AGENT_UPDATE, "properties": {**AGENT_UPDATE["properties"], "name": {"type": "string"}}}  # type: ignore[dict-item]


def _module_paths() -> dict[str, object]:
    """Path items each API module documents beside its routes (alerts, graph, users, overview)."""
    from heron.platform.api import alerts, graph, overview, users

    merged: dict[str, object] = {}
    for module in (users, overview, alerts, graph):
        merged.update(module.OPENAPI_PATHS)
    return merged


def openapi_document() -> dict[str, object]:
    time_doc = "ns since the epoch, or an ISO 8601 time (UTC unless it says)"
    return {
        "openapi": "3.1.0",
        "info": {"title": "heron platform API", "version": __version__,
                 "description": "Agent ingest, queries, alerts, graph, users (docs/wire.md, docs/alerts.md, "
                                "docs/graph.md, docs/auth.md)."},
        "components": {"securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer"},
            "session": {"type": "apiKey", "in": "cookie", "name": "heron_session",
                        "description": "console login; send X-Heron-CSRF on changes"},
        }},
        "paths": {
            "/api/v1/openapi.json": {"get": {
                "summary": "This document; no authentication.", "security": [],
                "responses": _responses((200, "OpenAPI 3.1 JSON")),
            }},
            "/api/v1/health": {"get": {
                "summary": "Liveness; no authentication.", "security": [],
                "responses": _responses((200, '{"status": "ok", "version": ...}')),
            }},
            "/api/v1/enroll": {"post": {
                "summary": "Enrol an agent (enrolment or admin token).", "security": _BEARER,
                "requestBody": {"required": True, "content": {"application/json": {"schema": ENROLL}}},
                "responses": _responses((201, '{"agent_id": "...", "token": "..."}'), *_ERRORS,
                                        (415, "not JSON")),
            }},
            "/api/v1/agents/self": {"put": {
                "summary": "Update the calling agent's host facts (agent token).", "security": _BEARER,
                "requestBody": {"required": True, "content": {"application/json": {"schema": AGENT_UPDATE}}},
                "responses": _responses((200, "{}"), *_ERRORS, (415, "not JSON")),
            }},
            "/api/v1/ingest": {"post": {
                "summary": "Ingest one batch: a zstd frame holding a msgpack array of tagged events "
                           "(agent token).",
                "security": _BEARER,
                "parameters": [
                    {"name": "X-Heron-Agent", "in": "header", "required": True, "schema": {"type": "string"}},
                    {"name": "X-Heron-Batch", "in": "header", "required": True, "schema": {"type": "string"},
                     "description": "unique per agent; a batch id already stored is acknowledged only"},
                    {"name": "Content-Encoding", "in": "header", "required": True,
                     "schema": {"type": "string", "const": "zstd"}},
                ],
                "requestBody": {"required": True, "content": {"application/x-msgpack": {}}},
                "responses": _responses((200, '{"accepted": N, "duplicate": false|true}'), *_ERRORS,
                                        (413, "over 8 MiB compressed or 16 MiB decompressed"),
                                        (415, "wrong Content-Type or Content-Encoding")),
            }},
            "/api/v1/events": {"get": {
                "summary": "Events, newest first; with after_id, the newer ones in ascending order "
                           "(admin or reader token).",
                "security": _BEARER,
                "parameters": [
                    _param("type", "event type; several separated by commas"),
                    _param("agent", "agent id"), _param("host", "host name"),
                    _param("key", "process key"), _param("pid", "process id", "integer"),
                    _param("exe", "executable: full path or its last component"),
                    _param("q", "text contained in exe or argv"),
                    _param("since", f"ts >= since; {time_doc}"), _param("until", f"ts < until; {time_doc}"),
                    _param("after_id", "only events with a larger id, ascending (live follow)", "integer"),
                    _param("limit", "at most this many (default 100, capped at 1000)", "integer"),
                ],
                "responses": _responses(
                    (200, '{"events": [{"id", "agent_id", "host", "event"}], "last_id": N|null}'), *_ERRORS),
            }},
            "/api/v1/agents": {"get": {
                "summary": "Agents with host facts, version, first/last seen, last health (admin or reader).",
                "security": _BEARER,
                "responses": _responses((200, '{"agents": [...]}'), *_ERRORS),
            }},
            "/api/v1/vulns": {"get": {
                "summary": "Vulnerability findings ranked by risk, active packages first (admin or reader).",
                "security": _BEARER,
                "parameters": [
                    _param("host", "host name"), _param("agent", "agent id"),
                    _param("severity", "critical, high, medium, low, negligible, unknown; several separated "
                                       "by commas"),
                    _param("active", "true: packages in use now; false: the others", "boolean"),
                    _param("status", "affected, or unknown (the version could not be ordered)"),
                    _param("recent_days", "window of 'was active' (default 7)", "number"),
                    _param("limit", "at most this many (default 100, capped at 10000)", "integer"),
                ],
                "responses": _responses(
                    (200, '{"findings": [{"id", "aliases", "package", "version", "ecosystem", "purl", '
                          '"fixed_version", "severity", "cvss", "score", "status", "active", "activity", '
                          '"exposed", "host", "scope", ...}], "total": N, "advisories": N, "stats": {...}}'),
                    *_ERRORS, (503, "the platform database is not a file")),
            }},
            "/api/v1/packages": {"get": {
                "summary": "Installed packages per host and scope, with activity (admin or reader).",
                "security": _BEARER,
                "parameters": [
                    _param("host", "host name"), _param("agent", "agent id"),
                    _param("active", "true or false", "boolean"), _param("q", "text contained in the name"),
                    _param("limit", "at most this many (default 1000, capped at 10000)", "integer"),
                ],
                "responses": _responses((200, '{"packages": [...], "total": N}'), *_ERRORS),
            }},
            **_module_paths(),
        },
    }
