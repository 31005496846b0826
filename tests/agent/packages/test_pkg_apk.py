"""apk: a constructed /lib/apk/db/installed in a tmp root."""

from __future__ import annotations

from pathlib import Path

import pytest
from pkgroot import ALPINE, make_root

from heron.agent.packages.apk import ApkReader, Corrupt, parse_installed
from heron.agent.packages.inventory import Scope

INSTALLED = """C:Q1abc=
P:musl
V:1.2.5-r0
A:x86_64
S:407
I:655360
T:the musl c library (libc) implementation
U:https://musl.libc.org/
L:MIT
o:musl
m:Natanael Copa
t:1712580000
c:abc
p:so:libc.musl-x86_64.so.1=1
F:lib
R:ld-musl-x86_64.so.1
a:0:0:755
Z:Q1def=
R:libc.musl-x86_64.so.1
a:0:0:777

C:Q1ghi=
P:libcrypto3
V:3.3.2-r0
A:x86_64
o:openssl
F:usr
F:usr/lib
R:libcrypto.so.3
Z:Q1jkl=

C:Q1mno=
P:busybox-binsh
V:1.36.1-r29
A:x86_64
o:busybox

"""


def apk_root(tmp_path: Path, text: str) -> Path:
    root = make_root(tmp_path, ALPINE, merged_usr=False)
    (root / "etc/alpine-release").write_text("3.20.3\n")
    (root / "lib/apk/db").mkdir(parents=True)
    (root / "lib/apk/db/installed").write_text(text)
    return root


def test_parse_installed() -> None:
    pkgs = parse_installed(INSTALLED)
    assert [(f["P"], f["V"], f.get("o")) for f, _ in pkgs] == [
        ("musl", "1.2.5-r0", "musl"), ("libcrypto3", "3.3.2-r0", "openssl"), ("busybox-binsh", "1.36.1-r29", "busybox")]
    assert pkgs[0][1] == ["/lib/ld-musl-x86_64.so.1", "/lib/libc.musl-x86_64.so.1"]
    assert pkgs[1][1] == ["/usr/lib/libcrypto.so.3"]


@pytest.mark.parametrize("bad", [
    INSTALLED[:-30],  # truncated mid-line
    INSTALLED + "garbage line\n",
    INSTALLED + "V:1.0\nA:x86_64\n\n",  # no P
])
def test_corrupt_installed(bad: str) -> None:
    with pytest.raises(Corrupt):
        parse_installed(bad)


def test_apk_scope(tmp_path: Path) -> None:
    root = apk_root(tmp_path, INSTALLED)
    scope = Scope("test", str(root), languages=False, os_readers=[ApkReader()])
    pkgs = {p.name: p for p in scope.load()}
    crypto = pkgs["libcrypto3"]
    assert (crypto.ecosystem, crypto.distro, crypto.source_name, crypto.source_version) == (
        "Alpine", "v3.20", "openssl", "3.3.2-r0")
    assert crypto.purl == "pkg:apk/alpine/libcrypto3@3.3.2-r0?arch=x86_64&distro=alpine-3.20.3"
    assert scope.owner("/usr/lib/libcrypto.so.3") == crypto
    assert scope.owner("/lib/libc.musl-x86_64.so.1") == pkgs["musl"]
    assert scope.os.label == "alpine:3.20.3"
    # truncated while apk rewrites it: kept, reported
    (root / "lib/apk/db/installed").write_text(INSTALLED[: INSTALLED.index("P:libcrypto3") + 5])
    change = scope.check()
    assert not change.removed and scope.errors() and len(scope.packages()) == 3
    # an upgrade
    (root / "lib/apk/db/installed").write_text(INSTALLED.replace("V:3.3.2-r0", "V:3.3.2-r1"))
    change = scope.check()
    assert [p.version for p in change.added] == ["3.3.2-r1"] and [p.version for p in change.removed] == ["3.3.2-r0"]
    assert scope.errors() == []
