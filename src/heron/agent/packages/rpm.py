"""RPM packages from the rpm database, read without the rpm binary or librpm.

rpm >= 4.16 keeps its database in SQLite (/var/lib/rpm/rpmdb.sqlite, or
/usr/lib/sysimage/rpm/rpmdb.sqlite): table ``Packages(hnum, blob)``, one RPM *header* per row.
The file (and its -wal, so a not yet checkpointed transaction is seen) is copied into a private
temporary directory (streamed, at most 256 MiB for both) and opened there, read-only:
nothing is written beside the scope's database and a hostile container cannot hand SQLite a path
of its choosing. The schema is the container's too: ``Packages`` must be a real table (a view
could be an endless recursive query), ``trusted_schema`` is off, a progress handler aborts the
read after a fixed amount of SQLite work and at most MAX_PACKAGES rows are read.

A header blob (big-endian): ``il`` (entry count), ``dl`` (data length), ``il`` entries of
(tag, type, offset, count), then ``dl`` bytes of data. Read tags: NAME, VERSION, RELEASE, EPOCH,
ARCH, SOURCERPM, and the file list DIRNAMES[DIRINDEXES[i]] + BASENAMES[i] (or OLDFILENAMES)
for ownership. Every offset and count is checked against the blob: a bad header is skipped and
counted, never trusted.

Older databases: BerkeleyDB ``Packages`` (RHEL/CentOS <= 8) and ndb ``Packages.db`` (SUSE) are
reported as unsupported in ``errors`` (limit: their packages are not inventoried).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from heron.agent.packages import DbRead, PathIndex, ScopeEnv, purl
from heron.schema.events import Package

SQLITE_DIRS = ("/var/lib/rpm", "/usr/lib/sysimage/rpm")
MAX_COPY_BYTES = 256 << 20  # the database and its WAL together (a real rpmdb is tens of MiB)
MAX_PACKAGES = 200_000  # rows read from Packages: far above any real system
# SQLite virtual machine steps for the whole read: a real 100 MiB rpmdb takes a few million.
MAX_VM_STEPS = 200_000_000
PROGRESS_EVERY = 10_000
# rpm's own bounds on a header (lib/header.c): at most 0xffff entries and 256 MiB of data.
MAX_ENTRIES = 0xFFFF
MAX_DATA = 0x0FFFFFFF

TAG_NAME, TAG_VERSION, TAG_RELEASE, TAG_EPOCH, TAG_ARCH = 1000, 1001, 1002, 1003, 1022
TAG_OLDFILENAMES, TAG_SOURCERPM = 1027, 1044
TAG_DIRINDEXES, TAG_BASENAMES, TAG_DIRNAMES = 1116, 1117, 1118
T_INT32, T_STRING, T_STRING_ARRAY, T_I18NSTRING = 4, 6, 8, 9
_WANTED = {TAG_NAME, TAG_VERSION, TAG_RELEASE, TAG_EPOCH, TAG_ARCH, TAG_OLDFILENAMES, TAG_SOURCERPM,
           TAG_DIRINDEXES, TAG_BASENAMES, TAG_DIRNAMES}
_ENTRY = struct.Struct(">iIiI")


class BadHeader(ValueError):
    """A header blob that does not hold together."""


@dataclass
class RpmHeader:
    name: str = ""
    version: str = ""
    release: str = ""
    epoch: int | None = None
    arch: str = ""
    source_rpm: str = ""
    files: list[str] = field(default_factory=list)

    @property
    def evr(self) -> str:
        """[epoch:]version-release, the way advisories write it."""
        vr = f"{self.version}-{self.release}" if self.release else self.version
        return f"{self.epoch}:{vr}" if self.epoch else vr


def _strings(data: bytes, offset: int, count: int) -> list[str]:
    out: list[str] = []
    pos = offset
    for _ in range(count):
        end = data.find(b"\0", pos)
        if end < 0:
            raise BadHeader("unterminated string")
        out.append(data[pos:end].decode("utf-8", "backslashreplace"))
        pos = end + 1
    return out


def parse_header(blob: bytes, with_files: bool = True) -> RpmHeader:
    """The tags heron needs from one header blob; raises BadHeader."""
    if len(blob) < 8:
        raise BadHeader("shorter than its preamble")
    il, dl = struct.unpack_from(">ii", blob, 0)
    if not (0 < il <= MAX_ENTRIES and 0 <= dl <= MAX_DATA):
        raise BadHeader(f"bad sizes il={il} dl={dl}")
    data_start = 8 + il * _ENTRY.size
    if data_start + dl > len(blob):
        raise BadHeader("entries or data run past the blob")
    data = blob[data_start:data_start + dl]
    values: dict[int, list[str] | list[int]] = {}
    for i in range(il):
        tag, typ, offset, count = _ENTRY.unpack_from(blob, 8 + i * _ENTRY.size)
        if tag not in _WANTED or (not with_files and tag in (TAG_DIRINDEXES, TAG_BASENAMES, TAG_DIRNAMES,
                                                              TAG_OLDFILENAMES)):
            continue
        if not (0 <= offset < dl) or count > dl:
            raise BadHeader(f"tag {tag}: offset {offset} count {count} outside the data")
        if typ == T_INT32:
            if offset + 4 * count > dl:
                raise BadHeader(f"tag {tag}: int32 array runs past the data")
            values[tag] = list(struct.unpack_from(f">{count}i", data, offset))
        elif typ in (T_STRING, T_I18NSTRING):
            values[tag] = _strings(data, offset, 1)
        elif typ == T_STRING_ARRAY:
            values[tag] = _strings(data, offset, count)
    h = RpmHeader()

    def text(tag: int) -> str:
        v = values.get(tag)
        return str(v[0]) if v else ""

    h.name, h.version, h.release = text(TAG_NAME), text(TAG_VERSION), text(TAG_RELEASE)
    h.arch, h.source_rpm = text(TAG_ARCH), text(TAG_SOURCERPM)
    epoch = values.get(TAG_EPOCH)
    h.epoch = int(epoch[0]) if epoch else None
    if not h.name:
        raise BadHeader("no NAME")
    if with_files:
        h.files = _file_list(values)
    return h


def _file_list(values: dict[int, list[str] | list[int]]) -> list[str]:
    basenames = values.get(TAG_BASENAMES)
    if basenames is None:
        return [str(p) for p in values.get(TAG_OLDFILENAMES, [])]
    dirnames = [str(d) for d in values.get(TAG_DIRNAMES, [])]
    indexes = values.get(TAG_DIRINDEXES, [])
    if len(indexes) != len(basenames):
        raise BadHeader("DIRINDEXES and BASENAMES differ in length")
    out: list[str] = []
    for base, idx in zip(basenames, indexes, strict=True):
        if not isinstance(idx, int) or not 0 <= idx < len(dirnames):
            raise BadHeader("DIRINDEXES points outside DIRNAMES")
        out.append(dirnames[idx] + str(base))
    return out


def source_of(source_rpm: str) -> tuple[str, str]:
    """("glibc", "2.34-60.el9") from "glibc-2.34-60.el9.src.rpm"."""
    stem = source_rpm.removesuffix(".rpm")
    for suffix in (".src", ".nosrc"):
        stem = stem.removesuffix(suffix)
    parts = stem.rsplit("-", 2)
    if len(parts) != 3:
        return "", ""
    return parts[0], f"{parts[1]}-{parts[2]}"


class RpmReader:
    manager = "rpm"

    def __init__(self, dirs: tuple[str, ...] = SQLITE_DIRS) -> None:
        self.dirs = dirs
        self.key = f"rpm:{dirs[0]}"
        self.bad_headers = 0  # headers skipped in the last read

    def watch(self) -> list[str]:
        out: list[str] = []
        for d in self.dirs:
            out += [f"{d}/rpmdb.sqlite", f"{d}/rpmdb.sqlite-wal", f"{d}/Packages", f"{d}/Packages.db"]
        return out

    def _find(self, env: ScopeEnv) -> tuple[str, str]:
        """(kind, path) of the database present: sqlite, bdb, ndb; ("", "") when none."""
        for d in self.dirs:
            for kind, name in (("sqlite", "rpmdb.sqlite"), ("ndb", "Packages.db"), ("bdb", "Packages")):
                if env.fs.is_file(f"{d}/{name}"):
                    return kind, f"{d}/{name}"
        return "", ""

    def read(self, env: ScopeEnv) -> DbRead:
        kind, path = self._find(env)
        if not kind:
            return DbRead(absent=True)
        if kind != "sqlite":
            what = "BerkeleyDB" if kind == "bdb" else "ndb"
            return DbRead(error=f"rpm: {path} is a {what} database: not supported (only rpmdb.sqlite)")
        try:
            blobs = list(self._blobs(env, path))
        except (OSError, sqlite3.Error) as e:
            return DbRead(error=f"rpm: {path}: {e}")
        return self.from_blobs(env, blobs)

    def from_blobs(self, env: ScopeEnv, blobs: list[bytes]) -> DbRead:
        o = env.os
        packages: list[Package] = []
        owned: list[tuple[str, int]] = []
        self.bad_headers = 0
        first_bad = ""
        for blob in blobs:
            try:
                h = parse_header(blob)
            except (BadHeader, struct.error) as e:
                self.bad_headers += 1
                if self.bad_headers == 1:
                    first_bad = str(e)
                continue
            if h.name == "gpg-pubkey":  # imported signing keys, not software
                continue
            src_name, src_version = source_of(h.source_rpm)
            quals = {"arch": h.arch, "epoch": str(h.epoch) if h.epoch else "", "distro": o.purl_distro}
            version = h.evr
            packages.append(Package(
                ecosystem=o.ecosystem, name=h.name, version=version,
                purl=purl("rpm", o.namespace, h.name,
                          f"{h.version}-{h.release}" if h.release else h.version, quals),
                manager="rpm", arch=h.arch, source_name=src_name, source_version=src_version, distro=o.distro))
            owned.extend((env.norm(f), len(packages) - 1) for f in h.files)
        # Skipped headers are packages we cannot see: an error (the last good read stays), but
        # the readable ones still serve as the first inventory when there is no good read yet.
        error = f"rpm: {self.bad_headers} unreadable headers skipped ({first_bad})" if self.bad_headers else ""
        return DbRead(packages=packages, owners=PathIndex(owned), error=error)

    @staticmethod
    def _blobs(env: ScopeEnv, path: str) -> Iterator[bytes]:
        with tempfile.TemporaryDirectory(prefix="heron-rpmdb-") as tmp:
            copy = os.path.join(tmp, "rpmdb.sqlite")
            budget = _copy(env, path, copy, MAX_COPY_BYTES)
            if not _head(copy).startswith(b"SQLite format 3\0"):
                raise sqlite3.DatabaseError("not an SQLite database")
            with contextlib.suppress(FileNotFoundError):
                _copy(env, path + "-wal", copy + "-wal", budget)
            # The file is the container's: read-only, no schema-defined functions, a work budget.
            con = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
            try:
                con.execute("PRAGMA trusted_schema=OFF")
                steps = [0]

                def over_budget() -> int:
                    steps[0] += 1
                    return 1 if steps[0] > MAX_VM_STEPS // PROGRESS_EVERY else 0

                con.set_progress_handler(over_budget, PROGRESS_EVERY)
                kinds = [r[0] for r in con.execute("SELECT type FROM sqlite_master WHERE name = 'Packages'")]
                if kinds != ["table"]:
                    raise sqlite3.DatabaseError(f"Packages is {kinds[0] if kinds else 'missing'}, not a table")
                for rows, (blob,) in enumerate(con.execute("SELECT blob FROM Packages"), 1):
                    if rows > MAX_PACKAGES:
                        raise sqlite3.DatabaseError(f"more than {MAX_PACKAGES} rows in Packages")
                    # a text or integer value is not a header (bytes(n) would allocate n bytes)
                    yield bytes(blob) if isinstance(blob, (bytes, memoryview)) else b""
            except sqlite3.OperationalError as e:
                if "interrupt" in str(e):
                    raise sqlite3.DatabaseError(f"reading Packages took more than {MAX_VM_STEPS} steps") from e
                raise
            finally:
                with contextlib.suppress(sqlite3.Error):
                    con.close()

    def confirm_removed(self, env: ScopeEnv, names: set[tuple[str, str]]) -> str:
        return ""


def _copy(env: ScopeEnv, path: str, dest: str, budget: int) -> int:
    """Stream a regular file of the scope to dest, at most budget bytes; the budget left."""
    fd = env.fs.open(path)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise sqlite3.DatabaseError(f"{path}: not a regular file")
        with open(dest, "wb") as out:
            while True:  # the file may grow while we copy: the bound holds anyway
                chunk = os.read(fd, min(1 << 20, budget + 1))
                if not chunk:
                    return budget
                budget -= len(chunk)
                if budget < 0:
                    raise sqlite3.DatabaseError(f"rpm database and its WAL larger than {MAX_COPY_BYTES >> 20} MiB")
                out.write(chunk)
    finally:
        os.close(fd)


def _head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(16)
