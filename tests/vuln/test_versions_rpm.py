"""RPM version ordering: rpmvercmp's documented cases, epoch:version-release, and (when the rpm
tool is installed) agreement with rpm's own comparison on generated versions."""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest

from heron.vuln.versions import InvalidVersion, compare, rpm

# The cases rpm's test suite documents for rpmvercmp (tests/rpmvercmp.at in rpm's sources),
# written out here as (a, b, expected).
RPMVERCMP = [
    ("1.0", "1.0", 0), ("1.0", "2.0", -1), ("2.0", "1.0", 1),
    ("2.0.1", "2.0.1", 0), ("2.0", "2.0.1", -1), ("2.0.1", "2.0", 1),
    ("2.0.1a", "2.0.1a", 0), ("2.0.1a", "2.0.1", 1), ("2.0.1", "2.0.1a", -1),
    ("5.5p1", "5.5p1", 0), ("5.5p1", "5.5p2", -1), ("5.5p2", "5.5p1", 1),
    ("5.5p10", "5.5p10", 0), ("5.5p1", "5.5p10", -1), ("5.5p10", "5.5p1", 1),
    ("10xyz", "10.1xyz", -1), ("10.1xyz", "10xyz", 1),
    ("xyz10", "xyz10", 0), ("xyz10", "xyz10.1", -1), ("xyz10.1", "xyz10", 1),
    ("xyz.4", "xyz.4", 0), ("xyz.4", "8", -1), ("8", "xyz.4", 1), ("xyz.4", "2", -1), ("2", "xyz.4", 1),
    ("5.5p2", "5.6p1", -1), ("5.6p1", "5.5p2", 1), ("5.6p1", "6.5p1", -1), ("6.5p1", "5.6p1", 1),
    ("6.0.rc1", "6.0", 1), ("6.0", "6.0.rc1", -1),
    ("10b2", "10a1", 1), ("10a2", "10b2", -1),
    ("1.0aa", "1.0aa", 0), ("1.0a", "1.0aa", -1), ("1.0aa", "1.0a", 1),
    ("10.0001", "10.0001", 0), ("10.0001", "10.1", 0), ("10.1", "10.0001", 0),
    ("10.0001", "10.0039", -1), ("10.0039", "10.0001", 1),
    ("4.999.9", "5.0", -1), ("5.0", "4.999.9", 1),
    ("20101121", "20101121", 0), ("20101121", "20101122", -1), ("20101122", "20101121", 1),
    ("2_0", "2_0", 0), ("2.0", "2_0", 0), ("2_0", "2.0", 0),
    ("a", "a", 0), ("a+", "a+", 0), ("a+", "a_", 0), ("a_", "a+", 0),
    ("+a", "+a", 0), ("+a", "_a", 0), ("_a", "+a", 0), ("+_", "+_", 0), ("_+", "+_", 0), ("_+", "_", 0),
    ("+", "_", 0), ("_", "+", 0),
    # tilde: before anything, even the end
    ("1.0~rc1", "1.0~rc1", 0), ("1.0~rc1", "1.0", -1), ("1.0", "1.0~rc1", 1),
    ("1.0~rc1", "1.0~rc2", -1), ("1.0~rc2", "1.0~rc1", 1),
    ("1.0~rc1~git123", "1.0~rc1~git123", 0), ("1.0~rc1~git123", "1.0~rc1", -1), ("1.0~rc1", "1.0~rc1~git123", 1),
    # caret: after the end, before anything else
    ("1.0^", "1.0^", 0), ("1.0^", "1.0", 1), ("1.0", "1.0^", -1),
    ("1.0^git1", "1.0^git1", 0), ("1.0^git1", "1.0", 1), ("1.0", "1.0^git1", -1),
    ("1.0^git1", "1.0^git2", -1), ("1.0^git2", "1.0^git1", 1),
    ("1.0^git1", "1.01", -1), ("1.01", "1.0^git1", 1),
    ("1.0^20160101", "1.0^20160101", 0), ("1.0^20160101", "1.0.1", -1), ("1.0.1", "1.0^20160101", 1),
    ("1.0^20160101^git1", "1.0^20160101^git1", 0), ("1.0^20160102", "1.0^20160101^git1", 1),
    ("1.0^20160101^git1", "1.0^20160102", -1),
    ("1.0~rc1^git1", "1.0~rc1^git1", 0), ("1.0~rc1^git1", "1.0~rc1", 1), ("1.0~rc1", "1.0~rc1^git1", -1),
    ("1.0^git1~pre", "1.0^git1~pre", 0), ("1.0^git1", "1.0^git1~pre", 1), ("1.0^git1~pre", "1.0^git1", -1),
]


@pytest.mark.parametrize(("a", "b", "expected"), RPMVERCMP)
def test_rpmvercmp_reference_cases(a: str, b: str, expected: int) -> None:
    assert rpm.vercmp(a, b) == expected


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("1:1.0-1", "2.0-1", 1),                       # epoch first; missing epoch is 0
    ("0:1.0-1", "1.0-1", 0),
    ("1.0-1.el9", "1.0-2.el9", -1),               # then the release
    ("1.0-10.el9_2", "1.0-9.el9", 1),
    ("2.34-60.el9", "2.34-100.el9", -1),
    ("3.0.7-24.el9", "3.0.7-24.el9_3.1", -1),
    ("1.0-1", "1.0", 0),                          # a side without release: versions only (as rpm deps)
    ("1.0~rc1-1", "1.0-1", -1),
])
def test_epoch_version_release(a: str, b: str, expected: int) -> None:
    assert compare("Rocky Linux", a, b) == expected
    assert compare("Red Hat", b, a) == -expected


@pytest.mark.parametrize("bad", ["", "x:1.0", "1.0-", "1.0 1", "1:", "1:2:3", "é"])
def test_invalid(bad: str) -> None:
    with pytest.raises(InvalidVersion):
        compare("AlmaLinux", bad, "1.0")


RPM = shutil.which("rpm")


def _random_rpm_version(rng: random.Random) -> str:
    pieces = []
    for _ in range(rng.randint(1, 6)):
        pieces.append(rng.choice(["1", "0", "01", "10", "2", "a", "b", "rc", "git", ".", "_", "+", "~", "^", "p"]))
    return "".join(pieces)


@pytest.mark.skipif(RPM is None, reason="rpm not installed (this cross-check is optional)")
def test_agrees_with_rpm_on_generated_versions() -> None:
    rng = random.Random(7)
    pairs = [(_random_rpm_version(rng), _random_rpm_version(rng)) for _ in range(3000)]
    pairs = [(a, b) for a, b in pairs if "-" not in a + b and ":" not in a + b]
    # One rpm run: a Lua loop over every pair (rpm.vercmp is rpmvercmp for plain versions).
    table = ",".join(f'{{"{a}","{b}"}}' for a, b in pairs)
    lua = f"%{{lua: for _, p in ipairs({{{table}}}) do print(rpm.vercmp(p[1], p[2]) .. \",\") end}}"
    out = subprocess.run(["rpm", "--eval", lua], capture_output=True, text=True, check=True, timeout=60)
    expected = [int(x) for x in out.stdout.replace("\n", "").split(",") if x]
    assert len(expected) == len(pairs)
    mismatches = [(a, b, e) for (a, b), e in zip(pairs, expected, strict=True) if rpm.vercmp(a, b) != e]
    assert not mismatches, mismatches[:20]
