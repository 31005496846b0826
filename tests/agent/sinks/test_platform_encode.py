"""Batch bodies: zstd(msgpack) round trip, and bounded decoding of hostile bodies."""

from __future__ import annotations

from pathlib import Path

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


def test_sink_cuts_batches_below_the_platforms_decoded_limit(tmp_path: Path) -> None:
    """1,000 execs with 16 KiB argv each are ~16 MiB of msgpack: the sink must split them so no
    spooled batch exceeds MAX_RAW_BATCH_BYTES (the platform refuses more than 16 MiB)."""
    from heron.agent.sinks.encode import MAX_RAW_BATCH_BYTES, decompress_bounded
    from heron.agent.sinks.platform import PlatformSink
    from heron.agent.spool.segments import Spool
    from heron.schema.events import HostInfo, Process, ProcessExec

    host = HostInfo(hostname="h", machine_id="m", boot_id="b" * 32, kernel="k", distro="d", arch="a")
    sink = PlatformSink("http://127.0.0.1:9", "t", tmp_path / "state", host, start=False, batch_max_events=1000)
    big = [ProcessExec(ts=i, process=Process(key=f"k{i}", pid=i, argv=[f"{i}" + "x" * 16_000])) for i in range(1000)]
    sink.write(big)
    sink.close()
    spool = Spool(tmp_path / "state" / "spool")
    sizes, total = [], 0
    while (rec := spool.read_next()) is not None:
        batch_id, payload = rec
        raw = decompress_bounded(payload[4:])
        sizes.append(len(raw))
        total += 1
        spool.ack(batch_id)
    spool.close()
    assert total >= 4 and max(sizes) <= MAX_RAW_BATCH_BYTES
