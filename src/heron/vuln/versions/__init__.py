"""Version orderings per OSV ecosystem: ``compare(ecosystem, a, b)`` -> -1, 0 or 1.

``ecosystem`` is an OSV ecosystem string (``Debian:12``, ``Alpine:v3.20``, ``PyPI``...; only
the part before the first colon chooses the ordering) or ``SEMVER`` for OSV SEMVER ranges.
A version the ordering does not accept, or an ecosystem without an ordering here (Maven,
RubyGems, NuGet...), raises InvalidVersion: callers report such a match as unknown, never as
"not vulnerable".
"""

from __future__ import annotations

from collections.abc import Callable

from heron.vuln.versions import apk, dpkg, pep440, rpm, semver
from heron.vuln.versions.errors import InvalidVersion

Compare = Callable[[str, str], int]

ORDERINGS: dict[str, Compare] = {
    "Debian": dpkg.compare,
    "Ubuntu": dpkg.compare,
    "Alpine": apk.compare,
    "Chainguard": apk.compare,
    "Wolfi": apk.compare,
    "Red Hat": rpm.compare,
    "Rocky Linux": rpm.compare,
    "AlmaLinux": rpm.compare,
    "openSUSE": rpm.compare,
    "SUSE": rpm.compare,
    "Mageia": rpm.compare,
    "Photon OS": rpm.compare,
    "openEuler": rpm.compare,
    "PyPI": pep440.compare,
    "npm": semver.compare,
    "Go": semver.compare,
    "crates.io": semver.compare,
    "SEMVER": semver.compare,
}

__all__ = ["ORDERINGS", "InvalidVersion", "compare", "ordering"]


def ordering(ecosystem: str) -> Compare:
    """The comparison function of ``ecosystem``; raises InvalidVersion when there is none."""
    found = ORDERINGS.get(ecosystem.partition(":")[0])
    if found is None:
        raise InvalidVersion(f"no version ordering for ecosystem {ecosystem[:64]!r}")
    return found


def compare(ecosystem: str, a: str, b: str) -> int:
    """-1, 0 or 1 as ``a`` sorts before, equal to or after ``b`` in ``ecosystem``."""
    return ordering(ecosystem)(a, b)
