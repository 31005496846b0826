"""POST /api/v1/ingest: one zstd-compressed msgpack batch of events from an agent (docs/wire.md).

Everything in the body is hostile until decoded: the compressed size is capped while reading, the
decompressed size is capped while decompressing (a bomb is refused before it is allocated), and
events must pass the schema. Decoding costs many times the decompressed size in objects, so a batch
claiming too many events is refused before decoding, and few batches are decoded at once (the
context's ``ingest_limiter``): a burst of requests queues instead of multiplying memory. A batch
id already stored answers ``duplicate`` and stores nothing.

Every string of a decoded event has NUL replaced by U+FFFD once, before anything else sees it
(PostgreSQL text cannot hold NUL; SQLite could, but both must store and analyse the same thing).
An analysis failure that a retry would not cure stores the batch anyway (200) and is counted
(``IngestStats``); a transient database error answers 503 so the agent resends.
"""

from __future__ import annotations

import logging
import re
import struct
import time
from collections.abc import Callable
from typing import Any

import msgspec
import sqlalchemy as sa
import zstandard
from sqlalchemy.engine import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from heron.platform import packages
from heron.platform.analysis import FUTURE_SLACK_NS, Batch, Pipeline
from heron.platform.api.auth import AGENT_ROLES, authenticate
from heron.platform.api.context import ApiError, PlatformContext, context, read_body
from heron.platform.enrich import classify_endpoints
from heron.platform.storage.base import EventRow, IngestResult
from heron.platform.storage.db import DatabaseUnavailable
from heron.platform.storage.schema import agents
from heron.schema.events import (
    AgentHealth,
    AnyEvent,
    DnsQuery,
    FileChange,
    NetFlow,
    NetListen,
    PackageActivity,
    PackageInventory,
    ProcessExec,
    ProcessExit,
    ProcessRef,
    decode_events,
    to_json,
)

log = logging.getLogger("heron.platform.ingest")

RETRY_AFTER_S = 5  # seconds an agent waits before sending again when the database is unavailable
BATCH_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
_READ_CHUNK = 1 << 20
_MAX_ERROR = 300  # characters of a decoder message echoed back


def decompress_capped(body: bytes, limit: int) -> bytes:
    """Decompress a zstd body, refusing (413) any output larger than ``limit`` without producing it."""
    try:
        declared = zstandard.frame_content_size(body)
    except zstandard.ZstdError:
        raise ApiError(400, "body is not a zstd frame") from None
    if declared > limit:  # -1 when the frame does not say: the streaming cap below decides
        raise ApiError(413, f"decompressed body larger than {limit} bytes")
    reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := reader.read(_READ_CHUNK):
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"decompressed body larger than {limit} bytes")
            chunks.append(chunk)
    except zstandard.ZstdError as e:
        raise ApiError(400, f"bad zstd data: {e}") from None
    return b"".join(chunks)


def declared_length(raw: bytes) -> int | None:
    """The element count a msgpack array header declares, or None if ``raw`` is not an array."""
    if not raw:
        return None
    head = raw[0]
    if 0x90 <= head <= 0x9F:  # fixarray
        return head & 0x0F
    try:
        if head == 0xDC:  # array 16
            return int(struct.unpack_from(">H", raw, 1)[0])
        if head == 0xDD:  # array 32
            return int(struct.unpack_from(">I", raw, 1)[0])
    except struct.error:
        return None  # truncated header: the decoder says so
    return None


def _ref_row(etype: str, ts: int, r: ProcessRef | None, text: str, data: bytes) -> EventRow:
    if r is None:
        return EventRow(etype, ts, None, None, None, text, data)
    return EventRow(etype, ts, r.key or None, r.pid or None, r.exe or None, f"{r.exe} {text}", data)


