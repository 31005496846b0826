"""What every API module shares: the platform's settings, its storage, and the error type."""

from __future__ import annotations

import asyncio
import functools
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
import anyio.to_thread
from starlette.requests import Request

from heron.platform.enrich import ContainerAddresses
from heron.platform.storage.base import Storage


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

    @classmethod
    def create(cls, storage: Storage, config: PlatformConfig) -> PlatformContext:
        return cls(storage, config, WorkLimiter(config.ingest_workers))

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
