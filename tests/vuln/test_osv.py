"""OSV records: parsing, hostile input (skipped and counted, never a crash), severities, CVSS v3."""

from __future__ import annotations

import json
from typing import Any

import pytest

from heron.vuln import osv
from heron.vuln.cvss import label_for_score, v3_base_score


def record(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "DSA-5001-1", "modified": "2024-03-01T10:00:00Z", "published": "2024-02-01T00:00:00.123456789Z",
        "aliases": ["CVE-2024-0001"], "upstream": ["CVE-2024-0001", "CVE-2024-0002"], "summary": "a flaw",
        "affected": [{
            "package": {"ecosystem": "Debian:12", "name": "openssl", "purl": "pkg:deb/debian/openssl?arch=source"},
            "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": "3.0.11-1~deb12u2"}]},
                       {"type": "GIT", "repo": "https://example.invalid/x", "events": [{"introduced": "abc"}]}],
            "versions": ["3.0.9-1", "3.0.11-1~deb12u1"],
            "ecosystem_specific": {"urgency": "low*"},
        }],
    }
    base.update(overrides)
    return base


def test_parses_a_debian_record() -> None:
    adv = osv.parse_record(record())
    assert adv.id == "DSA-5001-1"
    assert adv.aliases == ("CVE-2024-0001", "CVE-2024-0002")  # upstream merged, duplicates once
    assert adv.modified_ns == 1709287200 * 10**9
    assert adv.published_ns == 1706745600 * 10**9 + 123456000
    (aff,) = adv.affected
    assert (aff.ecosystem, aff.name) == ("Debian:12", "openssl")
    assert len(aff.ranges) == 1  # the GIT range is dropped
    assert aff.ranges[0].events == (osv.RangeEvent("introduced", "0"), osv.RangeEvent("fixed", "3.0.11-1~deb12u2"))
    assert aff.versions == ("3.0.9-1", "3.0.11-1~deb12u1")
    assert aff.severity is not None and aff.severity.distro_label == "low"


def test_severity_from_cvss_v3_vector_and_labels() -> None:
    vector = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"
    adv = osv.parse_record(record(severity=[{"type": "CVSS_V3", "score": vector}]))
    assert (adv.severity.score, adv.severity.label, adv.severity.vector) == (9.8, "critical", vector)
    sev = adv.affected[0].severity  # the package's Debian urgency completes the record's CVSS
    assert sev is not None and (sev.score, sev.label, sev.distro_label) == (9.8, "critical", "low")
    ghsa = osv.parse_record(record(database_specific={"severity": "MODERATE"}))
    assert ghsa.severity.label == "medium" and ghsa.severity.score is None
    ubuntu = osv.parse_record(record(severity=[{"type": "Ubuntu", "score": "negligible"}]))
    assert ubuntu.severity.distro_label == "negligible"
    v4 = osv.parse_record(record(severity=[{"type": "CVSS_V4", "score": "CVSS:4.0/AV:N/AC:L/AT:N/PR:N/UI:N/VC:H/VI:H/"
                                                                           "VA:H/SC:N/SI:N/SA:N"}]))
    assert v4.severity.vector is not None and v4.severity.score is None and v4.severity.label == "unknown"


MALFORMED: list[tuple[str, object, str]] = [
    ("not an object", ["x"], "bad_field"),
    ("empty object", {}, "bad_field"),
    ("no id", {k: v for k, v in record().items() if k != "id"}, "bad_field"),
    ("id not a string", record(id=42), "bad_field"),
    ("no modified", {k: v for k, v in record().items() if k != "modified"}, "bad_field"),
    ("bad time", record(modified="yesterday"), "bad_time"),
    ("naive time", record(modified="2024-01-01T00:00:00"), "bad_time"),
    ("aliases not a list", record(aliases="CVE-1"), "bad_field"),
    ("alias not a string", record(aliases=[1]), "bad_field"),
    ("summary not a string", record(summary=["x"]), "bad_field"),
    ("affected not a list", record(affected={"package": {}}), "bad_field"),
    ("package missing", record(affected=[{"ranges": []}]), "bad_field"),
    ("package name missing", record(affected=[{"package": {"ecosystem": "PyPI"}}]), "bad_field"),
    ("ranges not a list", record(affected=[{"package": {"ecosystem": "PyPI", "name": "x"}, "ranges": "0"}]),
     "bad_field"),
    ("event with two keys", record(affected=[{"package": {"ecosystem": "PyPI", "name": "x"}, "ranges": [
        {"type": "ECOSYSTEM", "events": [{"introduced": "0", "fixed": "1"}]}]}]), "bad_range"),
    ("event not a string", record(affected=[{"package": {"ecosystem": "PyPI", "name": "x"}, "ranges": [
        {"type": "ECOSYSTEM", "events": [{"introduced": 0}]}]}]), "bad_field"),
    ("no introduced", record(affected=[{"package": {"ecosystem": "PyPI", "name": "x"}, "ranges": [
        {"type": "ECOSYSTEM", "events": [{"fixed": "1.0"}]}]}]), "bad_range"),
    ("fixed and last_affected", record(affected=[{"package": {"ecosystem": "PyPI", "name": "x"}, "ranges": [
        {"type": "SEMVER", "events": [{"introduced": "0"}, {"fixed": "1"}, {"last_affected": "2"}]}]}]),
     "bad_range"),
    ("unknown event", record(affected=[{"package": {"ecosystem": "PyPI", "name": "x"}, "ranges": [
        {"type": "SEMVER", "events": [{"introduced": "0"}, {"patched": "1"}]}]}]), "bad_range"),
    ("huge range", record(affected=[{"package": {"ecosystem": "PyPI", "name": "x"}, "ranges": [
        {"type": "ECOSYSTEM", "events": [{"introduced": str(i)} for i in range(osv.MAX_EVENTS + 1)]}]}]),
     "too_large"),
    ("huge versions", record(affected=[{"package": {"ecosystem": "PyPI", "name": "x"},
                                        "versions": ["1"] * (osv.MAX_VERSIONS + 1)}]), "too_large"),
    ("long version", record(affected=[{"package": {"ecosystem": "PyPI", "name": "x"}, "versions": ["1" * 300]}]),
     "too_large"),
    ("severity wrong type", record(severity=[{"type": "CVSS_V3", "score": 9.8}]), "bad_field"),
]


