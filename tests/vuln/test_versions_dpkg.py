"""Debian version ordering against the real ``dpkg --compare-versions`` on generated versions,
plus hand-picked edge cases from Debian Policy 5.6.12."""

from __future__ import annotations

import random
import shutil
import subprocess

import pytest

from heron.vuln.versions import InvalidVersion, compare, dpkg

DPKG = shutil.which("dpkg")
PAIRS = 3000


def _chunk(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def random_version(rng: random.Random) -> str:
    """A valid version from a grammar weighted towards the interesting characters."""
    epoch = f"{rng.choice(['0', '1', '2', '10', '00'])}:" if rng.random() < 0.25 else ""
    parts = [rng.choice("0123456789")]
    for _ in range(rng.randint(0, 6)):
        kind = rng.random()
        if kind < 0.4:
            parts.append(_chunk(rng, "0123456789", rng.randint(1, 3)))
        elif kind < 0.6:
            parts.append(_chunk(rng, "abzAZ", rng.randint(1, 2)))
        else:
            parts.append(rng.choice([".", "+", "~", "~~", ".~", "+~", "-"]))
    upstream = "".join(parts)
    revision = ""
    if "-" in upstream or rng.random() < 0.5:
        revision = "-" + rng.choice(["0", "1", "1~", "2+deb12u1", "1ubuntu1", "1.1", "a", "0~rc", "10+b1",
                                     _chunk(rng, "0123456789abz.+~", rng.randint(1, 5))])
    return epoch + upstream + revision


def mutate(rng: random.Random, version: str) -> str:
    """A neighbour of ``version``: same prefix, a small change near the end (so pairs often tie
    for a while, which is where orderings differ)."""
    choices = [
        lambda v: v + rng.choice(["~", "~1", "+1", ".0", "a", "0", "-1", "+b1", ".", "~~"]),
        lambda v: v[:-1] if len(v) > 1 and v[-2] not in ":-" else v,
        lambda v: v[:-1] + rng.choice("0123456789a~+.") if len(v) > 1 and v[-2] not in ":-" else v,
        lambda v: "1:" + v if ":" not in v else v.split(":", 1)[1],
        lambda v: v.replace(".", ".0", 1),
        lambda v: v,
    ]
    return rng.choice(choices)(version)


def valid(version: str) -> bool:
    try:
        dpkg.parse(version)
    except InvalidVersion:
        return False
    return True


def dpkg_compare_many(pairs: list[tuple[str, str]]) -> list[int]:
    """-1/0/1 per pair from the real dpkg: one shell loop for all pairs (about 1.5 dpkg runs each)."""
    script = (
        'while read -r a b; do '
        'if dpkg --compare-versions "$a" lt "$b"; then echo -1; '
        'elif dpkg --compare-versions "$a" eq "$b"; then echo 0; else echo 1; fi; done'
    )
    data = "".join(f"{a} {b}\n" for a, b in pairs)
    out = subprocess.run(["sh", "-c", script], input=data, capture_output=True, text=True, check=True, timeout=60)
    results = [int(x) for x in out.stdout.split()]
    assert len(results) == len(pairs), out.stderr[-500:]
    return results


@pytest.mark.skipif(DPKG is None, reason="dpkg not installed")
def test_agrees_with_dpkg_on_generated_versions() -> None:
    rng = random.Random(20261127)
    pairs: list[tuple[str, str]] = []
    while len(pairs) < PAIRS:
        a = random_version(rng)
        b = mutate(rng, a) if rng.random() < 0.7 else random_version(rng)
        if valid(a) and valid(b):
            pairs.append((a, b))
    expected = dpkg_compare_many(pairs)
    mismatches = [(a, b, e, compare("Debian", a, b)) for (a, b), e in zip(pairs, expected, strict=True)
                  if compare("Debian", a, b) != e]
    assert not mismatches, mismatches[:20]
    # The corpus really exercises ties and every outcome.
    assert {-1, 0, 1} <= set(expected) and expected.count(0) > 100


# Debian Policy 5.6.12 and dpkg's documented behaviour.
EDGE_CASES = [
    ("1.0~rc1", "1.0", -1),          # ~ sorts before the end of the string
    ("1.0~rc1~1", "1.0~rc1", -1),
    ("1.0~~", "1.0~", -1),
    ("1.0", "1.0+b1", -1),           # + after the end
    ("1.0a", "1.0+", -1),            # letters before non-letters
    ("1.0a", "1.0.", -1),
    ("1.0.0", "1.0", 1),
    ("1.0", "1.0-0", 0),             # no revision equals revision 0
    ("1.00", "1.0", 0),              # numbers compare as numbers
    ("1:0.1", "2.0", 1),             # the epoch first
    ("0:1.0", "1.0", 0),
    ("2.36-9+deb12u4", "2.36-9+deb12u10", -1),
    ("2.36-9+deb12u4", "2.36-9", 1),
    ("1.2.3-1~deb11u1", "1.2.3-1", -1),  # a backport sorts before the release it comes from
    ("7.88.1-10+deb12u5", "7.88.1-10+deb12u12", -1),
    ("1.0-1-2", "1.0-1-1", 1),       # the revision follows the last hyphen
    ("10", "9", 1),
    ("1.0a1", "1.0a", 1),
    ("1.0A", "1.0a", -1),            # ASCII order among letters
]


@pytest.mark.parametrize(("a", "b", "expected"), EDGE_CASES)
def test_policy_edge_cases(a: str, b: str, expected: int) -> None:
    assert compare("Debian", a, b) == expected
    assert compare("Debian", b, a) == -expected


@pytest.mark.skipif(DPKG is None, reason="dpkg not installed")
def test_edge_cases_agree_with_dpkg() -> None:
    pairs = [(a, b) for a, b, _ in EDGE_CASES]
    assert dpkg_compare_many(pairs) == [e for _, _, e in EDGE_CASES]


@pytest.mark.parametrize("bad", ["", "a1", "1.0-", ":1", "1:", "x:1", "1.0 2", "1.0_1", "-1", "1:2:3",
                                 "1.0-a_b", "99999999999:1", "1" * 300, "1.0-ü"])
def test_invalid_versions_raise(bad: str) -> None:
    with pytest.raises(InvalidVersion):
        compare("Debian", bad, "1.0")
