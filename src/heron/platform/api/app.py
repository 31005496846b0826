"""The platform's ASGI application: API routes, console, retention task.

``create_app`` takes a Storage (any implementation) and settings, so tests and ``heron server``
build the same app. The console is static files; strict security headers keep hostile event data
from ever running as script in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from heron import __version__
from heron.platform.api import alerts, enroll, graph, ingest, overview, query, users, vulns
from heron.platform.api.context import ApiError, PlatformConfig, PlatformContext
from heron.platform.api.openapi import openapi_document
from heron.platform.storage.base import Storage
from heron.platform.storage.db import DatabaseUnavailable

log = logging.getLogger("heron.platform")

CONSOLE_DIR = Path(__file__).resolve().parent.parent / "console" / "static"
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """Pure ASGI middleware (does not buffer bodies) adding SECURITY_HEADERS to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok", "version": __version__})


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


async def _database_unavailable(request: Request, exc: Exception) -> Response:
    """Any request: the database went away (it may come back); say so instead of a 500."""
    return JSONResponse({"error": "database unavailable; retry later"}, status_code=503,
                        headers={"Retry-After": str(ingest.RETRY_AFTER_S)})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def run_retention(storage: Storage, days: float, now_ns: int | None = None) -> int:
    """Delete events older than ``days``; returns how many."""
    now = time.time_ns() if now_ns is None else now_ns
    return storage.delete_events_before(now - int(days * 86400 * 1e9))


async def _retention_loop(storage: Storage, config: PlatformConfig) -> None:
    while True:
        try:
            deleted = await run_in_threadpool(run_retention, storage, config.retention_days)
            if deleted:
                log.info("retention: deleted %d events older than %s days", deleted, config.retention_days)
        except Exception:  # keep serving; the next round retries
            log.exception("retention failed")
        await asyncio.sleep(config.retention_interval_s)


PARTITION_INTERVAL_S = 3600.0  # PostgreSQL: the coming days' event partitions are made this often


async def _partition_loop(storage: Storage) -> None:
    """Keep the coming days' partitions made (PostgreSQL), whatever the retention: ingest never
    creates tables, and an event past the last partition would land in the default one."""
    maintain = getattr(storage, "maintain_partitions", None)
    if maintain is None:
        return
    while True:
        try:
            made = await run_in_threadpool(maintain)
            if made:
                log.info("partitions: created %s", ", ".join(made))
        except Exception:  # keep serving; the next round retries
            log.exception("partition maintenance failed")
        await asyncio.sleep(PARTITION_INTERVAL_S)


def create_app(storage: Storage, config: PlatformConfig | None = None) -> Starlette:
    cfg = config or PlatformConfig()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(_retention_loop(storage, cfg)) if cfg.retention_days > 0 else None
        partitioner = asyncio.create_task(_partition_loop(storage))
        notifier = alerts.start_notifier(app.state.heron)
        try:
            yield
        finally:
            for t in (task, partitioner, notifier):
                if t is not None:
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await t

    routes = [
        Route("/api/v1/health", health, methods=["GET"]),
        Route("/api/v1/openapi.json", openapi, methods=["GET"]),
        Route("/api/v1/enroll", enroll.enroll, methods=["POST"]),
        Route("/api/v1/agents/self", enroll.update_self, methods=["PUT"]),
        Route("/api/v1/ingest", ingest.ingest, methods=["POST"]),
        Route("/api/v1/events", query.list_events, methods=["GET"]),
        Route("/api/v1/agents", query.list_agents, methods=["GET"]),
        Route("/api/v1/vulns", vulns.list_vulns, methods=["GET"]),
        Route("/api/v1/packages", vulns.list_packages, methods=["GET"]),
        Route("/api/v1/overview", overview.get_overview, methods=["GET"]),
        Route("/api/v1/session", users.login, methods=["POST"]),
        Route("/api/v1/session", users.whoami, methods=["GET"]),
        Route("/api/v1/session", users.logout, methods=["DELETE"]),
        Route("/api/v1/users", users.list_users, methods=["GET"]),
        Route("/api/v1/users", users.add_user, methods=["POST"]),
        Route("/api/v1/users/me/password", users.change_own_password, methods=["POST"]),
        Route("/api/v1/users/{id}", users.change_user, methods=["PATCH"]),
        Route("/api/v1/users/{id}", users.delete_user, methods=["DELETE"]),
        Route("/api/v1/tokens", users.list_tokens, methods=["GET"]),
        Route("/api/v1/tokens", users.add_token, methods=["POST"]),
        Route("/api/v1/tokens/{id}", users.revoke_token, methods=["DELETE"]),
        Route("/api/v1/agents/{agent_id}/token", users.revoke_agent_token, methods=["DELETE"]),
        *(Route(path, fn, methods=[method]) for path, fn, method in alerts.ROUTES),
        *(Route(path, fn, methods=[method]) for path, fn, method in graph.ROUTES),
        Mount("/", StaticFiles(directory=CONSOLE_DIR, html=True), name="console"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error,
                            DatabaseUnavailable: _database_unavailable},
        middleware=[Middleware(SecurityHeaders)],
    )
    app.state.heron = PlatformContext.create(storage, cfg)
    return app
