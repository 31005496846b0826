"""RPM version ordering: ``[epoch:]version[-release]`` compared as rpm does (rpmvercmp).

Epochs compare as numbers (missing = 0), then versions, then releases with rpmvercmp (the
release only when both sides have one, as rpm does). rpmvercmp splits a string into runs of
ASCII digits or ASCII letters; every other character only separates runs, except:

- ``~`` sorts before anything, even the end of the string (pre-releases: 1.0~rc1 < 1.0);
- ``^`` sorts after the end of the string but before any other run (snapshots after a
  release: 1.0 < 1.0^git1 < 1.0.1).

A numeric run is newer than an alphabetic one; numbers compare without leading zeros (longer
is newer, then digit by digit); letters compare by byte. When every run is equal, the string
with runs left is newer. Version strings with characters outside printable ASCII are refused.
"""

from __future__ import annotations

import functools
import re

from heron.vuln.versions.errors import InvalidVersion

_ALLOWED = re.compile(r"[\x21-\x7e]+")
_MAX_LENGTH = 256


def _is_separator(c: str) -> bool:
    return not (c.isascii() and c.isalnum()) and c not in "~^"


def vercmp(a: str, b: str) -> int:
    """rpmvercmp: -1, 0 or 1."""
    if a == b:
        return 0
    i = j = 0
    la, lb = len(a), len(b)
    while i < la or j < lb:
        while i < la and _is_separator(a[i]):
            i += 1
        while j < lb and _is_separator(b[j]):
            j += 1
        ca = a[i] if i < la else ""
        cb = b[j] if j < lb else ""
        if ca == "~" or cb == "~":
            if ca != "~":
                return 1
            if cb != "~":
                return -1
            i += 1
            j += 1
            continue
        if ca == "^" or cb == "^":
            if not ca:
                return -1
            if not cb:
                return 1
            if ca != "^":
                return 1
            if cb != "^":
                return -1
            i += 1
            j += 1
            continue
        if not ca or not cb:
            break
        numeric = ca.isdigit()
        end_a, end_b = i, j
        if numeric:
            while end_a < la and a[end_a].isascii() and a[end_a].isdigit():
                end_a += 1
            while end_b < lb and b[end_b].isascii() and b[end_b].isdigit():
                end_b += 1
        else:
            while end_a < la and a[end_a].isascii() and a[end_a].isalpha():
                end_a += 1
            while end_b < lb and b[end_b].isascii() and b[end_b].isalpha():
                end_b += 1
        if end_b == j:  # runs of different kinds: the numeric one is newer
            return 1 if numeric else -1
        run_a, run_b = a[i:end_a], b[j:end_b]
        if numeric:
            run_a, run_b = run_a.lstrip("0"), run_b.lstrip("0")
            if len(run_a) != len(run_b):
                return 1 if len(run_a) > len(run_b) else -1
        if run_a != run_b:
            return 1 if run_a > run_b else -1
        i, j = end_a, end_b
    if i >= la and j >= lb:
        return 0
    return -1 if i >= la else 1


@functools.lru_cache(maxsize=65_536)
def parse(evr: str) -> tuple[int, str, str | None]:
    """(epoch, version, release) of ``[epoch:]version[-release]``; raises InvalidVersion."""
    if not evr or len(evr) > _MAX_LENGTH or not _ALLOWED.fullmatch(evr):
        raise InvalidVersion(f"bad rpm version: {evr[:64]!r}")
    epoch_text, colon, rest = evr.partition(":")
    epoch = 0
    if colon:
        if not epoch_text.isascii() or not epoch_text.isdigit():
            raise InvalidVersion(f"rpm epoch is not a number: {evr!r}")
        epoch = int(epoch_text)
    else:
        rest = evr
    version, hyphen, release = rest.rpartition("-")
    if not hyphen:
        version, release = rest, ""
    if not version or (hyphen and not release) or ":" in rest:
        raise InvalidVersion(f"bad rpm version: {evr!r}")
    return epoch, version, release if hyphen else None


def compare(a: str, b: str) -> int:
    ea, va, ra = parse(a)
    eb, vb, rb = parse(b)
    if ea != eb:
        return 1 if ea > eb else -1
    rc = vercmp(va, vb)
    if rc or ra is None or rb is None:
        return rc
    return vercmp(ra, rb)
