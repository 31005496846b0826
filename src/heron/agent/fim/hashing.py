"""SHA-256 of a file's content, safely, on a host an attacker may be changing while we read.

- Never follows a symlink (lstat first, then O_NOFOLLOW) and only opens regular files: a FIFO,
  socket or device is reported as ``not_regular`` without being opened (opening some devices has
  side effects, and a FIFO would block). The open also has O_NONBLOCK|O_NOCTTY, in case the
  path was swapped for one between the lstat and the open, and O_NOATIME when allowed.
- fstat before and after reading: a file whose size, mtime, ctime or inode moved while it was
  read, or that was replaced under its name (lstat after), is hashed once more, then reported as
  ``changed_while_hashing``. A file whose ctime is within ``RACY_NS`` of now may be in the middle
  of a write that began (and moved the timestamps) before we looked: it is read again after that
  delay and its hash kept only if both reads agree. Deleted meanwhile: ``vanished``. Larger than
  the limit: ``too_large`` (not read at all). EACCES/EPERM: ``unreadable``. Other errors:
  ``error:<ERRNO>``.
- ``IoBudget`` throttles the reading thread to a rate (MiB/s) and a share of one CPU.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import threading
import time
from typing import NamedTuple

from heron.schema.events import FileMeta

_MIB = 1 << 20
_CHUNK = _MIB
_SMALL = 64 * 1024  # read in one os.read below this size
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_NOATIME = getattr(os, "O_NOATIME", 0)
_tls = threading.local()
RACY_NS = 50_000_000  # a file changed this recently is read twice (see hash_file)


class HashResult(NamedTuple):
    sha256: str | None
    skipped: str | None  # why there is no hash: not_regular, too_large, vanished, unreadable, ...
    meta: FileMeta | None  # metadata of the content hashed (or of what was found), None if gone
    ctime_ns: int = 0  # st_ctime_ns with meta (FileMeta has no ctime; the baseline keeps it)


def meta_of(st: os.stat_result) -> FileMeta:
    return FileMeta(mode=st.st_mode, uid=st.st_uid, gid=st.st_gid, size=st.st_size, mtime_ns=st.st_mtime_ns,
                    inode=st.st_ino, dev=st.st_dev, nlink=st.st_nlink)


class IoBudget:
    """Keep the calling thread under ``mb_per_s`` of reads and ``cpu_percent`` of one CPU.

    ``spend(nbytes)`` after each read (``spend(0)`` now and then to account CPU spent on other
    work) sleeps as needed. Measured over windows of about a second, so an idle spell does not
    build up credit for a later burst. Meant for one thread: the CPU measured is the caller's."""

    WINDOW_S = 1.0

    def __init__(self, mb_per_s: float, cpu_percent: float) -> None:
        if mb_per_s <= 0 or not 0 < cpu_percent <= 100:
            raise ValueError("IoBudget needs mb_per_s > 0 and 0 < cpu_percent <= 100")
        self.bytes_per_s = mb_per_s * _MIB
        self.cpu_share = cpu_percent / 100.0
        self.slept_s = 0.0
        self._reset()

    def _reset(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = time.thread_time()
        self._bytes = 0

    def spend(self, nbytes: int) -> None:
        self._bytes += nbytes
        elapsed = time.monotonic() - self._t0
        due = self._bytes / self.bytes_per_s
        if self.cpu_share < 1.0:
            due = max(due, (time.thread_time() - self._cpu0) / self.cpu_share)
        wait = due - elapsed
        if wait > 0.002:
            wait = min(wait, self.WINDOW_S)
            time.sleep(wait)
            self.slept_s += wait
            elapsed += wait
        if elapsed >= self.WINDOW_S:
            self._reset()


def _skip(reason: str, st: os.stat_result | None = None) -> HashResult:
    return HashResult(None, reason, meta_of(st) if st is not None else None, st.st_ctime_ns if st else 0)


def _skip_meta(reason: str, seen: HashResult) -> HashResult:
    return HashResult(None, reason, seen.meta, seen.ctime_ns)


def _reason(e: OSError) -> str:
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        return "vanished"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "unreadable"
    if e.errno in (errno.ELOOP, errno.ENXIO, errno.ENODEV):  # swapped for a symlink, socket or device
        return "not_regular"
    if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):  # a lease or mandatory lock
        return "busy"
    return f"error:{errno.errorcode.get(e.errno or 0, e.errno)}"


