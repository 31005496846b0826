"""The file integrity baseline: path -> (metadata, sha256) in SQLite, kept across restarts.

- One file, ``STATE_DIR/fim-baseline.db`` (mode 0600; WAL, synchronous=NORMAL: a crash loses at
  most the last unflushed batch, never the file's consistency).
- Paths are bytes. The key is the path with '/' replaced by NUL (a byte no file name holds), so
  the keys' byte order is the order of a depth-first walk that visits each directory's entries
  sorted by name: the scan merges its walk with ``entries_under(root)`` in one pass, and a subtree
  is one key range.
- Writes are buffered (the latest operation per path) and committed every ``BATCH`` operations or
  on ``flush()``; reads see the buffer. One lock: the real-time source and the scan use the store
  from different threads.
- The store also remembers which scan roots have a complete baseline (``mark_baselined``): a
  root's first scan records quietly, later ones report differences. An emptied directory therefore
  never turns a later scan quiet again.
- A file SQLite reports as corrupt (SQLITE_CORRUPT, SQLITE_NOTADB, a failed quick_check, an unknown
  schema) is moved aside to ``fim-baseline.db.corrupt-<time>`` and a new baseline is started;
  ``note`` says so (the caller reports it: a baseline that disappears is itself worth knowing
  about). Any other SQLite error (locked, disk full, I/O) is raised: the baseline is kept.
- The baselined roots are also listed in ``fim-baseline.db.roots`` (hex, one a line). A baseline
  rebuilt after corruption takes its roots from there, so the next scan reports every file as
  created rather than recording quietly: a damaged baseline never hides changes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

from heron.schema.events import FileMeta

DB_NAME = "fim-baseline.db"
ROOTS_SUFFIX = ".roots"
_CORRUPT = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})
SCHEMA_VERSION = 1
_I64 = 1 << 63
_U64 = 1 << 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    k BLOB PRIMARY KEY,
    mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, ino INTEGER NOT NULL, dev INTEGER NOT NULL, nlink INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL, sha256 TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS roots (root BLOB PRIMARY KEY, baselined_ns INTEGER NOT NULL) WITHOUT ROWID;
"""


class Entry(NamedTuple):
    meta: FileMeta
    sha256: str | None
    ctime_ns: int  # -1: the hash failed for a passing reason, try again next time


def _key(path: bytes) -> bytes:
    return path.replace(b"/", b"\0")


def _path(key: bytes) -> bytes:
    return key.replace(b"\0", b"/")


def _s64(v: int) -> int:  # inode and device numbers are unsigned 64-bit; SQLite integers are signed
    return v - _U64 if v >= _I64 else v


def _u64(v: int) -> int:
    return v + _U64 if v < 0 else v


def _range(root: bytes) -> tuple[bytes, bytes]:
    """[low, high) of the keys of root and everything below it."""
    if root == b"/":
        return b"\0", b"\x01"
    k = _key(root)
    return k, k + b"\x01"


_Row = tuple[bytes, int, int, int, int, int, int, int, int, int, str | None]


def _entry(row: _Row) -> Entry:
    _, mode, uid, gid, size, mtime_ns, ino, dev, nlink, ctime_ns, sha = row
    meta = FileMeta(mode=mode, uid=uid, gid=gid, size=size, mtime_ns=mtime_ns, inode=_u64(ino), dev=_u64(dev),
                    nlink=nlink)
    return Entry(meta, sha, ctime_ns)


def _row(path: bytes, meta: FileMeta, sha256: str | None, ctime_ns: int) -> _Row:
    return (_key(path), meta.mode, meta.uid, meta.gid, meta.size, meta.mtime_ns, _s64(meta.inode), _s64(meta.dev),
            meta.nlink, ctime_ns, sha256)


# Rows in column order (k, mode, uid, gid, size, mtime_ns, ino, dev, nlink, ctime_ns, sha256).
_GET = "SELECT * FROM files WHERE k = ?"
_RANGE = "SELECT * FROM files WHERE k >= ? AND k < ? ORDER BY k"
_PAGE_FIRST = "SELECT * FROM files WHERE k >= ? AND k < ? ORDER BY k LIMIT ?"
_PAGE_NEXT = "SELECT * FROM files WHERE k > ? AND k < ? ORDER BY k LIMIT ?"
_PUT = "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?,?)"


