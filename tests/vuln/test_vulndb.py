"""The advisory store: import from files, directories and zips; idempotent re-import; bad input counted."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

import pytest

from heron.vuln.db import AdvisoryDB, VulnDbError
from vulnfixtures import advisory, write_advisories


def _db(tmp_path: Path) -> AdvisoryDB:
    return AdvisoryDB(tmp_path / "vulndb.sqlite")


def _rec(adv_id: str = "GHSA-1", modified: str = "2026-01-01T00:00:00Z", fixed: str = "2.0",
         **extra: object) -> dict[str, object]:
    return advisory(adv_id, "PyPI", "Some_Package", [{"introduced": "0"}, {"fixed": fixed}], modified=modified,
                    **extra)


def test_import_a_directory_then_again_changes_nothing(tmp_path: Path) -> None:
    records = write_advisories(tmp_path / "osv")
    db = _db(tmp_path)
    first = db.import_paths([tmp_path / "osv"])
    assert (first.files, first.records, first.added, first.unchanged) == (len(records), len(records), len(records), 0)
    again = db.import_paths([tmp_path / "osv"])
    assert (again.added, again.updated, again.unchanged) == (0, 0, len(records))
    assert db.counts() == {"advisories": len(records), "affected": len(records)}
    assert db.ecosystems() == {"Debian:11": 1, "Debian:12": 6, "OSS-Fuzz": 1, "PyPI": 1, "npm": 2}


def test_newer_modified_replaces_older_does_not(tmp_path: Path) -> None:
    db = _db(tmp_path)
    db.import_records([json.dumps(_rec(modified="2026-01-02T00:00:00Z", fixed="2.0")).encode()])
    older = db.import_records([json.dumps(_rec(modified="2026-01-01T00:00:00Z", fixed="1.0")).encode()])
    assert (older.updated, older.unchanged) == (0, 1)
    newer = db.import_records([json.dumps(_rec(modified="2026-01-03T00:00:00Z", fixed="3.0")).encode()])
    assert newer.updated == 1
    ((header, affected),) = db.lookup([("PyPI", "some-package")])[("PyPI", "some-package")]  # PEP 503 name
    assert header.modified_ns > 0 and affected.ranges[0].events[1].version == "3.0"
    assert db.counts()["affected"] == 1  # the replaced record's rows are gone


def test_withdrawn_records_do_not_match(tmp_path: Path) -> None:
    db = _db(tmp_path)
    db.import_records([json.dumps(_rec(withdrawn="2026-02-01T00:00:00Z")).encode()])
    assert db.lookup([("PyPI", "some-package")]) == {}


def test_zip_with_bad_members_counts_and_skips_them(tmp_path: Path) -> None:
    path = tmp_path / "all.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("GHSA-1.json", json.dumps(_rec("GHSA-1")))
        z.writestr("GHSA-2.json", json.dumps(_rec("GHSA-2")))
        z.writestr("bad.json", "{not json")
        z.writestr("noid.json", json.dumps({"modified": "2026-01-01T00:00:00Z"}))
        z.writestr("bomb.json", b" " * (9 << 20))  # compresses to a few KiB, over the per-record cap
        z.writestr("README.txt", "not a record")
        z.writestr("dir/", "")
    stats = _db(tmp_path).import_paths([path])
    assert (stats.files, stats.records, stats.added) == (1, 5, 2)
    assert dict(stats.malformed) == {"bad_json": 1, "bad_field": 1, "too_large": 1}


def test_json_array_file_and_errors(tmp_path: Path) -> None:
    (tmp_path / "many.json").write_text(json.dumps([_rec("A-1"), _rec("A-2"), {"id": 3}]))
    stats = _db(tmp_path).import_paths([tmp_path / "many.json"])
    assert (stats.added, sum(stats.malformed.values())) == (2, 1)
    with pytest.raises(VulnDbError, match="no such file"):
        _db(tmp_path).import_paths([tmp_path / "missing.json"])
    (tmp_path / "broken.zip").write_bytes(b"PK not a zip")
    with pytest.raises(VulnDbError, match="as a zip"):
        _db(tmp_path).import_paths([tmp_path / "broken.zip"])


def test_a_store_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    db = _db(tmp_path)
    import sqlite3
    with sqlite3.connect(db.path) as conn:
        conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(VulnDbError, match="delete the file"):
        _db(tmp_path)


def test_twenty_thousand_records_import_quickly(tmp_path: Path) -> None:
    """bench/vulndb.py measures 100,000; this keeps the order of magnitude honest in CI."""
    records = [json.dumps(advisory(f"GEN-{i}", ["Debian:12", "PyPI", "npm", "Alpine:v3.20"][i % 4], f"p{i % 3000}",
                                   [{"introduced": "0"}, {"fixed": f"1.{i % 40}"}],
                                   versions=[f"1.{k}" for k in range(10)])).encode() for i in range(20_000)]
    db = _db(tmp_path)
    start = time.monotonic()
    stats = db.import_records(records)
    elapsed = time.monotonic() - start
    assert stats.added == 20_000 and elapsed < 10.0, elapsed
