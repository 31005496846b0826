"""A BPF ring buffer read through mmap, without a C callback per record.

Layout (kernel/bpf/ringbuf.c): page 0 holds the consumer position (we write it), page 1 the
producer position, then the data area mapped twice in a row so a record that wraps around the
end is still contiguous. Each record starts with an 8-byte header: u32 length (bit 31: still
being written, bit 30: discarded) and u32 page offset; records are 8-byte aligned.

``records()`` yields each record as bytes (one copy out of the mapping, so nothing the caller
keeps can pin the mapping or be overwritten by the kernel); the space is handed back to the
kernel (consumer position written) every few dozen records and when the drain ends.
"""

from __future__ import annotations

import mmap
import select
import struct
from collections.abc import Iterator

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HDR = 8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
# Hand space back to the kernel every this many records while draining a long backlog.
_COMMIT_EVERY = 64


class RingBuffer:
    def __init__(self, map_fd: int, size: int) -> None:
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size must be a power of two, not {size}")
        page = mmap.PAGESIZE
        self._mask = size - 1
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self._prod = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except OSError:
            self._cons.close()
            raise
        self._base = page  # the data area starts after the producer page
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)

    def wait(self, timeout_s: float) -> bool:
        """Blocks until the kernel says records are ready or the timeout passes."""
        return bool(self._epoll.poll(timeout_s))

    def pending(self) -> bool:
        return bool(_U64.unpack_from(self._prod)[0] > _U64.unpack_from(self._cons)[0])

    def records(self, limit: int = 1 << 30) -> Iterator[bytes]:
        """Yields up to ``limit`` committed records, oldest first; stops at the first record
        still being written."""
        cons = _U64.unpack_from(self._cons)[0]
        prod = _U64.unpack_from(self._prod)[0]
        data, mask, base = self._prod, self._mask, self._base
        unpack_u32 = _U32.unpack_from
        done = 0
        try:
            while cons < prod and done < limit:
                off = base + (cons & mask)
                hdr = unpack_u32(data, off)[0]
                if hdr & _BUSY:
                    break
                length = hdr & ~(_BUSY | _DISCARD)
                nxt = cons + ((_HDR + length + 7) & ~7)
                if not hdr & _DISCARD:
                    done += 1
                    yield data[off + _HDR : off + _HDR + length]
                cons = nxt
                if done % _COMMIT_EVERY == 0:
                    _U64.pack_into(self._cons, 0, cons)
                if cons >= prod:
                    prod = _U64.unpack_from(self._prod)[0]
        finally:
            _U64.pack_into(self._cons, 0, cons)

    def close(self) -> None:
        self._epoll.close()
        self._prod.close()
        self._cons.close()
