"""What every API module shares: the platform's settings, its storage, and the error type."""

from __future__ import annotations

import asyncio
import functools
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread
import msgspec
from sqlalchemy.engine import Connection
from starlette.requests import Request

from heron.platform.alerts.runtime import AlertsRuntime
from heron.platform.analysis import IngestStats, Pipeline
from heron.platform.enrich import ContainerAddresses
from heron.platform.graph import GraphBuilder
from heron.platform.storage.base import Storage
from heron.platform.storage.db import Database


@dataclass(frozen=True)
class PlatformConfig:
    max_body_bytes: int = 8 << 20  # compressed ingest body (docs/wire.md)
    # Larger output is a decompression bomb. Decoding costs far more memory than these bytes
    # (a 1-byte msgpack string is a ~50-byte object), so the cap is kept low.
    max_decompressed_bytes: int = 16 << 20
    max_batch_events: int = 100_000  # a batch claiming more events is refused before decoding
    ingest_workers: int = 2  # batches decoded and stored at once: bounds ingest memory
    max_json_body_bytes: int = 64 << 10  # enrol / agent update bodies
    max_query_limit: int = 1000
    default_query_limit: int = 100
    retention_days: float = 7.0  # 0 keeps events forever
    retention_interval_s: float = 3600.0
    # Local files (token files, vulndb.sqlite); None: beside a SQLite database (server.py sets it).
    data_dir: Path | None = None
    baseline_learning_s: float = 86400.0  # a process cluster's learning window (docs/graph.md)
    anomaly_alert_min_score: float = 60.0  # weaker anomalies stay "new" graph edges without an alert
    baseline_fleet_hosts: int = 2  # an edge new to a host is known when learned on this many other hosts
    session_idle_s: float = 12 * 3600.0  # console session ends after this long without a request
    session_max_s: float = 7 * 86400.0  # ... and this long after login in any case
    login_max_failures: int = 5  # failed logins per username + client address per window (per server)
    login_window_s: float = 60.0
    login_max_user_failures: int = 20  # ... per username from all addresses (docs/auth.md)
    login_max_waiting: int = 4  # logins queued for password hashing beyond the workers; more get 429
    cookie_secure: bool | None = None  # session cookie Secure flag; None: iff the request is https
    # alerts (docs/alerts.md)
    rule_paths: tuple[str, ...] = ()  # user rule files/directories, loaded beside the default pack
    rules_check_interval_s: float = 2.0  # hot reload: how often ingest checks the rule files
    incident_window_s: float = 600.0  # related detections within this join one alert
    dedupe_window_s: float = 600.0  # an identical detection within this counts on the first one
    suppression_refresh_s: float = 5.0  # each server re-reads the suppressions this often
    notify_poll_s: float = 2.0  # outbox polling when idle
    notify_max_attempts: int = 8  # then the notification is "failed"
    notify_backoff_s: float = 5.0  # first retry delay, doubled per attempt (capped at an hour)
    alert_max_detections_per_batch: int = 500  # beyond: folded into the agent's "storm" alert
    alert_max_new_per_agent_minute: int = 50  # new alerts per agent per minute (per server); beyond: storm
    notify_max_per_channel_minute: int = 60  # outbox rows per channel per minute; then one "throttled" row
    notify_deadline_s: float = 15.0  # a whole webhook send (the socket timeout is per operation)


T = TypeVar("T")


class WorkLimiter:
    """Runs blocking work in threads, at most ``slots`` at a time; callers over that wait
    asynchronously (holding no thread). One anyio limiter per event loop, as an asyncio primitive
    belongs to the loop that first waits on it (tests run an app on several loops)."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("slots must be >= 1")
        self.slots = slots
        self._limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = (
            weakref.WeakKeyDictionary()
        )

    def _limiter(self) -> anyio.CapacityLimiter:
        loop = asyncio.get_running_loop()
        limiter = self._limiters.get(loop)
        if limiter is None:
            limiter = self._limiters[loop] = anyio.CapacityLimiter(self.slots)
        return limiter

    async def run(self, func: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(functools.partial(func, *args), limiter=self._limiter())


@dataclass(frozen=True)
class PlatformContext:
    storage: Storage
    config: PlatformConfig
    ingest_limiter: WorkLimiter = field(default_factory=lambda: WorkLimiter(1))
    # agent id -> addresses of that host's containers (see heron.platform.enrich)
    _container_addrs: dict[str, ContainerAddresses] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    alerts: AlertsRuntime | None = None  # rule engine + alert recorder (pipeline stages), notifier settings
    pipeline: Pipeline = field(default_factory=Pipeline)  # run by ingest inside the batch's transaction
    ingest_stats: IngestStats = field(default_factory=IngestStats)  # analysis failures, future events

    @property
    def db(self) -> Database:
        return self.storage.db

    @classmethod
    def create(cls, storage: Storage, config: PlatformConfig) -> PlatformContext:
        alerts = AlertsRuntime.create(config)
        return cls(storage, config, WorkLimiter(config.ingest_workers), alerts=alerts,
                   pipeline=Pipeline(rules=alerts.engine, graph=GraphBuilder(config), alerts=alerts.recorder))

    def container_addresses(self, agent_id: str) -> ContainerAddresses:
        with self._lock:
            known = self._container_addrs.get(agent_id)
            if known is None:
                known = self._container_addrs[agent_id] = ContainerAddresses()
            return known


class ApiError(Exception):
    """An error answered as ``{"error": message}`` with this status."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def context(request: Request) -> PlatformContext:
    ctx = request.app.state.heron
    assert isinstance(ctx, PlatformContext)
    return ctx


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it exceeds ``limit`` (never buffered whole)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):  # "²".isdigit(), but int("²") fails
            raise ApiError(400, "invalid Content-Length")
        if int(declared) > limit:
            raise ApiError(413, f"body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def decode_json_body(request: Request, kind: type[T]) -> T:
    """A JSON request body as ``kind``: 415 unless it says application/json, 413 past
    ``max_json_body_bytes``, 400 with the decoder's reason (also for [[[[... nested too deeply)."""
    ctype = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, "expected Content-Type: application/json")
    body = await read_body(request, context(request).config.max_json_body_bytes)
    try:
        return msgspec.json.decode(body, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ApiError(400, f"invalid body: {e}") from None
    except RecursionError:  # an unknown field nested deeper than the decoder's stack
        raise ApiError(400, "invalid body: nested too deeply") from None


async def run_db(request: Request, fn: Callable[[Connection], T], *, write: bool = False) -> T:
    """``fn`` in a read (or, with ``write``, a write) transaction on the platform's database, in a thread."""
    db = context(request).db

    def run() -> T:
        with db.begin() if write else db.read() as conn:
            return fn(conn)
    return await anyio.to_thread.run_sync(run)