@pytest.mark.parametrize(("label", "raw", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_records_raise_with_a_reason(label: str, raw: object, reason: str) -> None:
    with pytest.raises(osv.MalformedRecord) as info:
        osv.parse_record(raw)
    assert info.value.reason == reason


@pytest.mark.parametrize(("data", "reason"), [
    (b"{not json", "bad_json"),
    (b"[" * 100_000 + b"]" * 100_000, "bad_json"),  # nesting beyond the decoder's recursion limit
    (b"\xff\xfe", "bad_json"),
    (b"{}" + b" " * osv.MAX_RECORD_BYTES, "too_large"),
    (b"null", "bad_field"),
])
def test_hostile_bytes(data: bytes, reason: str) -> None:
    with pytest.raises(osv.MalformedRecord) as info:
        osv.parse_bytes(data)
    assert info.value.reason == reason


def test_long_summary_is_cut_and_a_bad_vector_gives_no_score() -> None:
    adv = osv.parse_record(record(summary="x" * 10_000, severity=[{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N"}]))
    assert len(adv.summary) == osv.MAX_SUMMARY
    assert adv.severity.score is None and adv.severity.label == "unknown"


def test_round_trip_through_json_bytes() -> None:
    adv = osv.parse_bytes(json.dumps(record()).encode())
    assert adv.id == "DSA-5001-1"


# Known vectors and their base scores (NVD / FIRST calculator values).
CVSS_V3 = [
    ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", 9.8),
    ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:C/C:H/I:H/A:H", 10.0),
    ("CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:C/C:H/I:N/A:N", 6.8),   # the OSV schema's example vector
    ("CVSS:3.1/AV:L/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H", 7.8),
    ("CVSS:3.1/AV:N/AC:L/PR:N/UI:R/S:C/C:L/I:L/A:N", 6.1),
    ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H", 7.5),
    ("CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:L/I:N/A:N", 5.3),
    ("CVSS:3.1/AV:N/AC:L/PR:L/UI:N/S:U/C:H/I:H/A:H", 8.8),
    ("CVSS:3.1/AV:L/AC:H/PR:L/UI:N/S:U/C:H/I:H/A:H", 7.0),
    ("CVSS:3.1/AV:N/AC:H/PR:N/UI:N/S:U/C:H/I:N/A:N", 5.9),
    ("CVSS:3.1/AV:N/AC:L/PR:H/UI:N/S:U/C:H/I:H/A:H", 7.2),
    ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:L/I:L/A:N", 6.5),
    ("CVSS:3.1/AV:N/AC:L/PR:L/UI:N/S:C/C:L/I:L/A:N", 6.4),
    ("CVSS:3.1/AV:P/AC:H/PR:H/UI:R/S:U/C:N/I:N/A:N", 0.0),
    ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H/E:P/RL:O/RC:C", 9.8),  # temporal metrics ignored
]


@pytest.mark.parametrize(("vector", "score"), CVSS_V3)
def test_cvss_v3_base_scores(vector: str, score: float) -> None:
    assert v3_base_score(vector) == score


@pytest.mark.parametrize("vector", [
    "", "CVSS:2.0/AV:N", "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H",  # a base metric missing
    "CVSS:3.1/AV:X/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H", "CVSS:3.1/AV:N/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H",
    "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H/ZZ:1", "AV:N/AC:L/Au:N/C:P/I:P/A:P", "CVSS:3.1/" + "A" * 300,
])
def test_invalid_cvss_vectors(vector: str) -> None:
    assert v3_base_score(vector) is None


def test_labels() -> None:
    assert [label_for_score(s) for s in (9.0, 8.9, 7.0, 6.9, 4.0, 3.9, 0.1, 0.0)] == [
        "critical", "high", "high", "medium", "medium", "low", "low", "negligible"]
