"""dpkg: the real database against dpkg-query, and diffs/corruption on a copied status in a tmp root."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from pkgroot import DEBIAN_12, UBUNTU_2204, make_root, stanza, write_list, write_status

from heron.agent.packages import ScopeEnv, os_info, usr_merge_normalizer
from heron.agent.packages.dpkg import Corrupt, DpkgReader, parse_status, qualified_names
from heron.agent.packages.inventory import Scope
from heron.agent.packages.rootfs import RootFS


def dpkg_scope(root: Path, **kw: object) -> Scope:
    return Scope("test", str(root), languages=False, os_readers=[DpkgReader()], **kw)  # type: ignore[arg-type]


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a dpkg system")
def test_inventory_equals_dpkg_query() -> None:
    out = subprocess.run(["dpkg-query", "-W", "-f=${binary:Package} ${Version} ${db:Status-Status}\n"],
                         capture_output=True, text=True, check=True).stdout
    on_disk = {"installed", "triggers-awaited", "triggers-pending", "half-configured", "unpacked", "half-installed"}
    expected = sorted((n, v) for n, v, s in (line.split(" ") for line in out.splitlines()) if s in on_disk)
    fs = RootFS("/")
    reader = DpkgReader()
    read = reader.read(ScopeEnv(fs, os_info(fs), usr_merge_normalizer(fs)))
    assert not read.error
    assert qualified_names(reader) == expected
    assert sorted((p.name, p.version) for p in read.packages) == sorted((e.name, e.version) for e in reader.entries)
    libc = next(p for p in read.packages if p.name == "libc6")
    assert libc.ecosystem == "Debian" and libc.distro == "12" and libc.source_name == "glibc"
    assert libc.purl == f"pkg:deb/debian/libc6@{libc.version.replace('+', '%2B')}?arch=amd64&distro=debian-12"
    # merged /usr: libc6's list says /lib/..., the kernel says /usr/lib/...
    assert read.owners is not None
    assert read.packages[read.owners.owner(os.path.realpath("/lib/x86_64-linux-gnu/libc.so.6"))].name == "libc6"


def test_stanza_fields_source_version_and_statuses() -> None:
    text = "\n".join([
        stanza("libc6", "2.36-9+deb12u4", source="glibc", multi_arch="same"),
        stanza("libssl3", "3.0.11-1~deb12u2", source="openssl (3.0.11-1~deb12u1)"),
        stanza("gone", "1.0", status="deinstall ok config-files"),
        stanza("upgrading", "2.0", status="install reinstreq half-installed"),
        stanza("tzdata", "2024a-0+deb12u1", arch="all"),
        stanza("libfoo", "1", arch="i386", multi_arch="same"),
        stanza("i386tool", "1", arch="i386"),
    ])
    entries = {e.name: e for e in parse_status(text)}
    assert (entries["libc6"].source, entries["libc6"].source_version) == ("glibc", "2.36-9+deb12u4")
    assert (entries["libssl3"].source, entries["libssl3"].source_version) == ("openssl", "3.0.11-1~deb12u1")
    assert entries["gone"].status == "config-files" and entries["upgrading"].status == "half-installed"
    assert entries["libc6"].qualified_name("amd64") == "libc6:amd64"
    assert entries["tzdata"].qualified_name("amd64") == "tzdata"
    assert entries["libfoo"].qualified_name("amd64") == "libfoo:i386"
    assert entries["i386tool"].qualified_name("amd64") == "i386tool:i386"  # foreign arch
    assert entries["libssl3"].qualified_name("amd64") == "libssl3"


@pytest.mark.parametrize("bad", [
    stanza("a", "1") + "Package: b\nStatus: install ok inst",  # cut mid-stanza: no final newline
    stanza("a", "1") + "\x00\x00garbage\n",
    stanza("a", "1") + "\nthis is not a field\n",
    stanza("a", "1") + "\nStatus: install ok installed\nVersion: 1\n",  # no Package
    stanza("a", "1") + "\nPackage: b\nStatus: install ok installed\n",  # installed without a Version
    stanza("a", "1") + stanza("b", "1"),  # no blank line: one stanza with two Package fields
])
def test_corrupt_text_is_refused(bad: str) -> None:
    with pytest.raises(Corrupt):
        parse_status(bad)


def test_os_release_ecosystems(tmp_path: Path) -> None:
    make_root(tmp_path / "u", UBUNTU_2204)
    o = os_info(RootFS(str(tmp_path / "u")))
    assert (o.ecosystem, o.distro, o.label, o.purl_distro) == ("Ubuntu", "22.04", "ubuntu:22.04", "ubuntu-22.04")
    make_root(tmp_path / "d", DEBIAN_12)
    o = os_info(RootFS(str(tmp_path / "d")))
    assert (o.ecosystem, o.distro, o.label) == ("Debian", "12", "debian:12")


def test_diff_on_add_remove_upgrade(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    base = [stanza("aaa", "1.0"), stanza("bbb", "2.0", source="bsrc (1.9)"), stanza("ccc", "3.0")]
    write_status(root, base)
    for n in ("aaa", "bbb", "ccc"):
        write_list(root, n, [f"/usr/bin/{n}"])
    scope = dpkg_scope(root)
    first = scope.load()
    assert sorted(p.name for p in first) == ["aaa", "bbb", "ccc"]
    assert scope.check().added == []  # nothing changed: nothing re-read
    reads = scope.dbs["dpkg:/var/lib/dpkg/status"].reads

    # remove ccc (dpkg deletes its list), upgrade bbb, add ddd
    os.unlink(root / "var/lib/dpkg/info/ccc.list")
    write_list(root, "ddd", ["/usr/bin/ddd"])
    write_status(root, [stanza("aaa", "1.0"), stanza("bbb", "2.1", source="bsrc (2.1)"), stanza("ddd", "0.1")])
    change = scope.check()
    assert scope.dbs["dpkg:/var/lib/dpkg/status"].reads == reads + 1
    assert sorted((p.name, p.version) for p in change.added) == [("bbb", "2.1"), ("ddd", "0.1")]
    assert sorted((p.name, p.version) for p in change.removed) == [("bbb", "2.0"), ("ccc", "3.0")]
    ev = scope.diff_event(change)
    assert ev is not None and not ev.full and ev.errors == [] and ev.distro == "debian:12"
    assert scope.owner("/usr/bin/ddd") is not None and scope.owner("/usr/bin/ddd").name == "ddd"  # type: ignore[union-attr]
    assert scope.owner("/usr/bin/ccc") is None


def test_corrupt_or_truncated_status_keeps_last_inventory(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    names = ["aaa", "bbb", "ccc", "ddd"]
    good = [stanza(n, "1.0") for n in names]
    write_status(root, good)
    for n in names:
        write_list(root, n, [f"/usr/bin/{n}"])
    scope = dpkg_scope(root)
    assert len(scope.load()) == 4
    status = root / "var/lib/dpkg/status"
    text = status.read_text()

    # 1. half-written: cut in the middle of the third stanza
    status.write_text(text[: text.index("Package: ccc") + 20])
    change = scope.check()
    assert not change.removed and not change.added
    assert any("truncated" in e for e in scope.errors())
    ev = scope.diff_event(change)
    assert ev is not None and ev.errors and not ev.removed  # the error is reported once...
    assert scope.diff_event(scope.check()) is None  # ...and not again while nothing changes
    assert len(scope.packages()) == 4

    # 2. garbage
    status.write_bytes(os.urandom(4096))
    assert not scope.check().removed and scope.errors()

    # 3. cut exactly at a stanza boundary: parses, but ccc/ddd still have their file lists
    status.write_text("\n".join(good[:2]))
    change = scope.check()
    assert not change.removed
    assert any("file lists" in e for e in scope.errors())
    assert scope.owner("/usr/bin/ddd") is not None

    # 4. repaired: no diff (nothing changed from the last good), errors cleared and sent
    write_status(root, good)
    change = scope.check()
    assert not change and scope.errors() == []
    ev = scope.diff_event(change)
    assert ev is not None and ev.errors == []


def test_transaction_in_progress_is_held_back_then_accepted(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    write_status(root, [stanza("aaa", "1.0"), stanza("bbb", "1.0")])
    now = [1000.0]
    scope = dpkg_scope(root, clock=lambda: now[0], settle_max_s=60.0)
    scope.load()
    # mid-upgrade: bbb half-installed at the new version, and a journal entry for aaa
    write_status(root, [stanza("aaa", "1.0"), stanza("bbb", "2.0", status="install reinstreq half-installed")])
    (root / "var/lib/dpkg/updates/0000").write_text(stanza("aaa", "1.1", status="install ok unpacked"))
    assert not scope.check()
    assert any("in progress" in e for e in scope.errors())
    now[0] += 30
    assert not scope.check()
    now[0] += 31  # stuck for longer than settle_max_s: accept what is on disk
    change = scope.check()
    assert sorted((p.name, p.version) for p in change.added) == [("aaa", "1.1"), ("bbb", "2.0")]
    assert any("accepted" in e for e in scope.errors())
    # dpkg finishes: journal folded into status, everything installed
    os.unlink(root / "var/lib/dpkg/updates/0000")
    write_status(root, [stanza("aaa", "1.1"), stanza("bbb", "2.0")])
    assert not scope.check() and scope.errors() == []


def test_first_read_of_a_corrupt_database_reports_the_error(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    write_status(root, [stanza("aaa", "1.0")])
    (root / "var/lib/dpkg/status").write_text("Package: aaa\nStatus: inst")
    scope = dpkg_scope(root)
    assert scope.load() == []
    ev = scope.full_event()
    assert ev.full and ev.added == [] and ev.errors and "dpkg" in ev.errors[0]


def test_arch_qualified_lists_and_merged_usr(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    write_status(root, [stanza("libx1", "1.0", multi_arch="same"), stanza("tool", "1.0")])
    write_list(root, "libx1:amd64", ["/lib/x86_64-linux-gnu/libx.so.1"])
    write_list(root, "tool", ["/bin/tool", "/usr/share/doc/tool/copyright"])
    scope = dpkg_scope(root)
    scope.load()
    assert scope.owner("/usr/lib/x86_64-linux-gnu/libx.so.1").name == "libx1"  # type: ignore[union-attr]
    assert scope.owner("/usr/bin/tool").name == "tool"  # type: ignore[union-attr]
    assert scope.owner("/usr/bin/tool (deleted)").name == "tool"  # type: ignore[union-attr]
    assert scope.owner("/usr/share/doc/tool/copyright") is None  # docs are not indexed
    assert scope.owner("/usr/bin") is None  # directories are not


def test_distroless_status_d(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    d = root / "var/lib/dpkg/status.d"
    d.mkdir(parents=True)
    (d / "base-files").write_text("Package: base-files\nVersion: 12.4+deb12u5\nArchitecture: amd64\n")
    (d / "libc6").write_text("Package: libc6\nVersion: 2.36-9\nArchitecture: amd64\nSource: glibc\n")
    (d / "libc6.md5sums").write_text("0123  lib/x86_64-linux-gnu/libc.so.6\n")
    scope = dpkg_scope(root)
    assert sorted(p.name for p in scope.load()) == ["base-files", "libc6"]
    assert scope.owner("/usr/lib/x86_64-linux-gnu/libc.so.6").name == "libc6"  # type: ignore[union-attr]


def test_vanished_status_keeps_inventory(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    write_status(root, [stanza("aaa", "1.0")])
    scope = dpkg_scope(root)
    scope.load()
    os.unlink(root / "var/lib/dpkg/status")
    assert not scope.check().removed
    assert [p.name for p in scope.packages()] == ["aaa"] and scope.errors()


def build_deb(tmp: Path, version: str) -> Path:
    d = tmp / f"pkg-{version}"
    (d / "DEBIAN").mkdir(parents=True)
    (d / "usr/bin").mkdir(parents=True)
    (d / "DEBIAN/control").write_text(f"Package: heron-test-probe\nVersion: {version}\nArchitecture: all\n"
                                      "Maintainer: heron tests <t@example.invalid>\nDescription: a test package\n")
    (d / "usr/bin/heron-test-probe").write_text("#!/bin/sh\nexit 0\n")
    (d / "usr/bin/heron-test-probe").chmod(0o755)
    out = tmp / f"heron-test-probe_{version}.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(d), str(out)], check=True, capture_output=True)
    return out


@pytest.mark.privileged
@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="not a dpkg system")
def test_real_dpkg_install_upgrade_remove(tmp_path: Path) -> None:
    """The real dpkg: what it writes is read as diffs, and a removal is not mistaken for truncation."""
    v1, v2 = build_deb(tmp_path, "1.0"), build_deb(tmp_path, "1.1")
    scope = Scope("host", "/", languages=False, os_readers=[DpkgReader()])
    scope.load()

    def dpkg(*args: str) -> None:
        r = subprocess.run(["dpkg", *args], capture_output=True, text=True)
        if r.returncode != 0 and "lock" in r.stderr:
            pytest.skip(f"dpkg is busy: {r.stderr.strip()}")
        assert r.returncode == 0, r.stderr

    try:
        dpkg("-i", str(v1))
        change = scope.check()
        assert [(p.name, p.version) for p in change.added] == [("heron-test-probe", "1.0")] and not change.removed
        assert scope.owner("/usr/bin/heron-test-probe").version == "1.0"  # type: ignore[union-attr]
        dpkg("-i", str(v2))
        change = scope.check()
        assert [p.version for p in change.added] == ["1.1"] and [p.version for p in change.removed] == ["1.0"]
        dpkg("-r", "heron-test-probe")
        change = scope.check()
        assert [p.version for p in change.removed] == ["1.1"] and scope.errors() == []
    finally:
        subprocess.run(["dpkg", "-P", "heron-test-probe"], capture_output=True)
        scope.close()
