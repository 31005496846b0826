"""BaselineStore on a real SQLite file: persistence, batching, crash safety, corrupt-file recovery,
subtree renames, key order, odd paths and concurrent use."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import heron.agent.fim.baseline as bl
from heron.agent.config import FileWatch
from heron.agent.fim.baseline import DB_NAME, BaselineStore
from heron.agent.fim.policy import Policy, Rule
from heron.agent.fim.scan import scan
from heron.schema.events import FileMeta

SRC = str(Path(__file__).resolve().parents[3] / "src")


def meta(n: int = 1, **kw: int) -> FileMeta:
    base = {"mode": 0o100644, "uid": 0, "gid": 0, "size": n, "mtime_ns": 10 * n, "inode": 100 + n, "dev": 7,
            "nlink": 1}
    return FileMeta(**{**base, **kw})


def test_put_get_delete_persist(tmp_path: Path) -> None:
    s = BaselineStore.open(str(tmp_path / "state"))
    assert s.note is None
    assert (tmp_path / "state" / DB_NAME).stat().st_mode & 0o777 == 0o600
    s.put(b"/etc/a", meta(1), "aa" * 32, 123)
    s.put(b"/etc/b", meta(2), None)
    assert s.get(b"/etc/a") == (meta(1), "aa" * 32)  # seen before any flush
    e = s.entry(b"/etc/a")
    assert e is not None and e.ctime_ns == 123
    s.delete(b"/etc/b")
    assert s.get(b"/etc/b") is None
    s.close()
    s.close()  # idempotent
    s = BaselineStore.open(str(tmp_path / "state"))
    assert s.get(b"/etc/a") == (meta(1), "aa" * 32)
    assert s.get(b"/etc/b") is None
    assert s.count() == 1
    s.close()


def test_odd_paths_and_big_numbers_round_trip(tmp_path: Path) -> None:
    s = BaselineStore.open(str(tmp_path))
    odd = [b"/t/new\nline", b"/t/\xff\xfe", b"/t/" + b"x" * 5000, b"/t/back\\slash", b"/t/sp ace"]
    huge = meta(3, inode=(1 << 64) - 5, dev=(1 << 63) + 1, mtime_ns=-5)
    for p in odd:
        s.put(p, huge, None)
    s.flush()
    for p in odd:
        assert s.get(p) == (huge, None)
    assert sorted(s.paths_under(b"/t")) == sorted(odd)
    s.close()


def test_key_order_is_walk_order_and_ranges_are_exact(tmp_path: Path) -> None:
    s = BaselineStore.open(str(tmp_path))
    paths = [b"/etc", b"/etc/a", b"/etc/a/x", b"/etc/a-b", b"/etc/a.c", b"/etc/b", b"/etcx", b"/etcx/y", b"/et"]
    for p in paths:
        s.put(p, meta(), None)
    # Depth-first, entries sorted by name: a directory's subtree comes before its next sibling.
    assert list(s.paths_under(b"/etc")) == [b"/etc", b"/etc/a", b"/etc/a/x", b"/etc/a-b", b"/etc/a.c", b"/etc/b"]
    assert list(s.paths_under(b"/etc/a")) == [b"/etc/a", b"/etc/a/x"]
    assert list(s.paths_under(b"/")) == [b"/et", b"/etc", b"/etc/a", b"/etc/a/x", b"/etc/a-b", b"/etc/a.c",
                                         b"/etc/b", b"/etcx", b"/etcx/y"]
    assert list(s.paths_under(b"/nothing")) == []
    s.close()


def test_paging_sees_writes_beyond_the_page(tmp_path: Path) -> None:
    s = BaselineStore.open(str(tmp_path))
    s.PAGE = 10
    for i in range(35):
        s.put(b"/d/%03d" % i, meta(), None)
    seen = []
    for p, _ in s.entries_under(b"/d"):
        seen.append(p)
        if p == b"/d/005":
            s.put(b"/d/030x", meta(), None)  # beyond the current page: read later
    assert len(seen) == 36 and seen == sorted(seen)
    s.close()


def test_rename_moves_a_subtree(tmp_path: Path) -> None:
    s = BaselineStore.open(str(tmp_path))
    for p in (b"/a/dir", b"/a/dir/f1", b"/a/dir/sub", b"/a/dir/sub/f2", b"/a/dir-x", b"/a/dirz", b"/b/old",
              b"/b/new", b"/b/new/stale"):
        s.put(p, meta(len(p)), f"{len(p):064d}")
    moved = s.rename(b"/a/dir", b"/b/new")
    assert moved == 4
    assert list(s.paths_under(b"/a")) == [b"/a/dir-x", b"/a/dirz"]  # name-prefix siblings untouched
    assert list(s.paths_under(b"/b/new")) == [b"/b/new", b"/b/new/f1", b"/b/new/sub", b"/b/new/sub/f2"]
    n = len(b"/a/dir/sub/f2")
    assert s.get(b"/b/new/sub/f2") == (meta(n), f"{n:064d}")
    assert s.get(b"/b/new/stale") is None  # what was at the target is gone
    assert s.rename(b"/b/old", b"/b/old2") == 1 and s.get(b"/b/old2") is not None
    assert s.rename(b"/missing", b"/x") == 0
    s.close()


def test_corrupt_file_is_moved_aside(tmp_path: Path) -> None:
    db = tmp_path / DB_NAME
    db.write_bytes(b"this is not a database" * 200)
    s = BaselineStore.open(str(tmp_path))
    assert s.note is not None and "moved to" in s.note
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(DB_NAME + ".corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not")
    s.put(b"/x", meta(), None)
    s.close()
    s = BaselineStore.open(str(tmp_path))
    assert s.note is None and s.get(b"/x") is not None
    s.close()


def test_damaged_pages_are_detected(tmp_path: Path) -> None:
    s = BaselineStore.open(str(tmp_path))
    for i in range(3000):
        s.put(b"/f/%d" % i, meta(i), f"{i:064d}")
    s.close()
    db = tmp_path / DB_NAME
    data = bytearray(db.read_bytes())
    for off in range(8192, len(data) - 4096, 4096):  # scribble over the b-tree pages (keep the header)
        data[off:off + 64] = os.urandom(64)
    db.write_bytes(bytes(data))
    s = BaselineStore.open(str(tmp_path))
    assert s.note is not None
    assert s.count() == 0
    s.close()


def test_crash_keeps_flushed_batches(tmp_path: Path) -> None:
    # A process that dies without close(): flushed and batch-committed writes survive, the file opens.
    code = f"""
