"""inotify(7) through ctypes: watches, event parsing, recursive watch bookkeeping, move pairing.

No policy here. ``Inotify`` owns one instance (non-blocking). ``parse_events`` turns one read(2)
buffer into ``InotifyEvent`` tuples (a malformed tail is counted, never raised). ``Watches``
keeps watch descriptor <-> directory path both ways and follows directory renames (the watch
stays on the inode; every path at and below the old name is rewritten). ``MovePairer`` joins
IN_MOVED_FROM and IN_MOVED_TO by cookie: the kernel queues them back to back, but a FROM whose
TO never comes (moved out of every watched directory) is handed back after ``hold_ns``.

Limits: inotify says nothing about the writer (no pid, no uid). Watches are per directory and
pin the inode: a tree of N directories costs N watches (fs.inotify.max_user_watches).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct
from typing import NamedTuple

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_UNMOUNT = 0x2000
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x0100_0000
IN_DONT_FOLLOW = 0x0200_0000
IN_EXCL_UNLINK = 0x0400_0000
IN_ISDIR = 0x4000_0000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

_HEAD = struct.Struct("=iIII")  # wd, mask, cookie, len


class InotifyEvent(NamedTuple):
    wd: int
    mask: int
    cookie: int
    name: bytes  # b"" for events on the watched directory itself


def parse_events(buf: bytes) -> tuple[list[InotifyEvent], int]:
    """Events in one read buffer and how many records were malformed (the rest is skipped)."""
    out: list[InotifyEvent] = []
    off, n, hs = 0, len(buf), _HEAD.size
    while off + hs <= n:
        wd, mask, cookie, ln = _HEAD.unpack_from(buf, off)
        end = off + hs + ln
        if end > n:
            return out, 1
        raw = buf[off + hs:end]
        z = raw.find(b"\0")
        out.append(InotifyEvent(wd, mask, cookie, raw[:z] if z >= 0 else raw))
        off = end
    return out, 0 if off == n else 1


class _Libc:
    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.init1 = libc.inotify_init1
        self.init1.argtypes = [ctypes.c_int]
        self.init1.restype = ctypes.c_int
        self.add_watch = libc.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.add_watch.restype = ctypes.c_int
        self.rm_watch = libc.inotify_rm_watch
        self.rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        self.rm_watch.restype = ctypes.c_int


_libc: _Libc | None = None


def libc() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


class Inotify:
    def __init__(self) -> None:
        fd = libc().init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd = fd

    def add_watch(self, path: bytes, mask: int) -> int:
        wd = libc().add_watch(self.fd, path, mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path!r}: {os.strerror(err)}")
        return int(wd)

    def rm_watch(self, wd: int) -> None:
        libc().rm_watch(self.fd, wd)  # EINVAL when the kernel already dropped it: nothing to do

    def read(self, size: int = 256 * 1024) -> bytes:
        try:
            return os.read(self.fd, size)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


class Watches:
    """Watch descriptor <-> directory path, both ways."""

    def __init__(self) -> None:
        self.by_wd: dict[int, bytes] = {}
        self.by_path: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self.by_wd)

    def add(self, wd: int, path: bytes) -> None:
        old = self.by_wd.get(wd)
        if old is not None and old != path:
            self.by_path.pop(old, None)  # same inode seen under a new name (bind mount, rename)
        self.by_wd[wd] = path
        self.by_path[path] = wd

    def path(self, wd: int) -> bytes | None:
        return self.by_wd.get(wd)

    def drop(self, wd: int) -> bytes | None:
        path = self.by_wd.pop(wd, None)
        if path is not None and self.by_path.get(path) == wd:
            del self.by_path[path]
        return path

    def below(self, path: bytes) -> list[tuple[int, bytes]]:
        """Watches at ``path`` and under it."""
        pre = path + b"/"
        return [(wd, p) for wd, p in self.by_wd.items() if p == path or p.startswith(pre)]

    def moved(self, old: bytes, new: bytes) -> None:
        cut = len(old)
        for wd, p in self.below(old):
            if self.by_path.get(p) == wd:
                del self.by_path[p]
            q = new + p[cut:]
            self.by_wd[wd] = q
            self.by_path[q] = wd


class PendingMove(NamedTuple):
    path: bytes
    is_dir: bool
    deadline_ns: int


class MovePairer:
    """IN_MOVED_FROM waits here for the IN_MOVED_TO with its cookie."""

    def __init__(self, hold_ns: int = 20_000_000, max_pending: int = 4096) -> None:
        self.hold_ns = hold_ns
        self.max_pending = max_pending
        self.pending: dict[int, PendingMove] = {}

    def moved_from(self, cookie: int, path: bytes, is_dir: bool, now_ns: int) -> list[PendingMove]:
        """Remember a FROM; returns FROMs pushed out by the bound (to report as moved out)."""
        out: list[PendingMove] = []
        while len(self.pending) >= self.max_pending:
            first = next(iter(self.pending))
            out.append(self.pending.pop(first))
        self.pending[cookie] = PendingMove(path, is_dir, now_ns + self.hold_ns)
        return out

    def moved_to(self, cookie: int) -> PendingMove | None:
        return self.pending.pop(cookie, None)

    def expired(self, now_ns: int, everything: bool = False) -> list[PendingMove]:
        if not self.pending:
            return []
        gone = [c for c, m in self.pending.items() if everything or m.deadline_ns <= now_ns]
        return [self.pending.pop(c) for c in gone]