class BaselineStore:
    BATCH = 2000
    PAGE = 1000

    def __init__(self, conn: sqlite3.Connection, path: Path, note: str | None = None) -> None:
        self._conn = conn
        self.path = path
        self.note = note  # set when a corrupt file was moved aside
        self._lock = threading.RLock()
        self._pending: dict[bytes, _Row | None] = {}  # path -> row to write, or None to delete
        self._closed = False

    @classmethod
    def open(cls, state_dir: str, name: str = DB_NAME) -> BaselineStore:
        """The baseline ``state_dir/name`` (another name: a separate baseline, e.g. the CLI's own)."""
        directory = Path(state_dir)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = directory / name
        try:
            return cls(_connect(path), path)
        except sqlite3.DatabaseError as e:
            if not _is_corrupt(e):
                raise  # locked, disk full, I/O: keep the baseline, let the caller retry or fail
            aside = path.with_name(f"{name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(f"{path}{suffix}")
                if src.exists():
                    src.replace(f"{aside}{suffix}")
            store = cls(_connect(path), path)
            roots = _read_roots(path)
            with store._lock, _transaction(store._conn):
                store._conn.executemany("INSERT OR REPLACE INTO roots VALUES (?, ?)",
                                        [(r, time.time_ns()) for r in roots])
            store.note = (f"file baseline {path} was unreadable ({e}); moved to {aside}, starting a new baseline: "
                          f"the next scan reports every file under {len(roots)} baselined root(s) as created")
            return store

    # -- reads -------------------------------------------------------------------------------
    def entry(self, path: bytes) -> Entry | None:
        with self._lock:
            if path in self._pending:
                row = self._pending[path]
                return _entry(row) if row is not None else None
            got = self._conn.execute(_GET, (_key(path),)).fetchone()
        return _entry(got) if got is not None else None

    def get(self, path: bytes) -> tuple[FileMeta, str | None] | None:
        e = self.entry(path)
        return (e.meta, e.sha256) if e is not None else None

    def entries_under(self, root: bytes) -> Iterator[tuple[bytes, Entry]]:
        """(path, entry) for root and everything below it, in depth-first order (see module doc),
        read a page at a time: writes made meanwhile beyond the current page are seen."""
        low, high = _range(root)
        query = _PAGE_FIRST
        while True:
            with self._lock:
                self._flush_locked()
                rows = self._conn.execute(query, (low, high, self.PAGE)).fetchall()
            for row in rows:
                yield _path(row[0]), _entry(row)
            if len(rows) < self.PAGE:
                return
            low, query = rows[-1][0], _PAGE_NEXT

    def paths_under(self, root: bytes) -> Iterator[bytes]:
        for path, _ in self.entries_under(root):
            yield path

    def count(self) -> int:
        with self._lock:
            self._flush_locked()
            n: int = self._conn.execute("SELECT count(*) FROM files").fetchone()[0]
        return n

    # -- writes ------------------------------------------------------------------------------
    def put(self, path: bytes, meta: FileMeta, sha256: str | None, ctime_ns: int = 0) -> None:
        """Record path's state. ctime_ns (not in FileMeta) lets the scan notice a change that
        restored the mtime; 0 when unknown (the next scan then re-hashes the file once)."""
        with self._lock:
            self._pending[path] = _row(path, meta, sha256, ctime_ns)
            if len(self._pending) >= self.BATCH:
                self._flush_locked()

    def delete(self, path: bytes) -> None:
        with self._lock:
            self._pending[path] = None
            if len(self._pending) >= self.BATCH:
                self._flush_locked()

    def rename(self, old: bytes, new: bytes) -> int:
        """Move old's entry, and every entry below old, to new (replacing what was at new).
        Returns the number of entries moved."""
        if old == new or new.startswith(old + b"/"):
            return 0
        (old_low, old_high), (new_low, new_high) = _range(old), _range(new)
        plen = len(old_low)
        with self._lock:
            self._flush_locked()
            conn = self._conn
            rows = conn.execute(_RANGE, (old_low, old_high)).fetchall()
            with _transaction(conn):
                conn.execute("DELETE FROM files WHERE k >= ? AND k < ?", (new_low, new_high))
                conn.execute("DELETE FROM files WHERE k >= ? AND k < ?", (old_low, old_high))
                conn.executemany(_PUT,
                                 [(new_low + r[0][plen:], *r[1:]) for r in rows])
        return len(rows)

    def is_baselined(self, root: bytes) -> bool:
        with self._lock:
            return self._conn.execute("SELECT 1 FROM roots WHERE root = ?", (root,)).fetchone() is not None

    def baselined_roots(self) -> list[bytes]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT root FROM roots")]

    def mark_baselined(self, root: bytes) -> None:
        with self._lock:
            self._conn.execute("INSERT OR REPLACE INTO roots VALUES (?, ?)", (root, time.time_ns()))
            roots = _read_roots(self.path)
            if root not in roots:
                _write_roots(self.path, [*roots, root])

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._pending or self._closed:
            return
        puts = [row for row in self._pending.values() if row is not None]
        deletes = [(_key(p),) for p, row in self._pending.items() if row is None]
        with _transaction(self._conn):
            if deletes:
                self._conn.executemany("DELETE FROM files WHERE k = ?", deletes)
            if puts:
                self._conn.executemany(_PUT,
                                       puts)
        self._pending.clear()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            try:
                self._flush_locked()
            finally:
                self._closed = True
                self._conn.close()

    def __enter__(self) -> BaselineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Unreadable(sqlite3.DatabaseError):
    """A database SQLite opens but that fails our checks: treated as corrupt."""


def _is_corrupt(e: sqlite3.DatabaseError) -> bool:
    if isinstance(e, _Unreadable):
        return True
    name = getattr(e, "sqlite_errorname", None) or ""
    if name:
        return name in _CORRUPT or name.startswith("SQLITE_CORRUPT")
    msg = str(e).lower()
    return "malformed" in msg or "not a database" in msg


def _roots_file(path: Path) -> Path:
    return Path(f"{path}{ROOTS_SUFFIX}")


def _read_roots(path: Path) -> list[bytes]:
    try:
        lines = _roots_file(path).read_text().split()
    except OSError:
        return []
    out: list[bytes] = []
    for line in lines:
        try:
            out.append(bytes.fromhex(line))
        except ValueError:
            continue
    return out


def _write_roots(path: Path, roots: list[bytes]) -> None:
    target = _roots_file(path)
    tmp = Path(f"{target}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(r.hex() + "\n" for r in roots))
    tmp.replace(target)


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    conn.execute("BEGIN")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _connect(path: Path) -> sqlite3.Connection:
    if not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        ok = conn.execute("PRAGMA quick_check").fetchone()
        if ok is None or ok[0] != "ok":
            raise _Unreadable(f"quick_check: {ok[0] if ok else 'no answer'}")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise _Unreadable(f"schema version {version}, expected {SCHEMA_VERSION}")
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.close()
        raise
    return conn
