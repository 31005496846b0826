"""Alpine, PEP 440 and SemVer orderings against their published reference examples."""

from __future__ import annotations

import itertools
import random

import pytest

from heron.vuln.versions import InvalidVersion, compare, pep440, semver

# A selection of apk-tools' version test list (test/version.data in apk-tools' sources), one
# "a op b" per line. Left out: pairs apk orders by falling back to a string comparison of an
# invalid version ("23_foo", "1.0bc"): those raise InvalidVersion here.
APK_CASES = """
2.34 > 0.1.0_alpha
0.1.0_alpha = 0.1.0_alpha
0.1.0_alpha < 0.1.3_alpha
0.1.0_alpha2 > 0.1.0_alpha
0.1.0_alpha < 2.2.39-r1
1.0.4-r3 < 1.0.4-r4
1.0.2 > 0.7-r1
1.1 > 1.1_alpha1
1.2.1 > 1.2
1.3_alpha2 < 1.3_alpha3
0.8_beta1 < 0.8_beta2
3.10.18-r1 > 2.3.0b-r1
2.3.0b-r1 < 2.3.0b-r2
0.12.3 > 0.12
0.12 < 0.13_beta1
1.2.11 < 1.2.12.1
3.1_p16 < 3.1_p17
3.1_p17 > 1.06-r6
1.06-r6 < 006
1.2.2-r1 > 1.2.2
2.16.1-r3 = 2.16.1-r3
1.0.6-r3 > 0.11
0.94 < 1.0
1.0 > 0.99.3.20040818
1.39 > 1.00_beta2
2.8.9-r1 > 2.8.9
7.15.1-r1 > 1.02
4.2.52_p2-r1 < 4.2.52_p4-r2
2.18.3-r10 > 1.05-r18
20060720 > 3.0.20060720
2.5.1-r8 < 2.5.1a-r1
2.0.0_rc3-r1 > 1.5
3.9_pre20060124 > 0.01
0.10.0 < 0.10.1_rc1
1.1a < 1.3a
0.15.1b-r2 > 0.15.1b
22.7.3-r1 > 22.7
2.1_pre20 < 2.1_pre26
0.20070118 < 0.20070207_rc1
4.5_p1-r1 > 4.5_p1
0.9.8c-r1 < 0.9.8d
1.7 < 1.7b
1.8.5 < 1.8.5_p2
2.9.11_pre20051101-r3 > 2.9.11_pre20051101
1.6.8_p12-r1 > 1.6.8_p9-r2
0.9.28.1 < 087-r1
104-r11 > 104-r9
2.12r-r4 < 2.12r-r5
1.3-r0 < 1.3.1-r0
1.3_pre1-r1 < 1.3.2
1.0_p10-r0 > 1.0_p9-r0
0.1.0_alpha_pre2 < 0.1.0_alpha
1.0.0_pre20191002222144-r0 < 1.0.0_pre20210530193627-r0
"""


def _apk_cases() -> list[tuple[str, str, int]]:
    out = []
    for line in APK_CASES.strip().splitlines():
        a, op, b = line.split()
        out.append((a, b, {"<": -1, "=": 0, ">": 1}[op]))
    return out


@pytest.mark.parametrize(("a", "b", "expected"), _apk_cases())
def test_apk_reference_cases(a: str, b: str, expected: int) -> None:
    assert compare("Alpine:v3.20", a, b) == expected
    assert compare("Alpine", b, a) == -expected


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("1.0_rc1", "1.0", -1),     # Alpine's rule; apk-tools 2.x orders this pair the other way (see apk.py)
    ("1.0_alpha", "1.0_beta", -1), ("1.0_beta", "1.0_pre", -1), ("1.0_pre", "1.0_rc", -1),
    ("1.0", "1.0_cvs", -1), ("1.0_cvs", "1.0_svn", -1), ("1.0_svn", "1.0_git", -1), ("1.0_git", "1.0_hg", -1),
    ("1.0_hg", "1.0_p", -1),
    ("1.2.3-r0", "1.2.3-r1", -1), ("1.2.3", "1.2.3-r0", -1),
    ("3.0.15-r0", "3.0.15-r1", -1), ("1.36.1-r29", "1.36.1-r30", -1),
])
def test_apk_suffix_order(a: str, b: str, expected: int) -> None:
    assert compare("Alpine", a, b) == expected


@pytest.mark.parametrize("bad", ["", "a1", "1.0bc", "1.0_foo", "23_foo", "1.0-x1", "1.0-r1.2", "1.0_", "v1.0",
                                 "1.0 ", "1" * 300])
def test_apk_invalid(bad: str) -> None:
    with pytest.raises(InvalidVersion):
        compare("Alpine", bad, "1.0")


# PEP 440, "Summary of permitted suffixes and relative ordering": this list is in order.
PEP440_ORDER = ["1.dev0", "1.0.dev456", "1.0a1", "1.0a2.dev456", "1.0a12.dev456", "1.0a12", "1.0b1.dev456",
                "1.0b2", "1.0b2.post345.dev456", "1.0b2.post345", "1.0rc1.dev456", "1.0rc1", "1.0", "1.0+abc.5",
                "1.0+abc.7", "1.0+5", "1.0.post456.dev34", "1.0.post456", "1.0.15", "1.1.dev1"]


