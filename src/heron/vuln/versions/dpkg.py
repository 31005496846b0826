"""Debian version ordering (Debian Policy 5.6.12), as ``dpkg --compare-versions`` implements it.

A version is ``[epoch:]upstream[-revision]``: the epoch is a decimal number, the revision is
what follows the last hyphen. Upstream and revision are compared the same way: alternately a
run of non-digits, compared character by character where ``~`` sorts before everything (even
the end of the string), then the end, then letters, then every other character (by ASCII); and
a run of digits, compared as a number (missing counts as 0).

Strict where dpkg only warns: a version whose upstream does not start with a digit, or with a
character Policy does not allow, raises InvalidVersion (the caller reports the match as unknown
rather than trusting a comparison of a malformed string).
"""

from __future__ import annotations

import functools
import re

from heron.vuln.versions.errors import InvalidVersion

_UPSTREAM = re.compile(r"[0-9][A-Za-z0-9.+~-]*")
_UPSTREAM_NO_HYPHEN = re.compile(r"[0-9][A-Za-z0-9.+~]*")
_REVISION = re.compile(r"[A-Za-z0-9.+~]+")
_PARTS = re.compile(r"([^0-9]*)([0-9]*)")
_MAX_LENGTH = 256
_MAX_EPOCH = 2**31 - 1

Weights = tuple[int, ...]
Part = tuple[Weights, int]
# A run's end weighs 0; "~" weighs -1; letters their code; anything else its code + 256.
_END: Part = ((0,), 0)


def _weights(text: str) -> Weights:
    out = [-1 if c == "~" else ord(c) if c.isalpha() else ord(c) + 256 for c in text]
    out.append(0)
    return tuple(out)


def _key(text: str) -> tuple[Part, ...]:
    """Parts (non-digit run, number) of an upstream version or revision."""
    return tuple((_weights(nondigits), int(digits) if digits else 0)
                 for nondigits, digits in _PARTS.findall(text) if nondigits or digits)


def _compare_parts(a: tuple[Part, ...], b: tuple[Part, ...]) -> int:
    """dpkg's verrevcmp on parsed parts: a string that has ended reads as "end of string, 0"
    (so a following "~" sorts before it, anything else after it)."""
    for i in range(max(len(a), len(b))):
        x = a[i] if i < len(a) else _END
        y = b[i] if i < len(b) else _END
        if x != y:
            return -1 if x < y else 1
    return 0


DpkgKey = tuple[int, tuple[Part, ...], tuple[Part, ...]]


@functools.lru_cache(maxsize=65_536)
def parse(version: str) -> DpkgKey:
    """The sort key of ``version``; raises InvalidVersion when dpkg would refuse or warn."""
    if not version or len(version) > _MAX_LENGTH:
        raise InvalidVersion(f"bad dpkg version length: {version[:64]!r}")
    epoch_text, colon, rest = version.partition(":")
    if colon:
        if not epoch_text.isascii() or not epoch_text.isdigit():
            raise InvalidVersion(f"dpkg epoch is not a number: {version!r}")
        epoch = int(epoch_text)
        if epoch > _MAX_EPOCH:
            raise InvalidVersion(f"dpkg epoch too large: {version!r}")
    else:
        epoch, rest = 0, version
    upstream, hyphen, revision = rest.rpartition("-")
    if not hyphen:
        upstream, revision = rest, ""
        if not _UPSTREAM_NO_HYPHEN.fullmatch(upstream):
            raise InvalidVersion(f"bad dpkg upstream version: {version!r}")
    else:
        if not _UPSTREAM.fullmatch(upstream) or not _REVISION.fullmatch(revision):
            raise InvalidVersion(f"bad dpkg version: {version!r}")
    return epoch, _key(upstream), _key(revision)


def compare(a: str, b: str) -> int:
    (ea, ua, ra), (eb, ub, rb) = parse(a), parse(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_parts(ua, ub) or _compare_parts(ra, rb)
