"""The agent's on-disk spool: a bounded, segmented, append-only log of opaque records.

Layout of the spool directory::

    state                 {"spool_id", "acked": [seq, offset], "next_seq"} as JSON, replaced atomically
    lock                  flock()ed by the process that has the spool open: one process per spool
    0000000000000001.seg  records appended one after another
    0000000000000002.seg  ...

A record is ``MAGIC (4 bytes) | payload length (u32 LE) | CRC32 of the payload (u32 LE) | payload``.

Invariants
- Records are only ever appended, each with one ``write()`` of header and payload together; a segment is
  never rewritten, except that recovery cuts a torn tail back to its last good record.
- A record's position (segment number, byte offset) never changes, and a segment number is never used
  twice: every open writes into a fresh segment whose number is recorded (and fsynced) in ``state``
  before any record goes into it. So ``batch id = spool id + segment + offset`` is unique per spool and
  the same across restarts: the platform can de-duplicate resends by it.
- Everything before the ack position (``state.acked``) has been acknowledged; ``read_next`` returns the
  record at the ack position, so a restart resends at most the records that were unacked (or whose ack
  had not reached ``state`` yet): at-least-once, never "at most once".
- A segment file is deleted only once every record in it is acked, or when the size bound drops it;
  the segment being written is never deleted.
- Bounded: when ``max_bytes`` would be exceeded the oldest segments are dropped (their unacked records
  counted in ``spool.dropped_records``); ``append`` never blocks on the reader or the network.
- If ``state`` is lost or corrupt while segments exist, a new spool id is chosen: batch ids change and
  the platform may store some batches twice, but it can never mistake a new batch for an old one.

Durability
- Each ``append`` is one ``write()``: a record that ``append`` returned survives a crash of the process
  (SIGKILL included) because it is in the kernel's page cache.
- The active segment is ``fdatasync``ed on rotation, on ``close``, and by ``sync_if_due`` at most every
  ``sync_interval_s`` (the platform sink's shipper thread calls it, so ``append`` never waits for the
  disk): after a power loss, about that window of records is lost (plus a torn tail, which recovery
  cuts).
- Recovery on open: the last segment (the one that may have been torn mid-write) is scanned and cut back
  to its last good record (``spool.truncated_tails``); a corrupt record met while reading any other
  segment skips the rest of that segment (``spool.corrupt_skips``, with the records lost counted in
  ``spool.dropped_records`` when the header walk knew them).
- Corruption means the bytes are wrong (magic, length or CRC), cut short, or the segment file is gone.
  Any other I/O error while reading (EMFILE, EIO, ...) raises from ``read_next`` and changes nothing:
  the record may be intact, so the caller retries later (the platform sink's shipper backs off).

Threads: one writer (``append``) and one reader (``read_next``/``ack``) may run concurrently; a lock
guards the segment table and is held while one record is read (a page-cache read, not network).
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import os
import secrets
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import msgspec

from heron.agent.health import Health

MAGIC = b"HRN1"
_HEADER = struct.Struct("<4sII")
HEADER_SIZE = _HEADER.size
MAX_RECORD_BYTES = 64 << 20
_SUFFIX = ".seg"


class SpoolError(ValueError):
    pass


class _State(msgspec.Struct):
    spool_id: str
    acked: tuple[int, int]
    next_seq: int


@dataclass
class _Segment:
    seq: int
    path: Path
    size: int  # bytes of whole records (the readable extent)
    records: int  # records in [0, size), as the header walk counted them


def _seg_name(seq: int) -> str:
    return f"{seq:016d}{_SUFFIX}"


def _scan(path: Path, verify: bool) -> tuple[list[int], int, bool]:
    """Offsets of the whole records at the start of a segment file, where the last one ends, and
    whether anything else (a torn or corrupt record) follows. ``verify`` checks every CRC (reads the
    whole file); otherwise only headers are read."""
    offsets: list[int] = []
    off = 0
    with open(path, "rb", buffering=0) as f:
        fd = f.fileno()
        end = os.fstat(fd).st_size
        data = os.pread(fd, end, 0) if verify else b""
        while off + HEADER_SIZE <= end:
            header = data[off:off + HEADER_SIZE] if verify else os.pread(fd, HEADER_SIZE, off)
            magic, length, crc = _HEADER.unpack(header)
            stop = off + HEADER_SIZE + length
            if magic != MAGIC or length > MAX_RECORD_BYTES or stop > end:
                break
            if verify and zlib.crc32(data[off + HEADER_SIZE:stop]) != crc:
                break
            offsets.append(off)
            off = stop
    return offsets, off, off != end


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, directory: str | os.PathLike[str], *, max_bytes: int = 256 << 20,
                 segment_bytes: int = 8 << 20, sync_interval_s: float = 1.0,
                 health: Health | None = None) -> None:
        if segment_bytes <= HEADER_SIZE or max_bytes < 2 * segment_bytes:
            raise SpoolError("spool needs segment_bytes > header and max_bytes >= 2 * segment_bytes")
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.sync_interval_s = sync_interval_s
        self.health = health or Health()
        self._lock = threading.Lock()
        self._segments: dict[int, _Segment] = {}  # insertion order == seq order
        self._acked_in_head = 0  # records already acked in the head segment
        self._last_read: tuple[int, int, int] | None = None  # (seq, offset, end) of read_next's record
        self._last_sync = time.monotonic()
        self._dirty = False  # records appended since the last fdatasync
        self._closed = False
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolError(f"spool {self.dir} is in use by another process") from None
        self._state = self._open()
        self._fd = -1
        self._active = self._new_segment()

    # -- opening and recovery --------------------------------------------------------------------
    def _load_state(self) -> _State | None:
        try:
            return msgspec.json.decode((self.dir / "state").read_bytes(), type=_State)
        except FileNotFoundError:
            return None
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            self.health.add("spool.state_resets")
            return None

    def _open(self) -> _State:
        seqs = sorted(int(p.name[:-len(_SUFFIX)]) for p in self.dir.glob("*" + _SUFFIX)
                      if p.name[:-len(_SUFFIX)].isdigit())
        for tmp in self.dir.glob("state.tmp*"):
            tmp.unlink(missing_ok=True)
        state = self._load_state()
        if state is None:
            # A lost state with segments left means ids may have been used already: new spool id.
            if seqs and not (self.dir / "state").exists():  # missing; corrupt was counted above
                self.health.add("spool.state_resets")
            state = _State(secrets.token_hex(8), (0, 0), 1)
        last = seqs[-1] if seqs else 0
        for seq in seqs:
            path = self.dir / _seg_name(seq)
            if seq < state.acked[0]:
                path.unlink(missing_ok=True)  # fully acked; the deletion did not happen before a crash
                continue
            offsets, good, garbage = _scan(path, verify=seq == last)
            if garbage and seq == last:
                # The segment being written when the agent stopped: a torn tail, cut it.
                with open(path, "r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())
                self.health.add("spool.truncated_tails")
            elif garbage:
                self.health.add("spool.corrupt_skips")  # records after the damage are unreachable
            if seq == state.acked[0]:
                # After a power loss the ack position may lie past what survived of the file.
                state.acked = (seq, min(state.acked[1], good))
                self._acked_in_head = bisect.bisect_left(offsets, state.acked[1])
            self._segments[seq] = _Segment(seq, path, good, len(offsets))
        state.next_seq = max(state.next_seq, last + 1)
        if self._segments:
            head = next(iter(self._segments.values()))
            if head.seq != state.acked[0]:
                state.acked, self._acked_in_head = (head.seq, 0), 0
        return state

    def _write_state(self, sync: bool) -> None:
        tmp = self.dir / "state.tmp"
        data = msgspec.json.encode(self._state)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.dir / "state")
        if sync:
            _fsync_dir(self.dir)

    def _new_segment(self) -> _Segment:
        """Start a fresh segment; its number is durable in ``state`` before any record uses it."""
        seq = self._state.next_seq
        self._state.next_seq = seq + 1
        if not self._segments:
            self._state.acked, self._acked_in_head = (seq, 0), 0
        self._write_state(sync=True)
        path = self.dir / _seg_name(seq)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        if self._fd >= 0:
            os.fdatasync(self._fd)
            os.close(self._fd)
        self._fd = fd
        seg = _Segment(seq, path, 0, 0)
        self._segments[seq] = seg
        return seg

    # -- writer ------------------------------------------------------------------------------------
    @property
    def spool_id(self) -> str:
        return self._state.spool_id

    def append(self, payload: bytes) -> str:
        """Store one record and return its batch id. Drops the oldest segments rather than grow."""
        need = HEADER_SIZE + len(payload)
        if need > min(MAX_RECORD_BYTES, self.max_bytes // 2):
            self.health.add("spool.rejected_records")
            raise SpoolError(f"record of {len(payload)} bytes is larger than the spool accepts")
        record = _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            if self._closed:
                raise SpoolError("spool is closed")
            active = self._active
            if active.size and active.size + need > self.segment_bytes:
                self._rotate()
                active = self._active
            self._enforce_bound(need)
            off = active.size
            try:
                if os.write(self._fd, record) != len(record):
                    raise OSError(errno.ENOSPC, "short write")
            except OSError:
                # Disk full or I/O error: leave no torn record behind for the reader to trip on.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, off)
                raise
            active.size += need
            active.records += 1
            self._dirty = True
        self.health.add("spool.appended_records")
        return f"{self._state.spool_id}-{active.seq}-{off}"

    def _rotate(self) -> None:
        old = self._active
        self._active = self._new_segment()
        self._last_sync = time.monotonic()
        if self._state.acked == (old.seq, old.size):  # reader already finished it
            self._advance_past(old)

    def _enforce_bound(self, need: int) -> None:
        total = sum(s.size for s in self._segments.values())
        while total + need > self.max_bytes:
            head = next(iter(self._segments.values()))
            if head is self._active:
                break  # cannot happen while max_bytes >= 2 * segment_bytes; never drop the writer's file
            unacked = head.records - self._acked_in_head
            self.health.add("spool.dropped_records", unacked)
            self.health.add("spool.dropped_segments")
            total -= head.size
            self._advance_past(head)

    def _advance_past(self, seg: _Segment) -> None:
        """Forget ``seg`` (fully acked or dropped): move the ack position to the next segment."""
        del self._segments[seg.seq]
        nxt = next(iter(self._segments.values()))  # the active segment always remains
        self._state.acked, self._acked_in_head = (nxt.seq, 0), 0
        self._write_state(sync=False)
        seg.path.unlink(missing_ok=True)

    # -- reader --------------------------------------------------------------------------------------
    def read_next(self) -> tuple[str, bytes] | None:
        """The oldest record not yet acked (the same one until it is acked), or None if all are.
        Raises OSError when the record cannot be read for now (nothing is skipped: call again)."""
        with self._lock:
            while True:
                seq, off = self._state.acked
                seg = self._segments[seq]
                if off >= seg.size:
                    if seg is self._active:
                        return None
                    self._advance_past(seg)
                    continue
                record = self._pread(seg, off)
                if record is not None:
                    self._last_read = (seq, off, off + HEADER_SIZE + len(record))
                    return f"{self._state.spool_id}-{seq}-{off}", record
                # Corrupt record in an older segment: its end is unknowable, skip the segment.
                self.health.add("spool.corrupt_skips")
                self.health.add("spool.dropped_records", max(0, seg.records - self._acked_in_head))
                if seg is self._active:
                    self._rotate()  # damage under our own writer (disk error): write elsewhere
                self._advance_past(seg)

    def _pread(self, seg: _Segment, off: int) -> bytes | None:
        """The record at ``off``, or None if it is corrupt. Other OSErrors propagate: skipping the
        segment for a transient error (EMFILE, EIO) would delete records that are intact."""
        try:
            fd = os.open(seg.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # deleted behind our back: its records are gone, waiting cannot bring them back
        try:
            header = os.pread(fd, HEADER_SIZE, off)
            if len(header) < HEADER_SIZE:
                return None
            magic, length, crc = _HEADER.unpack(header)
            if magic != MAGIC or off + HEADER_SIZE + length > seg.size:
                return None
            payload = os.pread(fd, length, off + HEADER_SIZE)
        finally:
            os.close(fd)
        if len(payload) != length or zlib.crc32(payload) != crc:
            return None
        return payload

    def ack(self, batch_id: str) -> None:
        """Acknowledge the record ``read_next`` returned. Older ids are ignored (already acked or
        dropped); acking a record that was never read first is an error."""
        spool_id, seq, off = parse_batch_id(batch_id)
        if spool_id != self._state.spool_id:
            return
        with self._lock:
            head_seq, head_off = self._state.acked
            if (seq, off) < (head_seq, head_off):
                return
            if (seq, off) != (head_seq, head_off):
                raise SpoolError(f"ack out of order: {batch_id} is not the oldest unacked record")
            seg = self._segments[seq]
            last = self._last_read
            if last is None or last[:2] != (seq, off):
                raise SpoolError(f"ack of {batch_id} before read_next returned it")
            self._state.acked = (seq, last[2])
            self._acked_in_head += 1
            if self._state.acked[1] >= seg.size and seg is not self._active:
                self._advance_past(seg)
            else:
                self._write_state(sync=False)

    # -- accounting and lifecycle -----------------------------------------------------------------
    @property
    def pending_records(self) -> int:
        with self._lock:
            return sum(s.records for s in self._segments.values()) - self._acked_in_head

    @property
    def pending_bytes(self) -> int:
        with self._lock:
            return sum(s.size for s in self._segments.values()) - self._state.acked[1]

    def sync_if_due(self, force: bool = False) -> bool:
        """fdatasync the active segment if it has unsynced records and the last sync is at least
        ``sync_interval_s`` old. Meant for a thread other than the writer: the sync runs on a dup of
        the file descriptor, outside the lock, so ``append`` never waits for the disk."""
        with self._lock:
            now = time.monotonic()
            due = force or now - self._last_sync >= self.sync_interval_s
            if self._closed or not self._dirty or not due:
                return False
            fd = os.dup(self._fd)
            self._dirty, self._last_sync = False, now
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        return True

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            os.fdatasync(self._fd)
            os.close(self._fd)
            active = self._active
            if len(self._segments) == 1 and self._state.acked == (active.seq, active.size):
                # Nothing pending: leave no file behind (the next open starts a new number anyway).
                active.path.unlink(missing_ok=True)
            self._write_state(sync=True)
            os.close(self._lock_fd)  # releases the flock

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_batch_id(batch_id: str) -> tuple[str, int, int]:
    try:
        spool_id, seq, off = batch_id.rsplit("-", 2)
        return spool_id, int(seq), int(off)
    except ValueError:
        raise SpoolError(f"not a batch id: {batch_id!r}") from None


__all__ = ["HEADER_SIZE", "MAGIC", "Spool", "SpoolError", "parse_batch_id"]