def test_pep440_published_order() -> None:
    for (i, a), (j, b) in itertools.product(enumerate(PEP440_ORDER), repeat=2):
        assert compare("PyPI", a, b) == (i > j) - (i < j), (a, b)


@pytest.mark.parametrize(("a", "b"), [  # PEP 440 normalisation: these spell the same version
    ("1.0a", "1.0a0"), ("1.1.RC1", "1.1rc1"), ("1.0alpha1", "1.0a1"), ("1.0-beta.2", "1.0b2"), ("1.0c1", "1.0rc1"),
    ("1.0pre1", "1.0rc1"), ("1.0preview1", "1.0rc1"), ("v1.0", "1.0"), ("1.0-1", "1.0.post1"),
    ("1.0.post", "1.0.post0"), ("1.0-r4", "1.0.post4"), ("1.0rev4", "1.0.post4"), ("1.0.dev", "1.0.dev0"),
    ("1.0", "1.0.0.0"), ("0!1.0", "1.0"), (" 1.0 ", "1.0"), ("1.0+Ubuntu-1", "1.0+ubuntu.1"),
])
def test_pep440_normalisation(a: str, b: str) -> None:
    assert compare("PyPI", a, b) == 0


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("1!1.0", "2.0", 1), ("2.0", "1!0.1", -1), ("1.0+1", "1.0+a", 1), ("1.0+a.1", "1.0+a", 1),
    ("2.10", "2.9", 1), ("1.0a1", "1.0.dev1", 1),
])
def test_pep440_cases(a: str, b: str, expected: int) -> None:
    assert compare("PyPI", a, b) == expected


@pytest.mark.parametrize("bad", ["", "1.0.x", "1.0-foo", "abc", "1.0+", "1.0++1", "1.0a1b1", "1.0.post1.post2"])
def test_pep440_invalid(bad: str) -> None:
    with pytest.raises(InvalidVersion):
        pep440.parse(bad)


def test_pep440_agrees_with_packaging_on_generated_versions() -> None:
    """The ``packaging`` library (here as pytest's dependency) as an oracle; the product code
    does not use it (docs/dependencies.md)."""
    packaging_version = pytest.importorskip("packaging.version")
    rng = random.Random(440)
    parts = ["1", "0", "2", "10", ".", ".", "a", "b", "rc", "c", "alpha", ".post", "-", ".dev", "post", "1!", "+x",
             "+1.a", "_", "01"]
    versions = set()
    while len(versions) < 1500:
        text = rng.choice(["1", "0", "2", "3"]) + "".join(rng.choice(parts) for _ in range(rng.randint(0, 5)))
        try:
            packaging_version.Version(text)
        except packaging_version.InvalidVersion:
            with pytest.raises(InvalidVersion):
                pep440.parse(text)
            continue
        versions.add(text)
    ordered = sorted(versions)
    for _ in range(20000):
        a, b = rng.choice(ordered), rng.choice(ordered)
        va, vb = packaging_version.Version(a), packaging_version.Version(b)
        assert compare("PyPI", a, b) == (va > vb) - (va < vb), (a, b)


def test_pypi_names_are_pep503_normalised() -> None:
    assert pep440.normalize_name("Django_REST.framework") == "django-rest-framework"
    assert pep440.normalize_name("zope..interface") == "zope-interface"


# semver.org section 11: precedence examples, in order.
SEMVER_ORDER = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11",
                "1.0.0-rc.1", "1.0.0", "2.0.0", "2.1.0", "2.1.1"]


def test_semver_published_order() -> None:
    for (i, a), (j, b) in itertools.product(enumerate(SEMVER_ORDER), repeat=2):
        assert compare("npm", a, b) == (i > j) - (i < j), (a, b)


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("1.0.0+20130313144700", "1.0.0", 0),        # build metadata is ignored
    ("1.0.0-beta+exp.sha.5114f85", "1.0.0-beta", 0),
    ("v1.2.3", "1.2.3", 0), ("=1.2.3", "1.2.3", 0), ("1.2", "1.2.0", 0), ("1", "1.0.0", 0),
    ("1.10.0", "1.9.0", 1), ("1.0.0-2", "1.0.0-10", -1), ("1.0.0-a", "1.0.0-10", 1), ("01.2.3", "1.2.3", 0),
])
def test_semver_cases(a: str, b: str, expected: int) -> None:
    assert compare("npm", a, b) == expected
    assert compare("SEMVER", a, b) == expected


@pytest.mark.parametrize("bad", ["", "1.2.3.4", "1.2.3-", "1.2.3-a..b", "a.b.c", "1.2.3+", "1.2.3-ü", "1.x"])
def test_semver_invalid(bad: str) -> None:
    with pytest.raises(InvalidVersion):
        semver.parse(bad)


def test_unknown_ecosystem_raises() -> None:
    with pytest.raises(InvalidVersion, match="no version ordering"):
        compare("Maven", "1.0", "2.0")
