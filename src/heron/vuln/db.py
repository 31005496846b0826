"""The advisory store: OSV advisories in a SQLite file beside the platform's database.

A separate file (``vulndb.sqlite`` in the platform's data directory), not tables in the event
store: advisories are reference data, rebuilt from osv.dev at will and never backed up with the
events; an import (100,000+ records) writes only this file, so it never holds the event store's
write lock while agents ingest; and ``heron vulndb import`` can fill it while the platform
runs (WAL: readers go on during the import's short transactions). The SQL is plain (TEXT and
INTEGER columns, one index) so the same class can sit on PostgreSQL later.

Tables: ``advisories`` (id, modified, withdrawn, the record's header as JSON) and ``affected``
(one row per affected package: ecosystem key and normalised name for the lookup, the ranges
and versions as JSON). Re-importing is idempotent: a record replaces the stored one only when
its ``modified`` time is newer. Input: a ``.json`` file (one record, or an array of records),
a directory of them (recursively), or a ``.zip`` such as osv.dev's per-ecosystem ``all.zip``
(members are read with a size cap, so a zip bomb costs at most that cap per member).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from heron.vuln import osv
from heron.vuln.ecosystems import ecosystem_key, normalize

VULNDB_FILE = "vulndb.sqlite"
SCHEMA_VERSION = 1
_BATCH = 2_000  # records per transaction: short enough that readers never wait long
_LOOKUP_CHUNK = 400  # (ecosystem, name) pairs per lookup query (SQLite's variable limit)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS advisories (
        id           TEXT PRIMARY KEY,
        modified_ns  INTEGER NOT NULL,
        withdrawn_ns INTEGER NOT NULL DEFAULT 0,
        header       TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS affected (
        advisory_id TEXT NOT NULL,
        eco_key     TEXT NOT NULL,
        name        TEXT NOT NULL,
        data        TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS affected_lookup ON affected(eco_key, name)",
    "CREATE INDEX IF NOT EXISTS affected_advisory ON affected(advisory_id)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


# An advisory without its affected list (what a finding shows): defined beside the record it heads.
Header = osv.Header


@dataclass
class ImportStats:
    files: int = 0
    records: int = 0
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    malformed: Counter[str] = field(default_factory=Counter)  # reason -> records skipped
    seconds: float = 0.0

    def as_dict(self) -> dict[str, object]:
        return {"files": self.files, "records": self.records, "added": self.added, "updated": self.updated,
                "unchanged": self.unchanged, "malformed": sum(self.malformed.values()),
                "malformed_reasons": dict(self.malformed), "seconds": round(self.seconds, 3)}


class VulnDbError(Exception):
    """The advisory store cannot be opened or an input cannot be read."""


_encode = msgspec.json.Encoder().encode
_decode_header = msgspec.json.Decoder(Header).decode
_decode_affected = msgspec.json.Decoder(osv.Affected).decode


def vulndb_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / VULNDB_FILE


class AdvisoryDB:
    """OSV advisories in one SQLite file. Each call opens its own connection: safe from any
    thread and from several processes at once (SQLite serialises the writers)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.exists():
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
        with self._connect() as conn:
            try:  # an existing store is only read here (a query must not wait for an import's lock)
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            except sqlite3.OperationalError:
                row = None
            if row is None:
                conn.execute("PRAGMA journal_mode=WAL")
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                             (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise VulnDbError(f"{self.path}: advisory store version {row[0]}, expected {SCHEMA_VERSION}: "
                                  "delete the file and import again")

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        except sqlite3.Error as e:
            raise VulnDbError(f"cannot open {self.path}: {e}") from None
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            yield conn
        finally:
            conn.close()

    # -- import ----------------------------------------------------------------------------------
    def import_paths(self, paths: Iterable[Path | str]) -> ImportStats:
        """Import every record of these files, directories and zips (see the module docstring)."""
        stats = ImportStats()
        start = time.monotonic()
        self._import(_read_inputs([Path(p) for p in paths], stats), stats)
        stats.seconds = time.monotonic() - start
        return stats

    def import_records(self, records: Iterable[bytes]) -> ImportStats:
        """Import JSON records given as bytes (one record each)."""
        stats = ImportStats()
        start = time.monotonic()
        self._import(records, stats)
        stats.seconds = time.monotonic() - start
        return stats

    def _import(self, records: Iterable[bytes], stats: ImportStats) -> None:
        batch: list[osv.Advisory] = []
        with self._connect() as conn:
            for data in records:
                stats.records += 1
                try:
                    batch.append(osv.parse_bytes(data))
                except osv.MalformedRecord as e:
                    stats.malformed[e.reason] += 1
                    continue
                if len(batch) >= _BATCH:
                    self._store(conn, batch, stats)
                    batch = []
            if batch:
                self._store(conn, batch, stats)

    def _store(self, conn: sqlite3.Connection, batch: list[osv.Advisory], stats: ImportStats) -> None:
        newest: dict[str, osv.Advisory] = {}
        for adv in batch:  # the same id twice in one batch: the newer wins
            if adv.id not in newest or adv.modified_ns > newest[adv.id].modified_ns:
                newest[adv.id] = adv
        conn.execute("BEGIN IMMEDIATE")
        try:
            ids = list(newest)
            stored: dict[str, int] = {}
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                marks = ",".join("?" * len(chunk))
                sql = f"SELECT id, modified_ns FROM advisories WHERE id IN ({marks})"  # noqa: S608 (placeholders)
                rows = conn.execute(sql, chunk).fetchall()
                stored.update({str(r[0]): int(r[1]) for r in rows})
            fresh = [a for a in newest.values() if a.id not in stored or a.modified_ns > stored[a.id]]
            stats.unchanged += len(batch) - len(fresh)
            replaced = [(a.id,) for a in fresh if a.id in stored]
            stats.updated += len(replaced)
            stats.added += len(fresh) - len(replaced)
            conn.executemany("DELETE FROM affected WHERE advisory_id = ?", replaced)
            conn.executemany(
                "INSERT OR REPLACE INTO advisories (id, modified_ns, withdrawn_ns, header) VALUES (?, ?, ?, ?)",
                [(a.id, a.modified_ns, a.withdrawn_ns, _encode(Header.of(a)).decode()) for a in fresh])
            conn.executemany(
                "INSERT INTO affected (advisory_id, eco_key, name, data) VALUES (?, ?, ?, ?)",
                [(a.id, key, normalize(key.partition(":")[0], aff.name), _encode(aff).decode())
                 for a in fresh for aff in a.affected for key in (ecosystem_key(aff.ecosystem),)])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- queries ---------------------------------------------------------------------------------
    def lookup(self, keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], list[tuple[Header, osv.Affected]]]:
        """Advisories (not withdrawn) affecting each (ecosystem key, normalised name)."""
        wanted = sorted(set(keys))
        found: dict[tuple[str, str], list[tuple[Header, osv.Affected]]] = {}
        headers: dict[str, Header] = {}
        with self._connect() as conn:
            for i in range(0, len(wanted), _LOOKUP_CHUNK):
                chunk = wanted[i:i + _LOOKUP_CHUNK]
                where = " OR ".join("(f.eco_key = ? AND f.name = ?)" for _ in chunk)
                params = [v for pair in chunk for v in pair]
                sql = ("SELECT f.eco_key, f.name, f.data, a.id, a.header FROM affected f"  # noqa: S608 (placeholders)
                       f" JOIN advisories a ON a.id = f.advisory_id WHERE a.withdrawn_ns = 0 AND ({where})")
                rows = conn.execute(sql, params).fetchall()
                for eco, name, data, adv_id, header in rows:
                    head = headers.get(adv_id)
                    if head is None:
                        head = headers[adv_id] = _decode_header(header)
                    found.setdefault((eco, name), []).append((head, _decode_affected(data)))
        return found

    def keys_present(self, keys: Iterable[str]) -> set[str]:
        """The ecosystem keys that have at least one affected row (one index probe each)."""
        with self._connect() as conn:
            return {k for k in set(keys)
                    if conn.execute("SELECT 1 FROM affected WHERE eco_key = ? LIMIT 1", (k,)).fetchone()}

    def counts(self) -> dict[str, int]:
        with self._connect() as conn:
            advisories = conn.execute("SELECT COUNT(*) FROM advisories").fetchone()[0]
            affected = conn.execute("SELECT COUNT(*) FROM affected").fetchone()[0]
        return {"advisories": int(advisories), "affected": int(affected)}

    def ecosystems(self) -> dict[str, int]:
        """Ecosystem key -> affected rows."""
        with self._connect() as conn:
            rows = conn.execute("SELECT eco_key, COUNT(*) FROM affected GROUP BY eco_key ORDER BY eco_key").fetchall()
        return {str(k): int(n) for k, n in rows}