def _open(path: bytes, dir_fd: int | None) -> int:
    if _NOATIME:
        try:
            return os.open(path, _OPEN_FLAGS | _NOATIME, dir_fd=dir_fd)
        except PermissionError:  # O_NOATIME needs ownership or CAP_FOWNER; retry plainly
            pass
    return os.open(path, _OPEN_FLAGS, dir_fd=dir_fd)


def _buffer() -> bytearray:
    buf: bytearray | None = getattr(_tls, "buf", None)
    if buf is None:
        buf = _tls.buf = bytearray(_CHUNK)
    return buf


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_ino == b.st_ino and a.st_dev == b.st_dev and a.st_size == b.st_size
            and a.st_mtime_ns == b.st_mtime_ns and a.st_ctime_ns == b.st_ctime_ns)


def _hash_once(path: bytes, max_bytes: int, budget: IoBudget | None, dir_fd: int | None) -> HashResult:
    try:
        st0 = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as e:
        return _skip(_reason(e))
    if not stat.S_ISREG(st0.st_mode):
        return _skip("not_regular", st0)
    if st0.st_size > max_bytes:
        return _skip("too_large", st0)
    try:
        fd = _open(path, dir_fd)
    except OSError as e:
        return _skip(_reason(e), st0)
    try:
        st1 = os.fstat(fd)
        if not stat.S_ISREG(st1.st_mode):
            return _skip("not_regular", st1)
        if st1.st_ino != st0.st_ino or st1.st_dev != st0.st_dev:
            return _skip("changed_while_hashing", st1)
        if st1.st_size > max_bytes:
            return _skip("too_large", st1)
        h = hashlib.sha256()
        total = 0
        if st1.st_size < _SMALL:
            while chunk := os.read(fd, _SMALL + 1):
                h.update(chunk)
                total += len(chunk)
                if total > _SMALL:
                    break  # it grew: the fstat below says so
        else:
            buf = _buffer()
            view = memoryview(buf)
            while n := os.readv(fd, [buf]):
                h.update(view[:n])
                total += n
                if budget is not None:
                    budget.spend(n)
                if total > max_bytes:
                    break
        st2 = os.fstat(fd)
    except OSError as e:
        return _skip(_reason(e), st0)
    finally:
        os.close(fd)
    if not _same(st1, st2) or total != st2.st_size:
        return _skip("too_large" if st2.st_size > max_bytes else "changed_while_hashing", st2)
    try:  # deleted, or replaced under its name (rename over it), while we read it?
        st3 = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as e:
        return _skip(_reason(e), st2)  # ENOENT: vanished
    if st3.st_ino != st2.st_ino or st3.st_dev != st2.st_dev:
        return _skip("changed_while_hashing", st3)
    if budget is not None and total < _SMALL:
        budget.spend(total)
    return HashResult(h.hexdigest(), None, meta_of(st2), st2.st_ctime_ns)


def hash_file(path: bytes, max_bytes: int, *, budget: IoBudget | None = None,
              dir_fd: int | None = None) -> HashResult:
    """Hash the regular file at ``path`` (relative to ``dir_fd`` when given: paths longer than
    PATH_MAX are reached that way). A file that changed while read is tried once more."""
    result = _hash_once(path, max_bytes, budget, dir_fd)
    if result.skipped == "changed_while_hashing":
        result = _hash_once(path, max_bytes, budget, dir_fd)
    if result.sha256 is None or abs(time.time_ns() - result.ctime_ns) >= RACY_NS:
        return result
    # Changed moments ago: a write may still be copying data (timestamps move when a write starts),
    # so what we read may be torn. Let it finish, read again: the same hash and ctime mean stable.
    time.sleep(RACY_NS / 1e9)
    again = _hash_once(path, max_bytes, budget, dir_fd)
    if again.sha256 is None:
        return again
    if again.sha256 != result.sha256 or again.ctime_ns != result.ctime_ns or again.meta != result.meta:
        return _skip_meta("changed_while_hashing", again)
    return again
