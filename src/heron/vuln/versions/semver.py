"""SemVer 2.0.0 precedence (semver.org section 11), for npm, Go, crates.io and SEMVER ranges.

``major.minor.patch[-pre.release][+build]``: the three numbers compare numerically; a version
with a pre-release is lower than the same one without; pre-release identifiers compare one by
one (numbers numerically, below any alphanumeric identifier, which compare in ASCII order), and
a longer list wins when all before are equal. Build metadata is ignored.

Lenient where real version strings are: a leading ``v`` or ``=`` (Go tags, npm), surrounding
whitespace, missing minor/patch (``1.2`` is ``1.2.0``) and leading zeros are accepted.
Anything else (four numbers, empty identifiers, characters outside [0-9A-Za-z-]) raises
InvalidVersion.
"""

from __future__ import annotations

import functools
import re

from heron.vuln.versions.errors import InvalidVersion

_SEMVER = re.compile(
    r"[v=]?\s*(?P<major>[0-9]+)(?:\.(?P<minor>[0-9]+)(?:\.(?P<patch>[0-9]+))?)?"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
    r"(?:\+(?P<build>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?",
)
_MAX_LENGTH = 256

# A release sorts after every pre-release of the same numbers: (1,) > (0, ...).
SemverKey = tuple[int, int, int, tuple[int, ...] | tuple[int, tuple[tuple[int, int, str], ...]]]


@functools.lru_cache(maxsize=65_536)
def parse(version: str) -> SemverKey:
    if len(version) > _MAX_LENGTH:
        raise InvalidVersion(f"semver too long: {version[:64]!r}")
    m = _SEMVER.fullmatch(version.strip())
    if m is None or not version.isascii():
        raise InvalidVersion(f"not a semantic version: {version[:64]!r}")
    pre: tuple[int, ...] | tuple[int, tuple[tuple[int, int, str], ...]]
    if m["pre"] is None:
        pre = (1,)
    else:
        pre = (0, tuple((0, int(i), "") if i.isdigit() else (1, 0, i) for i in m["pre"].split(".")))
    return int(m["major"]), int(m["minor"] or 0), int(m["patch"] or 0), pre


def compare(a: str, b: str) -> int:
    ka, kb = parse(a), parse(b)
    return (ka > kb) - (ka < kb)
