"""Batch bodies: zstd(msgpack) round trip, and bounded decoding of hostile bodies."""

from __future__ import annotations

import msgspec
import pytest
import zstandard

from heron.agent.sinks.encode import BatchEncoder, DecodeError, decode_batch, encode_batch
from heron.schema.events import AgentHealth, Process, ProcessExec, ProcessExit, encode_events


def sample() -> list[ProcessExec | ProcessExit | AgentHealth]:
    p = Process(key="abcd1234-42-100", pid=42, exe="/usr/bin/ls", argv=["ls", "-l", "café", "caf\\xc3"])
    return [
        ProcessExec(ts=1, source="process.ebpf", process=p),
        ProcessExit(ts=2, key=p.key, pid=42, exit_code=0),
        AgentHealth(ts=3, agent_version="0.1.0", uptime_s=1.5, collectors={"process": "ebpf"},
                    counters={"spool.dropped_records": 0}, cpu_s=0.1, rss_bytes=1 << 20),
    ]


def test_round_trip_is_a_zstd_frame_of_the_msgpack_array() -> None:
    events = sample()
    body = encode_batch(events)
    assert body[:4] == b"\x28\xb5\x2f\xfd"  # zstd frame magic
    assert zstandard.ZstdDecompressor().decompress(body) == encode_events(list(events))
    assert decode_batch(body) == events
    assert BatchEncoder().encode(events) == body  # same level, same bytes


def test_repetitive_batches_compress_well() -> None:
    events = [ProcessExit(ts=i, key=f"abcd1234-{i}-7", pid=i, exe="/usr/bin/true") for i in range(1000)]
    body = encode_batch(events)
    assert len(body) * 5 < len(encode_events(list(events)))


def test_decompression_bomb_is_refused() -> None:
    bomb = zstandard.ZstdCompressor().compress(b"\x90" * (4 << 20))
    with pytest.raises(DecodeError, match="more than"):
        decode_batch(bomb, limit=1 << 20)


def test_garbage_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_batch(b"not zstd at all")
    not_events = zstandard.ZstdCompressor().compress(msgspec.msgpack.encode([{"type": "nope"}]))
    with pytest.raises(msgspec.ValidationError):
        decode_batch(not_events)
