"""What every API module shares: the platform's settings, its storage, and the error type."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from heron.platform.storage.base import Storage


@dataclass(frozen=True)
class PlatformConfig:
    max_body_bytes: int = 8 << 20  # compressed ingest body (docs/wire.md)
    max_decompressed_bytes: int = 64 << 20  # larger output is a decompression bomb
    max_json_body_bytes: int = 64 << 10  # enrol / agent update bodies
    max_query_limit: int = 1000
    default_query_limit: int = 100
    retention_days: float = 7.0  # 0 keeps events forever
    retention_interval_s: float = 3600.0


@dataclass(frozen=True)
class PlatformContext:
    storage: Storage
    config: PlatformConfig


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
        if not declared.isdigit():
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
