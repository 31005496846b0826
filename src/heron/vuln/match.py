"""Match installed packages against advisories (OSV evaluation, per-ecosystem version ordering).

Which advisories a package is checked against (heron.vuln.ecosystems): an OS package (manager
dpkg, rpm or apk) only against its distribution release's advisories (``Debian:12``...), by
its *source* package name and version, because distribution advisories are written per source
package and carry the distribution's back-ported fixed versions (an RPM is looked up by its
binary name and version too: RPM distributions often write advisories per binary package; the
two lookups merge by advisory id); a language package against
its ecosystem (``PyPI`` with PEP 503 names, ``npm``...). An upstream advisory (PyPI, GHSA,
OSS-Fuzz...) never applies to an OS package: the distribution's own advisory says whether its
build is affected. An RPM's source version (from the source RPM's file name) gets the binary's
epoch, as advisories write it.

Evaluation follows the OSV schema: affected when the version is listed in ``versions`` or lies
in a range (sorted events: ``introduced`` opens, ``fixed`` closes, ``last_affected`` closes
after itself, ``limit`` bounds the range). ``introduced: "0"`` needs no ordering. When the
installed version or a range's version cannot be ordered (no ordering accepts it, or the
ecosystem has none here), the result is **unknown**, reported and counted: never a silent
"not vulnerable". Likewise a package whose ecosystem key has no advisory at all in the database
(feed not imported, distribution not covered by OSV) is counted in ``MatchStats.uncovered``.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from heron.schema.events import Package
from heron.vuln import osv
from heron.vuln.db import AdvisoryDB, Header
from heron.vuln.ecosystems import OS_MANAGERS, normalize, package_key
from heron.vuln.versions import Compare as CompareFn
from heron.vuln.versions import InvalidVersion, ordering, pep440, semver

Status = Literal["affected", "unknown"]


@dataclass(frozen=True, slots=True)
class Match:
    """One advisory affecting (or possibly affecting) one input package."""

    package_index: int  # position of the package in the input
    advisory: Header
    status: Status
    fixed_version: str | None  # the first fixed version above the installed one, when known
    severity: osv.Severity
    ecosystem: str  # the advisory's ecosystem as written (e.g. "Ubuntu:22.04:LTS")
    matched_name: str  # the name looked up (source package for OS packages)
    matched_version: str
    reason: str = ""  # why unknown


@dataclass
class MatchStats:
    packages: int = 0
    looked_up: int = 0  # (ecosystem, name) pairs queried
    candidates: int = 0  # (package, advisory) pairs evaluated
    affected: int = 0
    unknown: int = 0
    unknown_reasons: Counter[str] = field(default_factory=Counter)
    # ecosystem key -> packages, for keys with no advisory at all in the database (a feed not
    # imported, or a distribution OSV does not cover): those packages were NOT checked.
    uncovered: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"packages": self.packages, "looked_up": self.looked_up, "candidates": self.candidates,
                "affected": self.affected, "unknown": self.unknown, "unknown_reasons": dict(self.unknown_reasons),
                "uncovered": dict(self.uncovered)}


@dataclass(frozen=True, slots=True)
class Verdict:
    status: Literal["affected", "unknown", "not_affected"]
    fixed_version: str | None = None
    reason: str = ""


def lookup_target(pkg: Package) -> tuple[str, str, str]:
    """(ecosystem key, normalised name, version) to look the package up by."""
    return lookup_targets(pkg)[0]


def lookup_targets(pkg: Package) -> list[tuple[str, str, str]]:
    """Every (ecosystem key, normalised name, version) the package is looked up by: the source
    package first; for an RPM also the binary package, since RPM advisories (Red Hat, SUSE,
    AlmaLinux...) are often written per binary package."""
    key = package_key(pkg.ecosystem, pkg.distro, pkg.manager)
    if pkg.manager in OS_MANAGERS:
        version = pkg.source_version or pkg.version
        epoch, colon, _ = pkg.version.partition(":")
        if pkg.manager == "rpm" and colon and ":" not in version:
            # A source RPM's file name carries no epoch; its binaries share the source's epoch.
            version = f"{epoch}:{version}"
        targets = [(key, pkg.source_name or pkg.name, version)]
        if pkg.manager == "rpm" and (pkg.name, pkg.version) != targets[0][1:]:
            targets.append((key, pkg.name, pkg.version))
        return targets
    return [(key, normalize(key.partition(":")[0], pkg.name), pkg.version)]


def _canonical(ecosystem: str, version: str) -> object:
    """What two spellings of one version share (PyPI 1.0 == 1.0.0), else the string itself."""
    base = ecosystem.partition(":")[0]
    try:
        if base == "PyPI":
            return pep440.parse(version)
        if base in ("npm", "Go", "crates.io"):
            return semver.parse(version)
    except InvalidVersion:
        pass
    return version


def _in_versions(ecosystem: str, version: str, versions: tuple[str, ...]) -> bool:
    if version in versions:
        return True
    mine = _canonical(ecosystem, version)
    if mine == version:
        return False
    return any(_canonical(ecosystem, v) == mine for v in versions)


def evaluate_range(rng: osv.Range, ecosystem: str, version: str) -> Verdict:
    events = rng.events
    if all(e.kind == "introduced" and e.version == "0" for e in events):
        return Verdict("affected")  # every version: no ordering needed
    try:
        cmp: CompareFn = ordering("SEMVER" if rng.type == "SEMVER" else ecosystem)
        cmp(version, version)  # is the installed version acceptable at all?
    except InvalidVersion as e:
        return Verdict("unknown", reason=_reason(e, "installed"))

    def position(ev: osv.RangeEvent) -> int:
        """Sign of (installed - event): "0" is before every version, a "*" limit after."""
        if ev.kind == "introduced" and ev.version == "0":
            return 1
        if ev.kind == "limit" and ev.version == "*":
            return -1
        return cmp(version, ev.version)

    try:
        ordered = [(position(ev), ev) for ev in _sorted_events(events, cmp)]
    except InvalidVersion as e:
        return Verdict("unknown", reason=_reason(e, "advisory"))
    limits = [p for p, ev in ordered if ev.kind == "limit"]
    if limits and not any(p < 0 for p in limits):
        return Verdict("not_affected")
    vulnerable = False
    fixed: str | None = None
    for p, ev in ordered:  # p: sign of (installed - event)
        if ev.kind == "introduced" and p >= 0:
            vulnerable, fixed = True, None
        elif ev.kind == "fixed":
            if p >= 0:
                vulnerable = False
            elif vulnerable and fixed is None:
                fixed = ev.version
        elif ev.kind == "last_affected" and p > 0:
            vulnerable = False
    return Verdict("affected", fixed) if vulnerable else Verdict("not_affected")


def _sorted_events(events: tuple[osv.RangeEvent, ...], cmp: CompareFn) -> list[osv.RangeEvent]:
    def order(a: osv.RangeEvent, b: osv.RangeEvent) -> int:
        if a.version == b.version:
            return 0
        if a.kind == "introduced" and a.version == "0":
            return -1
        if b.kind == "introduced" and b.version == "0":
            return 1
        if a.version == "*":
            return 1
        if b.version == "*":
            return -1
        return cmp(a.version, b.version)

    return sorted(events, key=functools.cmp_to_key(order))


def _reason(error: InvalidVersion, whose: str) -> str:
    text = str(error)
    if text.startswith("no version ordering"):
        return "no_ordering"
    return f"unparseable_{whose}_version"


def evaluate(affected: osv.Affected, ecosystem: str, version: str) -> Verdict:
    """OSV IsVulnerable for one affected entry."""
    if affected.versions and _in_versions(ecosystem, version, affected.versions):
        return Verdict("affected", _fixed_from_ranges(affected, ecosystem, version))
    unknown: Verdict | None = None
    for rng in affected.ranges:
        verdict = evaluate_range(rng, ecosystem, version)
        if verdict.status == "affected":
            return verdict
        if verdict.status == "unknown" and unknown is None:
            unknown = verdict
    if unknown is not None:
        return unknown
    if not affected.ranges and not affected.versions:
        return Verdict("unknown", reason="no_ranges")
    return Verdict("not_affected")


def _fixed_from_ranges(affected: osv.Affected, ecosystem: str, version: str) -> str | None:
    for rng in affected.ranges:
        verdict = evaluate_range(rng, ecosystem, version)
        if verdict.fixed_version:
            return verdict.fixed_version
    return None


def match_packages(packages: Sequence[Package], db: AdvisoryDB) -> tuple[list[Match], MatchStats]:
    """Every advisory affecting (or, when unknown, possibly affecting) each package."""
    stats = MatchStats(packages=len(packages))
    targets = [lookup_targets(p) for p in packages]
    wanted = {(key, name) for ts in targets for key, name, _ in ts}
    stats.looked_up = len(wanted)
    found = db.lookup(wanted)
    per_key = Counter(ts[0][0] for ts in targets)
    present = db.keys_present(per_key)
    stats.uncovered = {k: n for k, n in sorted(per_key.items()) if k not in present}
    matches: list[Match] = []
    for index, package_targets in enumerate(targets):
        # advisory id -> the strongest verdict over its affected entries and the package's names
        best: dict[str, Match] = {}
        for key, name, version in package_targets:
            for header, affected in found.get((key, name), ()):
                stats.candidates += 1
                verdict = evaluate(affected, key, version)
                if verdict.status == "not_affected":
                    continue
                previous = best.get(header.id)
                if previous is not None and (previous.status == "affected" or verdict.status == "unknown"):
                    continue
                best[header.id] = Match(
                    package_index=index, advisory=header, status=verdict.status,
                    fixed_version=verdict.fixed_version, severity=affected.severity or header.severity,
                    ecosystem=affected.ecosystem, matched_name=name, matched_version=version, reason=verdict.reason)
        for m in best.values():
            if m.status == "affected":
                stats.affected += 1
            else:
                stats.unknown += 1
                stats.unknown_reasons[m.reason] += 1
            matches.append(m)
    return matches, stats