def _read_inputs(paths: list[Path], stats: ImportStats) -> Iterator[bytes]:
    for path in paths:
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in (".json", ".zip")):
                yield from _read_file(file, stats)
        elif path.is_file():
            yield from _read_file(path, stats)
        else:
            raise VulnDbError(f"no such file or directory: {path}")


def _read_file(path: Path, stats: ImportStats) -> Iterator[bytes]:
    stats.files += 1
    if path.suffix == ".zip":
        yield from _read_zip(path, stats)
        return
    try:
        size = path.stat().st_size
        if size > osv.MAX_RECORD_BYTES * 64:
            raise VulnDbError(f"{path}: {size} bytes is too large for one JSON file")
        data = path.read_bytes()
    except OSError as e:
        raise VulnDbError(f"cannot read {path}: {e.strerror or e}") from None
    if data.lstrip()[:1] == b"[":  # an array of records
        try:
            items = msgspec.json.decode(data)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
            stats.records += 1
            stats.malformed["bad_json"] += 1
            return
        for item in items:
            yield msgspec.json.encode(item)
    else:
        yield data


def _read_zip(path: Path, stats: ImportStats) -> Iterator[bytes]:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise VulnDbError(f"cannot read {path} as a zip: {e}") from None
    with archive:
        for info in archive.infolist():
            if info.is_dir() or not info.filename.endswith(".json"):
                continue
            if info.file_size > osv.MAX_RECORD_BYTES:
                stats.records += 1
                stats.malformed["too_large"] += 1
                continue
            try:
                with archive.open(info) as member:
                    data = member.read(osv.MAX_RECORD_BYTES + 1)  # the declared size may lie
            except (OSError, zipfile.BadZipFile, RuntimeError, NotImplementedError):
                stats.records += 1
                stats.malformed["bad_zip_member"] += 1
                continue
            yield data
