"""Read OSV records (https://ossf.github.io/osv-schema/) into Advisory values, hostile-safely.

A record is untrusted input: every field is type-checked, strings and lists are bounded, and a
record that breaks a rule raises MalformedRecord with a short reason; the importer counts and
skips it (one bad record never stops an import). Kept per record: id, aliases (plus
``upstream``), summary, modified/published/withdrawn, a severity, and per affected package its
ecosystem, name, purl, ECOSYSTEM/SEMVER ranges and explicit versions. GIT ranges are dropped
(they need the repository's history), as are references, credits and details.

Severity, per affected package (falling back to the record's): the CVSS v3 base score computed
from the vector (``severity[]`` of type CVSS_V3), else a CVSS v4 vector kept with no score,
plus a label from the first of: the CVSS score, an Ubuntu priority, Debian's urgency
(``ecosystem_specific.urgency``), a ``severity`` in ``ecosystem_specific``/``database_specific``
(GitHub's CRITICAL/HIGH/MODERATE/LOW). A distribution's own label is kept beside the CVSS
score because it says how the distribution's build is affected (Debian "unimportant").
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import msgspec

from heron.vuln.cvss import label_for_score, v3_base_score

MAX_RECORD_BYTES = 8 << 20
MAX_AFFECTED = 5_000
MAX_RANGES = 1_000
MAX_EVENTS = 5_000
MAX_VERSIONS = 50_000
MAX_ALIASES = 1_000
MAX_ID = 256
MAX_NAME = 512
MAX_VERSION = 256
MAX_SUMMARY = 500  # characters kept; longer summaries are cut, not refused

EVENT_KINDS = ("introduced", "fixed", "last_affected", "limit")
RANGE_TYPES = ("ECOSYSTEM", "SEMVER")


class MalformedRecord(ValueError):
    """The record breaks the schema or a bound; ``reason`` is a short counter name."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Severity(msgspec.Struct, frozen=True, omit_defaults=True):
    label: str = "unknown"  # critical, high, medium, low, negligible, unknown
    score: float | None = None  # CVSS base score, when a v3 vector was given
    vector: str | None = None
    source: str = ""  # CVSS_V3, CVSS_V4, Ubuntu, Debian, GHSA...
    distro_label: str | None = None  # the distribution's own rating, when it gave one


class RangeEvent(msgspec.Struct, frozen=True, array_like=True):
    kind: str  # introduced, fixed, last_affected, limit
    version: str


class Range(msgspec.Struct, frozen=True, array_like=True):
    type: str  # ECOSYSTEM or SEMVER
    events: tuple[RangeEvent, ...]


class Affected(msgspec.Struct, frozen=True, omit_defaults=True):
    ecosystem: str  # as the record writes it, e.g. "Debian:12", "Ubuntu:Pro:18.04:LTS"
    name: str
    purl: str = ""
    ranges: tuple[Range, ...] = ()
    versions: tuple[str, ...] = ()
    severity: Severity | None = None  # package-level severity, when the record gives one


class Header(msgspec.Struct, frozen=True, omit_defaults=True):
    """An advisory without its affected list: what a finding shows."""

    id: str
    modified_ns: int
    aliases: tuple[str, ...] = ()
    summary: str = ""
    published_ns: int = 0
    withdrawn_ns: int = 0
    severity: Severity = Severity()

    @classmethod
    def of(cls, adv: Header) -> Header:
        """Just the header fields of an advisory."""
        return cls(**{name: getattr(adv, name) for name in cls.__struct_fields__})


class Advisory(Header, frozen=True, omit_defaults=True):
    affected: tuple[Affected, ...] = ()


def _str(value: object, field: str, limit: int, required: bool = True) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise MalformedRecord("bad_field", f"{field} must be a non-empty string")
    if len(value) > limit:
        raise MalformedRecord("too_large", f"{field} longer than {limit}")
    return value


def _list(value: object, field: str, limit: int) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedRecord("bad_field", f"{field} must be a list")
    if len(value) > limit:
        raise MalformedRecord("too_large", f"{field} has more than {limit} items")
    return value


