"""rpm: header blobs built here (an encoder independent of the parser), in a real SQLite rpmdb."""

from __future__ import annotations

import sqlite3
import struct
from pathlib import Path

import pytest
from pkgroot import ROCKY_94, make_root

from heron.agent.packages.inventory import Scope
from heron.agent.packages.rpm import BadHeader, RpmReader, parse_header, source_of

INT32, STRING, BIN, STRING_ARRAY = 4, 6, 7, 8


def header(tags: list[tuple[int, int, object]]) -> bytes:
    """An rpm header blob: il, dl, (tag, type, offset, count) entries, data."""
    entries: list[bytes] = []
    data = bytearray()
    for tag, typ, value in tags:
        if typ == INT32:
            data += b"\0" * (-len(data) % 4)
            ints = list(value)  # type: ignore[call-overload]
            offset, count = len(data), len(ints)
            data += struct.pack(f">{count}i", *ints)
        elif typ == STRING:
            offset, count = len(data), 1
            data += str(value).encode() + b"\0"
        elif typ == STRING_ARRAY:
            strs = list(value)  # type: ignore[call-overload]
            offset, count = len(data), len(strs)
            data += b"".join(s.encode() + b"\0" for s in strs)
        else:  # BIN
            offset, count = len(data), len(value)  # type: ignore[arg-type]
            data += bytes(value)  # type: ignore[call-overload]
        entries.append(struct.pack(">iIiI", tag, typ, offset, count))
    return struct.pack(">ii", len(entries), len(data)) + b"".join(entries) + bytes(data)


def package(name: str, version: str, release: str, arch: str = "x86_64", epoch: int | None = None,
            srpm: str | None = None, files: list[str] | None = None) -> bytes:
    tags: list[tuple[int, int, object]] = [
        (63, BIN, b"\x00" * 16),  # the immutable region trailer: ignored
        (1000, STRING, name), (1001, STRING, version), (1002, STRING, release), (1022, STRING, arch),
        (1044, STRING, srpm or f"{name}-{version}-{release}.src.rpm"),
    ]
    if epoch is not None:
        tags.append((1003, INT32, [epoch]))
    if files:
        dirs = sorted({f.rsplit("/", 1)[0] + "/" for f in files})
        tags += [
            (1116, INT32, [dirs.index(f.rsplit("/", 1)[0] + "/") for f in files]),
            (1117, STRING_ARRAY, [f.rsplit("/", 1)[1] for f in files]),
            (1118, STRING_ARRAY, dirs),
        ]
    return header(tags)


def rpmdb(root: Path, blobs: list[bytes], wal: bool = False) -> sqlite3.Connection:
    d = root / "var/lib/rpm"
    d.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(d / "rpmdb.sqlite")
    if wal:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute("CREATE TABLE IF NOT EXISTS Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL)")
    con.executemany("INSERT INTO Packages (blob) VALUES (?)", [(b,) for b in blobs])
    con.commit()
    return con


def rpm_scope(root: Path) -> Scope:
    return Scope("test", str(root), languages=False, os_readers=[RpmReader()])


def test_header_parsing() -> None:
    h = parse_header(package("openssl-libs", "3.0.7", "27.el9", epoch=1, srpm="openssl-3.0.7-27.el9.src.rpm",
                             files=["/usr/lib64/libssl.so.3", "/usr/lib64/libcrypto.so.3", "/etc/pki/x"]))
    assert (h.name, h.version, h.release, h.epoch, h.arch) == ("openssl-libs", "3.0.7", "27.el9", 1, "x86_64")
    assert h.evr == "1:3.0.7-27.el9"
    assert h.files == ["/usr/lib64/libssl.so.3", "/usr/lib64/libcrypto.so.3", "/etc/pki/x"]
    assert source_of(h.source_rpm) == ("openssl", "3.0.7-27.el9")
    assert source_of("python3.11-3.11.7-1.el9.src.rpm") == ("python3.11", "3.11.7-1.el9")


@pytest.mark.parametrize("blob", [
    b"",
    b"\x00\x00\x00\x01",
    struct.pack(">ii", 1, 4) + struct.pack(">iIiI", 1000, STRING, 0, 1),  # data shorter than dl
    struct.pack(">ii", 1, 4) + struct.pack(">iIiI", 1000, STRING, 100, 1) + b"abcd",  # offset outside
    struct.pack(">ii", 1, 4) + struct.pack(">iIiI", 1000, STRING, 0, 1) + b"abcd",  # no NUL
    struct.pack(">ii", 1, 8) + struct.pack(">iIiI", 1116, INT32, 0, 100) + b"\0" * 8,  # ints past the data
    struct.pack(">ii", 100000, 0),  # too many entries
    package("x", "1", "1", files=["/a/b"])[:-3],  # truncated
])
def test_bad_headers_raise(blob: bytes) -> None:
    with pytest.raises((BadHeader, struct.error)):
        parse_header(blob)


