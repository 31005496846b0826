"""Ecosystem keys: how an advisory's ecosystem and an installed package meet.

OSV scopes distribution advisories to a release (``Debian:12``, ``Alpine:v3.20``,
``Ubuntu:22.04:LTS``, ``Ubuntu:Pro:18.04:LTS``); agents report a package's ecosystem and its
distribution release separately (``Debian`` + ``12``). Both are reduced to one key, so lookups
are exact: ``Debian:12``, ``Alpine:v3.20``, ``Ubuntu:22.04``, ``Rocky Linux:9``. Language
ecosystems have no release (``PyPI``, ``npm``). Names are normalised the way the ecosystem
compares them (PyPI: PEP 503); everything else is compared as written.

Rolling distributions (Wolfi, Chainguard) have no release. A key with no advisory in the
database is reported as *uncovered* by the matcher (never a silent "not vulnerable").

Limits: Ubuntu Pro (ESM) advisories share the release's key (a host without Pro is still
vulnerable to what Pro fixes); Red Hat's CPE-scoped ecosystems are kept as written, so they
match only an agent that reports the same CPE string (a RHEL host's ``Red Hat:9`` is reported
uncovered); SUSE packages are looked up under "Linux Enterprise Server <N> SP<M>" only, not the
module ecosystems (Basesystem...) that also carry SUSE advisories.
"""

from __future__ import annotations

import re

from heron.vuln.versions.pep440 import normalize_name

OS_ECOSYSTEMS = frozenset({
    "Debian", "Ubuntu", "Alpine", "Red Hat", "Rocky Linux", "AlmaLinux", "openSUSE", "SUSE", "Mageia",
    "Photon OS", "openEuler", "Alpaquita", "Wolfi", "Chainguard",
})
OS_MANAGERS = frozenset({"dpkg", "rpm", "apk"})
# Rolling distributions: OSV keys their advisories without a release, whatever an agent reports.
ROLLING = frozenset({"Wolfi", "Chainguard"})

DEBIAN_CODENAMES = {
    "buzz": "1.1", "rex": "1.2", "bo": "1.3", "hamm": "2.0", "slink": "2.1", "potato": "2.2",
    "woody": "3.0", "sarge": "3.1", "etch": "4", "lenny": "5", "squeeze": "6", "wheezy": "7",
    "jessie": "8", "stretch": "9", "buster": "10", "bullseye": "11", "bookworm": "12", "trixie": "13",
    "forky": "14", "duke": "15",
}
_UBUNTU_RELEASE = re.compile(r"[0-9]{2}\.[0-9]{2}")
_ALPINE_RELEASE = re.compile(r"v?([0-9]+)\.([0-9]+)(?:\.[0-9]+)?")
_MAJOR = re.compile(r"([0-9]+)(?:\.[0-9]+)*")


def _release(base: str, parts: list[str]) -> str:
    """The normalised release of an OS ecosystem ("" when none is given)."""
    if not parts or base in ROLLING:
        return ""
    if base == "Debian":
        first = parts[0].lower()
        number = _MAJOR.fullmatch(first)
        return DEBIAN_CODENAMES.get(first, number[1] if number else first)
    if base == "Ubuntu":
        found = [p for p in parts if _UBUNTU_RELEASE.fullmatch(p)]
        return found[0] if found else ":".join(p for p in parts if p not in ("Pro", "LTS"))
    if base == "Alpine":
        m = _ALPINE_RELEASE.fullmatch(parts[0])
        return f"v{m[1]}.{m[2]}" if m else parts[0]
    if base in ("Rocky Linux", "AlmaLinux"):
        m = _MAJOR.fullmatch(parts[0])
        return m[1] if m else parts[0]
    return ":".join(parts)


def ecosystem_key(ecosystem: str) -> str:
    """The lookup key of an OSV ecosystem string."""
    base, _, rest = ecosystem.partition(":")
    if base not in OS_ECOSYSTEMS:
        return base  # language ecosystems: a suffix names a registry (Maven:https://...), not a release
    release = _release(base, rest.split(":") if rest else [])
    return f"{base}:{release}" if release else base


def package_key(ecosystem: str, distro: str, manager: str) -> str:
    """The lookup key of an installed package: an OS package is scoped to its release."""
    if manager in OS_MANAGERS and distro and ecosystem in OS_ECOSYSTEMS:
        return ecosystem_key(f"{ecosystem}:{distro}")
    return ecosystem_key(ecosystem)


def normalize(ecosystem_base: str, name: str) -> str:
    """A package name as the ecosystem compares it."""
    if ecosystem_base == "PyPI":
        return normalize_name(name)
    return name