def _dict(value: object, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedRecord("bad_field", f"{field} must be an object")
    return value


def parse_time(value: object, field: str, required: bool) -> int:
    """RFC 3339 time -> ns since the epoch (0 when absent and optional)."""
    if value is None and not required:
        return 0
    text = _str(value, field, 64)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise MalformedRecord("bad_time", f"{field}: {text[:40]!r}") from None
    if when.tzinfo is None:
        raise MalformedRecord("bad_time", f"{field} has no time zone")
    return int(when.timestamp()) * 1_000_000_000 + when.microsecond * 1000


_GHSA_LABELS = {"critical": "critical", "high": "high", "moderate": "medium", "medium": "medium",
                "low": "low", "negligible": "negligible", "unimportant": "negligible"}


def _label(text: object) -> str | None:
    """A severity word (any case, Debian's trailing ``*`` marks dropped) -> our label, or None."""
    if not isinstance(text, str) or len(text) > 64:
        return None
    return _GHSA_LABELS.get(re.sub(r"[^a-z]", "", text.lower()))


def _severity(items: object, specific: list[dict[str, Any]]) -> Severity | None:
    """Severity from a ``severity`` list and ``*_specific`` objects; None when none says anything."""
    score: float | None = None
    vector: str | None = None
    source = ""
    label: str | None = None
    distro_label: str | None = None
    for item in _list(items, "severity", 64):
        if not isinstance(item, dict):
            raise MalformedRecord("bad_field", "severity item must be an object")
        kind, value = item.get("type"), item.get("score")
        if not isinstance(kind, str) or not isinstance(value, str) or len(value) > 256:
            raise MalformedRecord("bad_field", "severity needs string type and score")
        if kind == "CVSS_V3" and score is None:
            computed = v3_base_score(value)
            if computed is not None:
                score, vector, source = computed, value, kind
        elif kind == "CVSS_V4" and vector is None:
            vector, source = value, kind
        elif kind == "Ubuntu" and distro_label is None:
            distro_label = _label(value)
    for block in specific:
        if distro_label is None:
            distro_label = _label(block.get("urgency"))  # Debian
        if label is None:
            label = _label(block.get("severity"))  # GitHub, other databases
    if score is None and vector is None and label is None and distro_label is None:
        return None
    return Severity(label=label_for_score(score) if score is not None else label or distro_label or "unknown",
                    score=score, vector=vector, source=source or ("label" if label else "distro"),
                    distro_label=distro_label)


def merge_severity(package: Severity | None, record: Severity | None) -> Severity | None:
    """A package's severity completed by the record's: a score or vector from whichever has one
    (the package's first), the distribution's label from either."""
    if package is None or record is None:
        return package or record
    scored = package if package.score is not None or package.vector is not None else record
    label = scored.label if scored.score is not None else (
        package.label if package.label != "unknown" else record.label)
    return Severity(label=label, score=scored.score, vector=scored.vector, source=scored.source,
                    distro_label=package.distro_label or record.distro_label)


def _range(raw: object) -> Range | None:
    """One range; None for a GIT (or unknown type) range, which matching cannot evaluate."""
    block = _dict(raw, "range")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise MalformedRecord("bad_range", "range type must be a string")
    if kind not in RANGE_TYPES:
        return None
    events: list[RangeEvent] = []
    for item in _list(block.get("events"), "events", MAX_EVENTS):
        if not isinstance(item, dict) or len(item) != 1:
            raise MalformedRecord("bad_range", "an event has exactly one key")
        ((name, version),) = item.items()
        if name not in EVENT_KINDS:
            raise MalformedRecord("bad_range", f"unknown event {str(name)[:20]!r}")
        events.append(RangeEvent(name, _str(version, name, MAX_VERSION)))
    if not any(e.kind == "introduced" for e in events):
        raise MalformedRecord("bad_range", "a range needs an introduced event")
    if any(e.kind == "fixed" for e in events) and any(e.kind == "last_affected" for e in events):
        raise MalformedRecord("bad_range", "fixed and last_affected in one range")
    return Range(kind, tuple(events))


def _affected(raw: object, record_severity: Severity | None) -> Affected:
    block = _dict(raw, "affected")
    package = _dict(block.get("package"), "package")
    ecosystem = _str(package.get("ecosystem"), "ecosystem", MAX_NAME)
    name = _str(package.get("name"), "name", MAX_NAME)
    purl = _str(package.get("purl"), "purl", 2 * MAX_NAME, required=False)
    ranges = tuple(r for r in (_range(x) for x in _list(block.get("ranges"), "ranges", MAX_RANGES))
                   if r is not None)
    versions = tuple(_str(v, "version", MAX_VERSION)
                     for v in _list(block.get("versions"), "versions", MAX_VERSIONS))
    specific = [_dict(block.get("ecosystem_specific"), "ecosystem_specific"),
                _dict(block.get("database_specific"), "database_specific")]
    severity = merge_severity(_severity(block.get("severity"), specific), record_severity)
    return Affected(ecosystem=ecosystem, name=name, purl=purl, ranges=ranges, versions=versions,
                    severity=severity)


def parse_record(raw: object) -> Advisory:
    """An Advisory from a decoded OSV JSON object; raises MalformedRecord."""
    record = _dict(raw, "record")
    if not record:
        raise MalformedRecord("bad_field", "record must be a non-empty object")
    advisory_id = _str(record.get("id"), "id", MAX_ID)
    aliases = [_str(a, "alias", MAX_ID) for a in _list(record.get("aliases"), "aliases", MAX_ALIASES)]
    aliases += [_str(a, "upstream", MAX_ID) for a in _list(record.get("upstream"), "upstream", MAX_ALIASES)]
    summary = record.get("summary")
    if summary is not None and not isinstance(summary, str):
        raise MalformedRecord("bad_field", "summary must be a string")
    severity = _severity(record.get("severity"), [_dict(record.get("database_specific"), "database_specific")])
    affected = tuple(_affected(a, severity) for a in _list(record.get("affected"), "affected", MAX_AFFECTED))
    return Advisory(
        id=advisory_id,
        modified_ns=parse_time(record.get("modified"), "modified", required=True),
        aliases=tuple(dict.fromkeys(a for a in aliases if a != advisory_id)),
        summary=(summary or "")[:MAX_SUMMARY],
        published_ns=parse_time(record.get("published"), "published", required=False),
        withdrawn_ns=parse_time(record.get("withdrawn"), "withdrawn", required=False),
        severity=severity or Severity(),
        affected=affected,
    )


def parse_bytes(data: bytes) -> Advisory:
    """Decode and parse one JSON record; raises MalformedRecord (never a decoder error)."""
    if len(data) > MAX_RECORD_BYTES:
        raise MalformedRecord("too_large", f"record over {MAX_RECORD_BYTES} bytes")
    try:
        raw = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        raise MalformedRecord("bad_json") from None
    return parse_record(raw)
