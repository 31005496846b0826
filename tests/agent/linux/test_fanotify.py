"""fanotify through ctypes: record parsing (synthetic and hostile buffers), the real kernel's
records in FID mode, handle -> path resolution and its cache, queue overflow."""

from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from heron.agent.linux import fanotify as fan

META = struct.Struct("=IBBHQii")
FSID = b"F" * 8
HANDLE = struct.pack("=Ii", 8, 1) + b"h" * 8  # handle_bytes, handle_type, f_handle
KEY = FSID + HANDLE


def info(itype: int, key: bytes = KEY, name: bytes | None = None) -> bytes:
    body = key + (name + b"\0" if name is not None else b"")
    body += b"\0" * (-(len(body) + 4) % 4)
    return struct.pack("=BBH", itype, 0, len(body) + 4) + body


def record(mask: int, pid: int, *infos: bytes, fd: int = -1, vers: int = 3) -> bytes:
    rest = b"".join(infos)
    return META.pack(META.size + len(rest), vers, 0, META.size, mask, fd, pid) + rest


def test_parse_dfid_name_fid_and_rename() -> None:
    buf = (record(fan.FAN_CREATE | fan.FAN_ONDIR, 42, info(fan.INFO_DFID_NAME, name=b"new\ndir"),
                  info(fan.INFO_FID, FSID + HANDLE[:8] + b"c" * 8))
           + record(fan.FAN_RENAME, 7, info(fan.INFO_OLD_DFID_NAME, name=b"a"), info(fan.INFO_NEW_DFID_NAME, name=b"b"))
           + record(fan.FAN_ATTRIB, 9, info(fan.INFO_DFID, KEY)))
    events, bad = fan.parse_events(buf)
    assert bad == 0 and len(events) == 3
    a, b, c = events
    assert a.mask == fan.FAN_CREATE | fan.FAN_ONDIR and a.pid == 42 and a.dir == KEY and a.name == b"new\ndir"
    assert a.fid == FSID + HANDLE[:8] + b"c" * 8
    assert b.old_dir == KEY and b.old_name == b"a" and b.dir == KEY and b.name == b"b" and b.pid == 7
    assert c.dir == KEY and c.name is None


def test_malformed_records_are_counted_not_raised() -> None:
    good = record(fan.FAN_MODIFY, 1, info(fan.INFO_DFID_NAME, name=b"x"))
    bad_info = META.pack(META.size + 4, 3, 0, META.size, fan.FAN_MODIFY, -1, 1) + struct.pack("=BBH", 2, 0, 200)
    oversized = struct.pack("=BBH", 2, 0, 24) + FSID + struct.pack("=Ii", 4000, 1) + b"x" * 4
    huge_handle = record(fan.FAN_MODIFY, 1, oversized)
    assert fan.parse_events(good + bad_info + good) == (fan.parse_events(good)[0] * 2, 1)
    assert fan.parse_events(huge_handle)[1] == 1
    assert fan.parse_events(record(fan.FAN_MODIFY, 1, vers=2) + good) == ([], 1)  # cannot frame the rest
    assert fan.parse_events(good[:-3]) == ([], 1)
    assert fan.parse_events(b"") == ([], 0)


def test_the_fd_field_is_never_closed() -> None:
    r, w = os.pipe()
    try:
        events, bad = fan.parse_events(record(fan.FAN_MODIFY, 1, fd=r))
        assert bad == 0 and len(events) == 1
        os.fstat(r)  # still ours: a number in a record is not trusted with close()
    finally:
        os.close(r)
        os.close(w)


def test_random_mutations_never_raise() -> None:
    rng = random.Random(4)
    rename = record(fan.FAN_RENAME, 7, info(fan.INFO_OLD_DFID_NAME, name=b"a"), info(fan.INFO_NEW_DFID_NAME, name=b"b"))
    base = record(fan.FAN_CREATE, 42, info(fan.INFO_DFID_NAME, name=b"name"), info(fan.INFO_FID)) + rename
    for _ in range(3000):
        buf = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        cut = rng.randint(0, len(buf))
        events, bad = fan.parse_events(bytes(buf[:cut]))
        assert bad >= 0 and all(isinstance(e, fan.RawEvent) for e in events)


def test_resolver_cache_follows_renames_and_is_bounded() -> None:
    r = fan.HandleResolver(max_entries=3)
    r.remember(b"k1", b"/a")
    r.remember(b"k2", b"/a/b")
    r.remember(b"k3", b"/ab")
    r.moved(b"/a", b"/z")
    assert r.path(b"k1") == b"/z" and r.path(b"k2") == b"/z/b" and r.path(b"k3") == b"/ab"
    r.moved(b"/z/b", b"/y")
    r.moved(b"/y", b"/z/b2")
    assert r.path(b"k2") == b"/z/b2" and r.path(b"k1") == b"/z"
    r.forget_path(b"/z")
    assert r.path(b"k1") is None and r.path(b"k2") is None and r.path(b"k3") == b"/ab"
    for i in range(10):
        r.remember(b"n%d" % i, b"/n")
    assert len(r.cache) == 3
    assert r.path(b"unknown-fsid-and-handle") is None and r.failures == 3


def test_resolver_rename_loops_cost_constant_time() -> None:
    r = fan.HandleResolver(max_entries=100_000)
    for i in range(50_000):
        r.remember(b"k%d" % i, b"/w/d%d/sub" % (i % 100))
    t0 = time.monotonic()
    for i in range(5_000):  # mv d0 x; mv x d0, in a loop
        r.moved(b"/w/d0", b"/w/x") if i % 2 == 0 else r.moved(b"/w/x", b"/w/d0")
    assert time.monotonic() - t0 < 5.0  # 5 full rewrites of 50,000 entries, not 5,000
    assert r.path(b"k0") == b"/w/d0/sub" and r.path(b"k1") == b"/w/d1/sub"
    r.moved(b"/w/d1", b"/w/e1")
    assert r.path(b"k1") == b"/w/e1/sub" and r.path(b"k101") == b"/w/e1/sub"