def _without_nul(value: Any) -> Any:
    """``value`` with NUL replaced by U+FFFD in every string it holds (structs, lists, dicts)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, msgspec.Struct):
        return msgspec.structs.replace(value, **{f: _without_nul(getattr(value, f)) for f in value.__struct_fields__})
    if isinstance(value, list | tuple):
        return type(value)(_without_nul(v) for v in value)
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    return value


def clean_event(event: AnyEvent) -> tuple[AnyEvent, bytes]:
    """The event without NUL characters, and its JSON. Fast path: JSON escapes a NUL as \\u0000, so
    an event whose JSON lacks that has none (the walk runs only for the rare one that may)."""
    data = to_json(event)
    if b"\\u0000" not in data:
        return event, data
    event = _without_nul(event)
    return event, to_json(event)


def event_row(event: AnyEvent, data: bytes | None = None) -> EventRow:
    """The indexed columns of one event (``data``: its JSON, when already encoded); ``cmdline`` is
    the text the events API searches."""
    data = to_json(event) if data is None else data
    if isinstance(event, ProcessExec):
        p = event.process
        return EventRow("process.exec", event.ts, p.key, p.pid, p.exe, " ".join([p.exe, *p.argv]), data)
    if isinstance(event, ProcessExit):
        return EventRow("process.exit", event.ts, event.key, event.pid, event.exe, event.exe, data)
    if isinstance(event, NetFlow):
        text = f"{event.remote_addr}:{event.remote_port} {event.domain or ''}"
        return _ref_row("net.flow", event.ts, event.process, text, data)
    if isinstance(event, NetListen):
        return _ref_row("net.listen", event.ts, event.process, f"{event.addr}:{event.port}", data)
    if isinstance(event, DnsQuery):
        return _ref_row("net.dns", event.ts, event.process, f"{event.query} {' '.join(event.answers)}", data)
    if isinstance(event, FileChange):
        text = f"{event.path} {event.old_path}" if event.old_path else event.path
        return _ref_row("file.change", event.ts, event.process, text, data)
    if isinstance(event, PackageInventory | PackageActivity):
        kind = "package.inventory" if isinstance(event, PackageInventory) else "package.activity"
        return EventRow(kind, event.ts, None, None, None, event.scope, data)
    return EventRow("agent.health", event.ts, None, None, None, None, data)


def store_batch(ctx: PlatformContext, agent_id: str, batch_id: str, body: bytes) -> IngestResult:
    raw = decompress_capped(body, ctx.config.max_decompressed_bytes)
    limit = ctx.config.max_batch_events
    declared = declared_length(raw)
    if declared is not None and declared > limit:
        raise ApiError(400, f"batch declares {declared} events; at most {limit} per batch")
    try:
        events = decode_events(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise ApiError(400, f"invalid events: {str(e)[:_MAX_ERROR]}") from None
    del raw
    classify_endpoints(ctx.container_addresses(agent_id), events)
    cleaned = [clean_event(e) for e in events]
    events = [e for e, _ in cleaned]
    packages.ingest(ctx.db, agent_id, events)  # before the batch is stored: a retry repairs a crash
    rows = [event_row(e, data) for e, data in cleaned]
    health = [e for e in events if isinstance(e, AgentHealth)]
    last_health = to_json(max(health, key=lambda h: h.ts)) if health else None
    del events, health, cleaned
    now = time.time_ns()
    analyse = _analyse(ctx.pipeline, agent_id, rows, now)
    try:
        result = ctx.storage.ingest_batch(agent_id, batch_id, rows, last_health, now, analyse=analyse)
    except OverflowError:  # an integer (ts, pid) the schema allows but the database's int64 cannot hold
        raise ApiError(400, "invalid events: integer out of range (64-bit signed)") from None
    if not result.duplicate:
        # stored as sent (the agent's clock may be wrong); counted so that the skew is visible
        ctx.ingest_stats.count_future(sum(1 for r in rows if r.ts > now + FUTURE_SLACK_NS))
        if analyse is not None:
            ctx.ingest_stats.analysed(agent_id, batch_id, result.analysis_error, now)
    return result


def _analyse(pipeline: Pipeline, agent_id: str, rows: list[EventRow], now: int) -> Callable[[Connection], None] | None:
    """The pipeline as the storage's ``analyse`` hook (run inside the batch's transaction), or None
    when it has no stage (then nothing is decoded again)."""
    if pipeline.rules is None and pipeline.graph is None and pipeline.alerts is None:
        return None

    def analyse(conn: Connection) -> None:
        hostname = conn.execute(sa.select(agents.c.hostname).where(agents.c.agent_id == agent_id)).scalar()
        pipeline.run(conn, Batch(agent_id, hostname or "", received=now,
                                 events=[msgspec.json.decode(r.data) for r in rows]))

    return analyse


async def ingest(request: Request) -> Response:
    """The database being unreachable is answered 503 with Retry-After: the agent keeps the batch
    in its spool and sends it again (nothing is lost, and a half-stored batch was rolled back)."""
    try:
        return await _ingest(request)
    except DatabaseUnavailable as e:
        log.warning("ingest: database unavailable: %s", str(e)[:_MAX_ERROR])
        raise ApiError(503, "database unavailable; retry later", {"Retry-After": str(RETRY_AFTER_S)}) from None


async def _ingest(request: Request) -> Response:
    record = await authenticate(request, AGENT_ROLES)
    agent_id = request.headers.get("x-heron-agent", "")
    if not agent_id or agent_id != record.agent_id:
        raise ApiError(403, "X-Heron-Agent does not match the token's agent")
    batch_id = request.headers.get("x-heron-batch", "")
    if not BATCH_ID.fullmatch(batch_id):
        raise ApiError(400, "X-Heron-Batch must be 1-128 characters of [A-Za-z0-9._:@-]")
    ctype = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if ctype != "application/x-msgpack":
        raise ApiError(415, "expected Content-Type: application/x-msgpack")
    if request.headers.get("content-encoding", "").strip().lower() != "zstd":
        raise ApiError(415, "expected Content-Encoding: zstd")
    ctx = context(request)
    body = await read_body(request, ctx.config.max_body_bytes)
    # A retried batch is answered without decompressing it again; the insert re-checks atomically.
    if await run_in_threadpool(ctx.storage.has_batch, agent_id, batch_id):
        result = IngestResult(accepted=0, duplicate=True)
    else:
        result = await ctx.ingest_limiter.run(store_batch, ctx, agent_id, batch_id, body)
    return JSONResponse({"accepted": result.accepted, "duplicate": result.duplicate})