import os, sys
sys.path.insert(0, {SRC!r})
from heron.agent.fim.baseline import BaselineStore
from heron.schema.events import FileMeta
s = BaselineStore.open(sys.argv[1])
s.BATCH = 100
m = FileMeta(mode=0o100644, size=1)
s.put(b"/flushed", m, None)
s.flush()
for i in range(250):          # two full batches commit by themselves, 50 stay buffered
    s.put(b"/batch/%d" % i, m, None)
os._exit(9)
"""
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=60)
    assert r.returncode == 9
    s = BaselineStore.open(str(tmp_path))
    assert s.note is None
    assert s.get(b"/flushed") is not None
    assert len(list(s.paths_under(b"/batch"))) == 200
    s.close()


def test_baselined_roots(tmp_path: Path) -> None:
    s = BaselineStore.open(str(tmp_path))
    assert not s.is_baselined(b"/etc")
    s.mark_baselined(b"/etc")
    s.close()
    s = BaselineStore.open(str(tmp_path))
    assert s.is_baselined(b"/etc") and s.baselined_roots() == [b"/etc"]
    s.close()


def test_threads_share_one_store(tmp_path: Path) -> None:
    s = BaselineStore.open(str(tmp_path))
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(3000):
                s.put(b"/t%d/%d" % (t, i), meta(i), None)
                if i % 7 == 0:
                    s.delete(b"/t%d/%d" % (t, i))
                if i % 500 == 0:
                    list(s.paths_under(b"/t%d" % t))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert s.count() == 4 * (3000 - len(range(0, 3000, 7)))
    s.close()
    conn = sqlite3.connect(tmp_path / DB_NAME)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_an_error_that_is_not_corruption_keeps_the_baseline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = BaselineStore.open(str(tmp_path))
    s.put(b"/x", meta(), None)
    s.close()
    def locked(path: Path) -> sqlite3.Connection:
        raise sqlite3.OperationalError("database is locked")
    monkeypatch.setattr(bl, "_connect", locked)
    with pytest.raises(sqlite3.OperationalError):
        BaselineStore.open(str(tmp_path))
    monkeypatch.undo()
    assert not [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    s = BaselineStore.open(str(tmp_path))
    assert s.note is None and s.get(b"/x") is not None
    s.close()


def test_a_rebuilt_baseline_reports_rather_than_records_quietly(tmp_path: Path) -> None:
    watched = tmp_path / "w"
    watched.mkdir()
    (watched / "a").write_text("a")
    state = tmp_path / "state"
    p = Policy([Rule.from_watch(FileWatch(path=str(watched), name="t"))])
    s = BaselineStore.open(str(state))
    assert list(scan(p, s)) == []  # the first scan records quietly
    s.close()
    (state / DB_NAME).write_bytes(b"this is not a database" * 200)
    (watched / "b").write_text("b")  # a change made while the baseline is damaged
    s = BaselineStore.open(str(state))
    assert s.note is not None and "reports every file under 1 baselined" in s.note
    got = {(e.action, e.path) for e in scan(p, s)}
    s.close()
    assert ("create", str(watched / "b")) in got and ("create", str(watched / "a")) in got