def test_sqlite_rpmdb_inventory_and_ownership(tmp_path: Path) -> None:
    root = make_root(tmp_path, ROCKY_94, merged_usr=False)
    rpmdb(root, [
        package("bash", "5.1.8", "9.el9", files=["/usr/bin/bash", "/usr/share/doc/bash/README"]),
        package("openssl-libs", "3.0.7", "27.el9", epoch=1, srpm="openssl-3.0.7-27.el9.src.rpm",
                files=["/usr/lib64/libssl.so.3"]),
        package("gpg-pubkey", "8483c65d", "5ccc5b19", arch="(none)"),
    ]).close()
    scope = rpm_scope(root)
    pkgs = {p.name: p for p in scope.load()}
    assert set(pkgs) == {"bash", "openssl-libs"}
    ssl = pkgs["openssl-libs"]
    assert (ssl.ecosystem, ssl.distro, ssl.version, ssl.manager) == ("Rocky Linux", "9", "1:3.0.7-27.el9", "rpm")
    assert (ssl.source_name, ssl.source_version) == ("openssl", "3.0.7-27.el9")
    assert ssl.purl == "pkg:rpm/rocky/openssl-libs@3.0.7-27.el9?arch=x86_64&distro=rocky-9.4&epoch=1"
    assert scope.owner("/usr/lib64/libssl.so.3") == ssl
    assert scope.owner("/usr/bin/bash") == pkgs["bash"]
    assert scope.errors() == []
    # an upgrade: a new database file (rpm writes in place: the stat signature changes)
    rpmdb(root, [package("curl", "7.76.1", "29.el9", files=["/usr/bin/curl"])]).close()
    change = scope.check()
    assert [p.name for p in change.added] == ["curl"] and change.removed == []


def test_uncheckpointed_wal_is_read(tmp_path: Path) -> None:
    root = make_root(tmp_path, ROCKY_94, merged_usr=False)
    con = rpmdb(root, [package("bash", "5.1.8", "9.el9")], wal=True)
    try:
        assert (root / "var/lib/rpm/rpmdb.sqlite-wal").stat().st_size > 0
        before = {p.name: p.stat().st_mtime_ns for p in (root / "var/lib/rpm").iterdir()}
        assert [p.name for p in rpm_scope(root).load()] == ["bash"]
        # read from a private copy: nothing written or created beside the scope's database
        assert {p.name: p.stat().st_mtime_ns for p in (root / "var/lib/rpm").iterdir()} == before
    finally:
        con.close()


def test_bad_header_in_the_database_is_an_error_not_a_removal(tmp_path: Path) -> None:
    root = make_root(tmp_path, ROCKY_94, merged_usr=False)
    good = [package("bash", "5.1.8", "9.el9"), package("zlib", "1.2.11", "40.el9")]
    rpmdb(root, good).close()
    scope = rpm_scope(root)
    assert len(scope.load()) == 2
    con = sqlite3.connect(root / "var/lib/rpm/rpmdb.sqlite")
    con.execute("UPDATE Packages SET blob = ? WHERE hnum = 2", (b"\x00\x00\x00\x05garbage",))
    con.commit()
    con.close()
    assert not scope.check().removed
    assert any("unreadable headers" in e for e in scope.errors())
    assert len(scope.packages()) == 2


def test_not_sqlite_and_berkeleydb_are_errors(tmp_path: Path) -> None:
    root = make_root(tmp_path, ROCKY_94, merged_usr=False)
    (root / "var/lib/rpm").mkdir(parents=True)
    (root / "var/lib/rpm/rpmdb.sqlite").write_bytes(b"this is not sqlite" * 100)
    scope = rpm_scope(root)
    assert scope.load() == [] and "rpm" in scope.errors()[0]
    (root / "var/lib/rpm/rpmdb.sqlite").unlink()
    (root / "var/lib/rpm/Packages").write_bytes(b"\x00\x06\x15\x61" + b"\0" * 4092)
    scope = rpm_scope(root)
    assert scope.load() == []
    assert "BerkeleyDB" in scope.errors()[0] and "not supported" in scope.errors()[0]


def test_packages_as_an_endless_view_is_refused_fast(tmp_path: Path) -> None:
    """A container's rpmdb where Packages is a view over an endless recursive query: an error, quickly."""
    import time
    root = make_root(tmp_path, ROCKY_94, merged_usr=False)
    d = root / "var/lib/rpm"
    d.mkdir(parents=True)
    con = sqlite3.connect(d / "rpmdb.sqlite")
    con.execute("CREATE VIEW Packages AS WITH RECURSIVE r(n, blob) AS (SELECT 1, zeroblob(8) "
                "UNION ALL SELECT n + 1, zeroblob(8) FROM r) SELECT n AS hnum, blob FROM r")
    con.commit()
    con.close()
    start = time.monotonic()
    scope = rpm_scope(root)
    assert scope.load() == []
    assert time.monotonic() - start < 5
    assert any("Packages is view, not a table" in e for e in scope.errors())


def test_work_budget_and_odd_values_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import heron.agent.packages.rpm as rpm
    root = make_root(tmp_path, ROCKY_94, merged_usr=False)
    con = rpmdb(root, [package("bash", "5.1.8", "9.el9")])
    # a value that is not a blob is a bad header, never bytes(n) of it
    con.execute("INSERT INTO Packages (blob) VALUES (?)", (10 ** 12,))
    con.commit()
    con.close()
    scope = rpm_scope(root)
    assert [p.name for p in scope.load()] == ["bash"]
    assert any("1 unreadable headers" in e for e in scope.errors())
    monkeypatch.setattr(rpm, "PROGRESS_EVERY", 100)
    monkeypatch.setattr(rpm, "MAX_VM_STEPS", 1000)  # a tiny budget: the read is aborted
    con = sqlite3.connect(root / "var/lib/rpm/rpmdb.sqlite")
    con.executemany("INSERT INTO Packages (blob) VALUES (?)", [(package(f"p{i}", "1", "1"),) for i in range(5000)])
    con.commit()
    con.close()
    scope = rpm_scope(root)
    assert scope.load() == [] and any("steps" in e for e in scope.errors())
    monkeypatch.setattr(rpm, "MAX_COPY_BYTES", 4096)
    scope = rpm_scope(root)
    assert scope.load() == [] and any("larger than" in e for e in scope.errors())