# -- the real kernel -----------------------------------------------------------------------------

@pytest.fixture
def tmpdir_b() -> Iterator[bytes]:
    d = tempfile.mkdtemp(prefix="heron-fan-").encode()
    yield d
    shutil.rmtree(d, ignore_errors=True)


MASK = (fan.FAN_CREATE | fan.FAN_DELETE | fan.FAN_RENAME | fan.FAN_ATTRIB | fan.FAN_CLOSE_WRITE | fan.FAN_MODIFY
        | fan.FAN_ONDIR | fan.FAN_EVENT_ON_CHILD)


def drain(g: fan.Fanotify) -> list[fan.RawEvent]:
    out: list[fan.RawEvent] = []
    while buf := g.read():
        events, bad = fan.parse_events(buf)
        assert bad == 0
        out += events
    return out


@pytest.mark.privileged
def test_kernel_features_here() -> None:
    flags = fan.supported_init_flags()
    assert flags & fan.FAN_REPORT_DFID_NAME == fan.FAN_REPORT_DFID_NAME
    g = fan.Fanotify(fan.FAN_CLASS_NOTIF | flags)
    fd = g.fd
    try:
        assert fan.rename_supported(g, b"/tmp")
    finally:
        g.close()
        g.close()  # idempotent
    with pytest.raises(OSError):
        os.fstat(fd)
    assert fan.try_init(0xFFFF_0000)  # nonsense flags: a reason, not an exception


@pytest.mark.privileged
def test_real_records_name_the_writer_and_resolve(tmpdir_b: bytes) -> None:
    g = fan.Fanotify(fan.FAN_CLASS_NOTIF | fan.supported_init_flags())
    r = fan.HandleResolver()
    try:
        g.mark(tmpdir_b, MASK, fan.FAN_MARK_ONLYDIR)
        fsid = r.add_filesystem(tmpdir_b)
        d = tmpdir_b.decode()
        script = (f"import os; open('{d}/a', 'w').write('x'); os.rename('{d}/a', '{d}/b'); "
                  f"os.mkdir('{d}/sub'); os.chmod('{d}', 0o700)")
        child = subprocess.run(["python3", "-c", script], check=True)
        assert child.returncode == 0
        pid_events = drain(g)
        key = fan.handle_of(tmpdir_b)
        assert key[:8] == fsid
        assert all(e.dir == key for e in pid_events)
        assert r.path(key) == tmpdir_b and r.misses == 1 and r.path(key) == tmpdir_b and r.hits == 1
        by = {(e.name, e.mask & ~fan.FAN_ONDIR) for e in pid_events}
        assert any(n == b"a" and m & fan.FAN_CREATE for n, m in by)
        ren = [e for e in pid_events if e.mask & fan.FAN_RENAME]
        assert len(ren) == 1 and ren[0].old_dir == key and ren[0].old_name == b"a" and ren[0].name == b"b"
        sub = [e for e in pid_events if e.name == b"sub"]
        assert sub and sub[0].mask & fan.FAN_ONDIR and sub[0].fid == fan.handle_of(tmpdir_b + b"/sub")
        assert any(e.name == b"." and e.mask & fan.FAN_ATTRIB for e in pid_events)  # the directory itself
        assert len({e.pid for e in pid_events}) == 1 and pid_events[0].pid != os.getpid()
        # A deleted directory's handle no longer resolves.
        gone = fan.handle_of(tmpdir_b + b"/sub")
        os.rmdir(tmpdir_b + b"/sub")
        assert r.open_path(gone) is None
    finally:
        g.close()
        r.close()


@pytest.mark.privileged
def test_paths_longer_than_path_max(tmpdir_b: bytes) -> None:
    r = fan.HandleResolver()
    fd = os.open(tmpdir_b, os.O_RDONLY)
    try:
        r.add_filesystem(tmpdir_b)
        for depth in range(1, 21):  # 20 x 251 bytes: beyond PATH_MAX
            os.mkdir(b"n" * 250, dir_fd=fd)
            nfd = os.open(b"n" * 250, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            if depth == 10:
                mid = r.open_path(_handle_of_fd(fd))
                assert mid is not None and len(mid) > 2500
        assert r.open_path(_handle_of_fd(fd)) is None  # too long to show: unresolved, not an error
    finally:
        os.close(fd)
        r.close()


def _handle_of_fd(fd: int) -> bytes:
    return fan.handle_of(f"/proc/self/fd/{fd}".encode(), follow=True)


@pytest.mark.privileged
def test_queue_overflow_is_reported() -> None:
    base = Path(tempfile.mkdtemp(prefix="heron-fan-", dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
    g = fan.Fanotify(fan.FAN_CLASS_NOTIF | fan.FAN_REPORT_DFID_NAME)
    try:
        g.mark(os.fsencode(base), fan.FAN_CREATE | fan.FAN_EVENT_ON_CHILD)
        for i in range(17_000):  # the default queue holds 16,384 events
            os.close(os.open(base / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o600))
        events = drain(g)
        assert any(e.mask & fan.FAN_Q_OVERFLOW for e in events)
        assert len(events) <= 16_385
    finally:
        g.close()
        shutil.rmtree(base, ignore_errors=True)
