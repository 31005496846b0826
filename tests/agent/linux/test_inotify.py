"""inotify through ctypes: parsing (synthetic and hostile), watch bookkeeping across renames,
move pairing by cookie, and the real kernel's events and queue overflow."""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from heron.agent.linux import inotify as ino

HEAD = struct.Struct("=iIII")


def rec(wd: int, mask: int, cookie: int = 0, name: bytes = b"", pad: int = 16) -> bytes:
    body = name + b"\0" * (pad - len(name) % pad) if name else b""
    return HEAD.pack(wd, mask, cookie, len(body)) + body


def test_parse_events_and_truncation() -> None:
    buf = rec(1, ino.IN_CREATE, name=b"a\nb") + rec(2, ino.IN_ATTRIB) + rec(1, ino.IN_MOVED_FROM, 9, b"\xff" * 20)
    events, bad = ino.parse_events(buf)
    assert bad == 0
    assert events == [ino.InotifyEvent(1, ino.IN_CREATE, 0, b"a\nb"), ino.InotifyEvent(2, ino.IN_ATTRIB, 0, b""),
                      ino.InotifyEvent(1, ino.IN_MOVED_FROM, 9, b"\xff" * 20)]
    assert ino.parse_events(buf[:-1]) == (events[:2], 1)
    assert ino.parse_events(buf + b"\0\0") == (events, 1)
    rng = random.Random(7)
    for _ in range(2000):
        b = bytearray(buf)
        b[rng.randrange(len(b))] = rng.randrange(256)
        out, n = ino.parse_events(bytes(b[: rng.randint(0, len(b))]))
        assert n in (0, 1) and all(isinstance(e, ino.InotifyEvent) for e in out)


def test_watches_follow_directory_renames() -> None:
    w = ino.Watches()
    w.add(1, b"/r")
    w.add(2, b"/r/a")
    w.add(3, b"/r/a/b")
    w.add(4, b"/r/ab")
    w.moved(b"/r/a", b"/r/z")
    assert w.by_wd == {1: b"/r", 2: b"/r/z", 3: b"/r/z/b", 4: b"/r/ab"}
    assert w.by_path == {b"/r": 1, b"/r/z": 2, b"/r/z/b": 3, b"/r/ab": 4}
    assert sorted(wd for wd, _ in w.below(b"/r/z")) == [2, 3]
    assert w.drop(3) == b"/r/z/b" and w.drop(3) is None and len(w) == 3
    w.add(2, b"/elsewhere")  # the same inode seen under a new name
    assert b"/r/z" not in w.by_path and w.path(2) == b"/elsewhere"


def test_move_pairer() -> None:
    m = ino.MovePairer(hold_ns=100, max_pending=2)
    assert m.moved_from(1, b"/a", False, 0) == []
    assert m.moved_to(1) == ino.PendingMove(b"/a", False, 100)
    assert m.moved_to(1) is None
    m.moved_from(2, b"/b", True, 0)
    m.moved_from(3, b"/c", False, 50)
    pushed = m.moved_from(4, b"/d", False, 60)  # over the bound: the oldest is a move out
    assert [p.path for p in pushed] == [b"/b"]
    assert [p.path for p in m.expired(150)] == [b"/c"]
    assert [p.path for p in m.expired(0, everything=True)] == [b"/d"]


# -- the real kernel -----------------------------------------------------------------------------

@pytest.fixture
def tmpdir_b() -> Iterator[bytes]:
    d = tempfile.mkdtemp(prefix="heron-ino-").encode()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def drain(i: ino.Inotify) -> list[ino.InotifyEvent]:
    out: list[ino.InotifyEvent] = []
    while buf := i.read():
        events, bad = ino.parse_events(buf)
        assert bad == 0
        out += events
    return out


def test_real_events_and_cookie_pairs(tmpdir_b: bytes) -> None:
    i = ino.Inotify()
    try:
        wd = i.add_watch(tmpdir_b, ino.IN_CREATE | ino.IN_MOVED_FROM | ino.IN_MOVED_TO | ino.IN_ATTRIB
                         | ino.IN_CLOSE_WRITE | ino.IN_DELETE | ino.IN_ONLYDIR)
        d = tmpdir_b.decode()
        subprocess.run(["python3", "-c", f"import os; open('{d}/a', 'w').write('x'); os.rename('{d}/a', '{d}/b'); "
                        f"os.mkdir('{d}/s'); os.chmod('{d}', 0o700); os.unlink('{d}/b')"], check=True)
        events = drain(i)
        assert all(e.wd == wd for e in events)
        masks = [(e.mask, e.name) for e in events]
        assert (ino.IN_CREATE, b"a") in masks and (ino.IN_CLOSE_WRITE, b"a") in masks
        assert (ino.IN_CREATE | ino.IN_ISDIR, b"s") in masks and (ino.IN_ATTRIB | ino.IN_ISDIR, b"") in masks
        assert (ino.IN_DELETE, b"b") in masks
        frm = [e for e in events if e.mask & ino.IN_MOVED_FROM]
        to = [e for e in events if e.mask & ino.IN_MOVED_TO]
        assert len(frm) == len(to) == 1 and frm[0].cookie == to[0].cookie != 0
        assert frm[0].name == b"a" and to[0].name == b"b"
        with pytest.raises(OSError):
            i.add_watch(tmpdir_b + b"/missing", ino.IN_CREATE)
    finally:
        i.close()
        i.close()  # idempotent


def test_queue_overflow_is_reported() -> None:
    base = Path(tempfile.mkdtemp(prefix="heron-ino-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
    i = ino.Inotify()
    try:
        limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
        i.add_watch(os.fsencode(base), ino.IN_CREATE)
        for n in range(limit + 100):
            os.close(os.open(base / f"f{n}", os.O_CREAT | os.O_WRONLY, 0o600))
        events = drain(i)
        assert events[-1].mask & ino.IN_Q_OVERFLOW and events[-1].wd == -1
        assert len(events) == limit + 1
    finally:
        i.close()
        shutil.rmtree(base, ignore_errors=True)
