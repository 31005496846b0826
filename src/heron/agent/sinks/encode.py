"""Batch bodies for the wire and the spool: one zstd frame holding a msgpack array of tagged events.

A compressor keeps its context between batches (cheaper than a new one per batch) but is not
thread-safe, so each ``BatchEncoder`` has its own; ``encode_batch`` shares one under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import zstandard

from heron.schema.events import AnyEvent, Event, decode_events, encode_events

ZSTD_LEVEL = 3
MAX_DECOMPRESSED = 16 << 20  # docs/wire.md: a larger output is a decompression bomb
# The agent cuts batches well below the platform's limits: a batch's msgpack stays under this.
MAX_RAW_BATCH_BYTES = 4 << 20


class DecodeError(ValueError):
    pass


class BatchEncoder:
    def __init__(self, level: int = ZSTD_LEVEL) -> None:
        self._zstd = zstandard.ZstdCompressor(level=level)

    def encode(self, events: Sequence[Event]) -> bytes:
        return self.encode_sized(events)[0]

    def encode_sized(self, events: Sequence[Event]) -> tuple[bytes, int]:
        """(zstd body, size of the msgpack inside it)."""
        raw = encode_events(list(events))
        data: bytes = self._zstd.compress(raw)
        return data, len(raw)


_shared = BatchEncoder()
_shared_lock = threading.Lock()


def encode_batch(events: Sequence[Event]) -> bytes:
    with _shared_lock:
        return _shared.encode(events)


def decompress_bounded(body: bytes, limit: int = MAX_DECOMPRESSED) -> bytes:
    """Decompress one zstd body, refusing more than ``limit`` bytes of output (whatever the frame
    header claims)."""
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(body, read_across_frames=True)
        out = bytearray()
        while len(out) <= limit:
            chunk = reader.read(min(1 << 20, limit + 1 - len(out)))
            if not chunk:
                break
            out += chunk
    except zstandard.ZstdError as e:
        raise DecodeError(f"bad zstd body: {e}") from None
    if len(out) > limit:
        raise DecodeError(f"batch decompresses to more than {limit} bytes")
    return bytes(out)


def decode_batch(body: bytes, limit: int = MAX_DECOMPRESSED) -> list[AnyEvent]:
    """Inverse of encode_batch; raises DecodeError (bad zstd, too large) or msgspec errors."""
    return decode_events(decompress_bounded(body, limit))


__all__ = ["MAX_DECOMPRESSED", "BatchEncoder", "DecodeError", "decode_batch", "decompress_bounded",
           "encode_batch"]
