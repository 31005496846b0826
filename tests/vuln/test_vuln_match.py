"""Matching inventories against advisories: exactly the expected findings, unknowns, ranking, exposure."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from heron.platform.api.vulns import FindingQuery, build_findings
from heron.platform.packages import PackageStore
from heron.platform.server import open_data_dir
from heron.schema.events import NetListen, Package, PackageActivity, PackageInventory, PackageUse, ProcessRef
from heron.vuln import osv
from heron.vuln.db import AdvisoryDB
from heron.vuln.match import evaluate, match_packages
from vulnfixtures import EXPECTED, advisory, packages, write_advisories

DAY = 86_400 * 10**9


@pytest.fixture
def db(tmp_path: Path) -> AdvisoryDB:
    adb = AdvisoryDB(tmp_path / "vulndb.sqlite")
    stats = adb.import_paths([write_advisories(tmp_path / "osv") and tmp_path / "osv"])
    assert stats.malformed == {} and stats.added == 11
    return adb


def test_exactly_the_expected_findings(db: AdvisoryDB) -> None:
    pkgs = packages()
    matches, stats = match_packages(pkgs, db)
    got = {(m.advisory.id, pkgs[m.package_index].name): (m.status, m.fixed_version) for m in matches}
    assert got == EXPECTED
    assert stats.unknown == 1 and stats.unknown_reasons == {"unparseable_installed_version": 1}
    assert stats.affected == 5
    bash = next(m for m in matches if m.advisory.id == "BASH-VERS")
    assert (bash.matched_name, bash.matched_version) == ("bash", "5.2.15-2")  # the source version
    ssl = next(m for m in matches if m.advisory.id == "DSA-NEW")
    assert ssl.matched_name == "openssl" and ssl.severity.score == 7.5


def _affected(ecosystem: str, events: list[dict[str, str]] | None = None, versions: list[str] | None = None,
              range_type: str = "ECOSYSTEM") -> osv.Affected:
    return osv.parse_record(advisory("X", ecosystem, "p", events, versions, range_type=range_type)).affected[0]


@pytest.mark.parametrize(("ecosystem", "events", "version", "status", "fixed"), [
    ("PyPI", [{"introduced": "1.0"}, {"fixed": "1.5"}, {"introduced": "2.0"}, {"fixed": "2.3"}], "1.7",
     "not_affected", None),
    ("PyPI", [{"introduced": "1.0"}, {"fixed": "1.5"}, {"introduced": "2.0"}, {"fixed": "2.3"}], "2.1",
     "affected", "2.3"),
    ("PyPI", [{"introduced": "2.0"}, {"fixed": "2.3"}, {"introduced": "1.0"}, {"fixed": "1.5"}], "1.2",
     "affected", "1.5"),  # events out of order are sorted first
    ("PyPI", [{"introduced": "1.0"}, {"fixed": "1.5"}], "0.9", "not_affected", None),
    ("PyPI", [{"introduced": "1.0"}, {"fixed": "1.5"}], "1.5", "not_affected", None),
    ("PyPI", [{"introduced": "1.0"}, {"fixed": "1.5"}], "1.5rc1", "affected", "1.5"),
    ("PyPI", [{"introduced": "0"}, {"last_affected": "1.4"}], "1.4", "affected", None),
    ("PyPI", [{"introduced": "0"}, {"last_affected": "1.4"}], "1.4.post1", "not_affected", None),
    ("npm", [{"introduced": "0"}, {"limit": "2.0.0"}], "1.9.9", "affected", None),
    ("npm", [{"introduced": "0"}, {"limit": "2.0.0"}], "2.0.0", "not_affected", None),
    ("Alpine:v3.20", [{"introduced": "0"}, {"fixed": "3.1.4-r1"}], "3.1.4-r0", "affected", "3.1.4-r1"),
    ("Alpine:v3.20", [{"introduced": "0"}, {"fixed": "3.1.4-r1"}], "3.1.4_rc1-r5", "affected", "3.1.4-r1"),
    ("Rocky Linux:9", [{"introduced": "0"}, {"fixed": "3.0.7-25.el9_3"}], "1:3.0.7-24.el9", "not_affected", None),
    ("Rocky Linux:9", [{"introduced": "0"}, {"fixed": "1:3.0.7-25.el9_3"}], "1:3.0.7-24.el9", "affected",
     "1:3.0.7-25.el9_3"),
    ("Maven", [{"introduced": "0"}, {"fixed": "2.17.1"}], "2.14.0", "unknown", None),  # no ordering here
    ("Maven", [{"introduced": "0"}], "2.14.0", "affected", None),  # every version: no ordering needed
    ("PyPI", [{"introduced": "0"}, {"fixed": "not a version!"}], "1.0", "unknown", None),
])
def test_range_evaluation(ecosystem: str, events: list[dict[str, str]], version: str, status: str,
                          fixed: str | None) -> None:
    verdict = evaluate(_affected(ecosystem, events), ecosystem, version)
    assert (verdict.status, verdict.fixed_version) == (status, fixed)


def test_versions_lists_match_exact_or_equivalent_versions() -> None:
    assert evaluate(_affected("Maven", versions=["2.14.0"]), "Maven", "2.14.0").status == "affected"
    assert evaluate(_affected("Maven", versions=["2.14.0"]), "Maven", "2.14.1").status == "not_affected"
    assert evaluate(_affected("PyPI", versions=["1.0"]), "PyPI", "1.0.0").status == "affected"  # PEP 440 equal
    assert evaluate(_affected("PyPI", versions=[]), "PyPI", "1.0").status == "unknown"  # says nothing: unknown


# -- ranking and exposure, through the platform's package store -----------------------------------
@pytest.fixture
def store(tmp_path: Path) -> Iterator[PackageStore]:
    storage, _ = open_data_dir(tmp_path / "platform")
    yield PackageStore(storage.db)
    storage.close()


def _ref(pid: int) -> ProcessRef:
    return ProcessRef(key=f"01234567-{pid}-{pid * 10}", pid=pid, exe=f"/usr/sbin/d{pid}")


def _load(store: PackageStore, now: int, listen_addr: str) -> None:
    pkgs = {p.name: p for p in packages()}
    store.apply("agent-1", [
        PackageInventory(ts=now - 3 * DAY, scope="host", distro="debian:12", full=True, added=list(pkgs.values())),
        # libssl3 used by a daemon that listens; Jinja2 by an app on loopback only
        PackageActivity(ts=now - 2 * DAY, scope="host", full=True, active=[
            PackageUse(purl=pkgs["libssl3"].purl, processes=[_ref(100)], last_used_ts=now - 2 * DAY),
            PackageUse(purl=pkgs["Jinja2"].purl, processes=[_ref(200)], last_used_ts=now - 2 * DAY),
            PackageUse(purl=pkgs["lodash"].purl, processes=[_ref(300)], last_used_ts=now - 2 * DAY)]),
        PackageActivity(ts=now - DAY, scope="host", inactive=[pkgs["lodash"].purl]),  # used a day ago
        NetListen(ts=now - DAY, process=_ref(100), protocol="tcp", addr=listen_addr, port=443),
        NetListen(ts=now - DAY, process=_ref(200), protocol="tcp", addr="127.0.0.1", port=8000),
    ])


def test_ranking_active_first_and_exposure_boost(db: AdvisoryDB, store: PackageStore) -> None:
    now = time.time_ns()
    _load(store, now, "0.0.0.0")
    body = build_findings(store, db, FindingQuery(limit=100), now_ns=now)
    findings = body["findings"]
    assert isinstance(findings, list)
    order = [(f["id"], f["activity"], f["exposed"]) for f in findings]
    assert order == [
        ("DSA-NEW", "active", True),       # 7.5 x 2 x 1.5 (exposed) x 1.2 (fixable) = 27
        ("GHSA-JINJA", "active", False),   # medium 5.5 x 2 x 1.2 = 13.2 (loopback listener: not exposed)
        ("GHSA-LODASH", "recent", False),  # 7.5 x 1.5 x 1.2 = 13.5, but recent ranks below active
        ("CURL-LAST", "dormant", False),   # 5.3
        ("WEIRD-RANGE", "dormant", False),  # unknown severity 5 x 0.8 (unknown) = 4
        ("BASH-VERS", "dormant", False),   # Debian urgency low: 3
    ]
    scores = {f["id"]: f["score"] for f in findings}
    assert scores == {"DSA-NEW": 27.0, "GHSA-JINJA": 13.2, "GHSA-LODASH": 13.5, "CURL-LAST": 5.3,
                      "WEIRD-RANGE": 4.0, "BASH-VERS": 3.0}
    top = findings[0]
    assert top["exposures"] == ["0.0.0.0:443/tcp"] and top["fixed_version"] == "3.0.13-1~deb12u1"
    assert top["ecosystem"] == "Debian:12" and top["source_name"] == "openssl" and top["fixable"] is True
    weird = next(f for f in findings if f["id"] == "WEIRD-RANGE")
    assert weird["status"] == "unknown" and weird["unknown_reason"] == "unparseable_installed_version"
    json.dumps(body)  # the API body serialises


def test_no_exposure_without_a_public_listener(db: AdvisoryDB, store: PackageStore) -> None:
    now = time.time_ns()
    _load(store, now, "127.0.0.5")
    findings = build_findings(store, db, FindingQuery(), now_ns=now)["findings"]
    assert isinstance(findings, list)
    assert findings[0]["id"] == "DSA-NEW" and findings[0]["exposed"] is False and findings[0]["score"] == 18.0


def test_filters(db: AdvisoryDB, store: PackageStore) -> None:
    now = time.time_ns()
    _load(store, now, "::")
    def ids(**kw: object) -> list[object]:
        found = build_findings(store, db, FindingQuery(**kw), now_ns=now)["findings"]  # type: ignore[arg-type]
        assert isinstance(found, list)
        return [f["id"] for f in found]
    assert ids(active=True) == ["DSA-NEW", "GHSA-JINJA"]
    assert ids(severities=frozenset({"medium"})) == ["GHSA-JINJA", "CURL-LAST"]
    assert ids(status="unknown") == ["WEIRD-RANGE"]
    assert ids(limit=2) == ["DSA-NEW", "GHSA-JINJA"]
    assert ids(host="elsewhere") == []
    assert ids(recent_days=0.5)[2:4] == ["GHSA-LODASH", "CURL-LAST"]  # lodash now dormant: 7.5 x 1.2 = 9


def test_matching_a_thousand_packages_is_fast(tmp_path: Path) -> None:
    adb = AdvisoryDB(tmp_path / "v.sqlite")
    records = [json.dumps(advisory(f"GEN-{i}", "Debian:12", f"src{i % 1500}",
                                   [{"introduced": "0"}, {"fixed": f"1.{i % 20}-1"}], cvss=HIGH_VECTOR)).encode()
               for i in range(6000)]
    adb.import_records(records)
    pkgs = [Package(ecosystem="Debian", name=f"bin{i}", version=f"1.{i % 30}-1", manager="dpkg", distro="12",
                    source_name=f"src{i}", purl=f"pkg:deb/debian/bin{i}@1") for i in range(1000)]
    start = time.monotonic()
    matches, stats = match_packages(pkgs, adb)
    elapsed = time.monotonic() - start
    assert stats.candidates == 4000 and stats.affected == len(matches) == 680
    assert elapsed < 2.0, elapsed


HIGH_VECTOR = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H"


def test_rpm_source_version_takes_the_binary_epoch(tmp_path: Path) -> None:
    adb = AdvisoryDB(tmp_path / "v.sqlite")
    adb.import_records([json.dumps(advisory("RLSA-1", "Rocky Linux:9", "openssl",
                                            [{"introduced": "0"}, {"fixed": "1:3.0.7-25.el9_3"}])).encode()])
    def installed(version: str) -> Package:
        return Package(ecosystem="Rocky Linux", name="openssl-libs", version=version, manager="rpm", distro="9",
                       source_name="openssl", source_version=version.split(":")[-1], purl="pkg:rpm/rocky/openssl-libs")
    matches, _ = match_packages([installed("1:3.0.7-24.el9"), installed("1:3.0.7-25.el9_3")], adb)
    assert [(m.package_index, m.matched_version, m.fixed_version) for m in matches] == [
        (0, "1:3.0.7-24.el9", "1:3.0.7-25.el9_3")]


@pytest.mark.parametrize(("os_release", "ecosystem", "distro", "key"), [
    ('ID=wolfi\nVERSION_ID="20230201"\n', "Wolfi", "", "Wolfi"),
    ('ID=chainguard\nVERSION_ID="20230214"\n', "Chainguard", "", "Chainguard"),
    ('ID=debian\nVERSION_CODENAME=trixie\n', "Debian", "trixie", "Debian:13"),  # testing: no VERSION_ID
    ('ID=debian\nVERSION_CODENAME=sid\n', "Debian", "sid", "Debian:sid"),
    ('ID="opensuse-leap"\nVERSION_ID="15.5"\n', "openSUSE", "Leap 15.5", "openSUSE:Leap 15.5"),
    ('ID="opensuse-tumbleweed"\nVERSION_ID="20240101"\n', "openSUSE", "Tumbleweed", "openSUSE:Tumbleweed"),
    ('ID="sles"\nVERSION_ID="15.5"\n', "SUSE", "Linux Enterprise Server 15 SP5",
     "SUSE:Linux Enterprise Server 15 SP5"),
])
def test_distribution_keys_meet_osv_keys(tmp_path: Path, os_release: str, ecosystem: str, distro: str,
                                         key: str) -> None:
    from heron.agent.packages import os_info
    from heron.agent.packages.rootfs import RootFS
    from heron.vuln.ecosystems import ecosystem_key, package_key
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text(os_release)
    with RootFS(str(tmp_path)) as fs:
        info = os_info(fs)
    assert (info.ecosystem, info.distro) == (ecosystem, distro)
    manager = "apk" if ecosystem in ("Wolfi", "Chainguard") else "rpm" if "SUSE" in ecosystem else "dpkg"
    assert package_key(info.ecosystem, info.distro, manager) == key
    if key != "Debian:sid":
        assert ecosystem_key(key) == key
    # an older agent that still reports Wolfi's VERSION_ID meets the advisories too
    assert package_key("Wolfi", "20230201", "apk") == ecosystem_key("Wolfi") == "Wolfi"


def test_ecosystems_without_advisories_are_reported_uncovered(db: AdvisoryDB) -> None:
    trixie = [Package(ecosystem="Debian", name=f"p{i}", version="1.0-1", manager="dpkg", distro="13", purl=f"p{i}")
              for i in range(3)]
    wolfi = Package(ecosystem="Wolfi", name="openssl", version="3.3.0-r0", manager="apk", distro="", purl="w")
    _, stats = match_packages([*packages(), *trixie, wolfi], db)
    assert stats.uncovered == {"Debian:13": 3, "Wolfi": 1}  # Debian:12, PyPI, npm have advisories
    assert stats.as_dict()["uncovered"] == {"Debian:13": 3, "Wolfi": 1}
    _, stats = match_packages(packages(), db)
    assert stats.uncovered == {}


def test_rpm_is_looked_up_by_binary_and_source_name(tmp_path: Path) -> None:
    adb = AdvisoryDB(tmp_path / "rpm.sqlite")
    intro0 = {"introduced": "0"}
    records = [
        # written per binary package (as Red Hat / AlmaLinux do) and per source package, one id across both
        advisory("RLSA-BIN", "Rocky Linux:9", "openssl-libs", [intro0, {"fixed": "1:3.0.7-28.el9"}]),
        advisory("RLSA-BOTH", "Rocky Linux:9", "openssl", [intro0, {"fixed": "1:3.0.7-29.el9"}]),
        advisory("RLSA-OLD", "Rocky Linux:9", "openssl-libs", [intro0, {"fixed": "1:3.0.7-20.el9"}]),
    ]
    both = advisory("RLSA-BOTH", "Rocky Linux:9", "openssl-libs", [intro0, {"fixed": "1:3.0.7-29.el9"}])
    records[1]["affected"].append(both["affected"][0])
    (tmp_path / "osv").mkdir()
    for r in records:
        (tmp_path / "osv" / f"{r['id']}.json").write_text(json.dumps(r))
    adb.import_paths([tmp_path / "osv"])
    ssl = Package(ecosystem="Rocky Linux", name="openssl-libs", version="1:3.0.7-27.el9", manager="rpm", distro="9",
                  source_name="openssl", source_version="3.0.7-27.el9", purl="pkg:rpm/rocky/openssl-libs")
    matches, stats = match_packages([ssl], adb)
    got = {m.advisory.id: (m.status, m.fixed_version, m.matched_name) for m in matches}
    assert got == {"RLSA-BIN": ("affected", "1:3.0.7-28.el9", "openssl-libs"),
                   "RLSA-BOTH": ("affected", "1:3.0.7-29.el9", "openssl")}
    assert stats.affected == 2 and stats.uncovered == {}
