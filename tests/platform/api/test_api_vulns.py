"""End to end through ingest: package events from an agent, advisories imported, GET /api/v1/vulns."""

from __future__ import annotations

import time
from typing import Any

import msgspec
import pytest
from platform_helpers import EnrolledAgent, Platform, batch_body, enroll, ingest

from heron.schema.events import NetListen, Package, PackageActivity, PackageInventory, PackageUse, ProcessRef
from heron.vuln.db import AdvisoryDB, vulndb_path
from vulnfixtures import EXPECTED, packages, write_advisories

BOTH_BACKENDS = True  # the platform fixture's tests run on SQLite and PostgreSQL (conftest.py)

DAY = 86_400 * 10**9


def _ref(pid: int) -> ProcessRef:
    return ProcessRef(key=f"01234567-{pid}-{pid * 10}", pid=pid, exe=f"/usr/sbin/d{pid}")


def _pkgs() -> dict[str, Package]:
    return {p.name: p for p in packages()}


def _events(now: int) -> list[Any]:
    pkgs = _pkgs()
    return [
        PackageInventory(ts=now - 3 * DAY, source="package.procfs", scope="host", distro="debian:12", full=True,
                         added=list(pkgs.values())),
        PackageActivity(ts=now - 2 * DAY, source="package.procfs", scope="host", full=True, active=[
            PackageUse(purl=pkgs["libssl3"].purl, processes=[_ref(100)], files=["/usr/lib/libssl.so.3"]),
            PackageUse(purl=pkgs["Jinja2"].purl, processes=[_ref(200)])]),
        NetListen(ts=now - DAY, source="network.snapshot", process=_ref(100), protocol="tcp", addr="0.0.0.0",
                  port=443),
    ]


def vulns(platform: Platform, **params: object) -> dict[str, Any]:
    r = platform.client.get("/api/v1/vulns", params=params, headers=platform.admin)  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _import(platform: Platform, tmp_dir: Any) -> None:
    write_advisories(tmp_dir / "osv")
    AdvisoryDB(vulndb_path(platform.data_dir)).import_paths([tmp_dir / "osv"])


def test_ingest_then_import_then_ranked_findings(platform: Platform, agent: EnrolledAgent, tmp_path: Any) -> None:
    now = time.time_ns()
    status, body = ingest(platform, agent, batch_body(_events(now)))
    assert status == 200 and body["accepted"] == 3
    empty = vulns(platform)
    assert empty["findings"] == [] and "vulndb" in empty["note"]
    _import(platform, tmp_path)
    result = vulns(platform)
    found = {(f["id"], f["package"]): (f["status"], f["fixed_version"]) for f in result["findings"]}
    assert found == EXPECTED
    first = result["findings"][0]
    assert (first["id"], first["active"], first["exposed"], first["host"], first["scope"]) == (
        "DSA-NEW", True, True, "web-1", "host")
    assert first["exposures"] == ["0.0.0.0:443/tcp"] and first["aliases"] == ["CVE-DSA-NEW"]
    assert first["purl"].startswith("pkg:deb/debian/libssl3@") and first["ecosystem"] == "Debian:12"
    assert [f["activity"] for f in result["findings"]][:2] == ["active", "active"]
    assert {f["activity"] for f in result["findings"][2:]} == {"dormant"}
    assert result["total"] == 6 and result["advisories"] == 11 and result["stats"]["unknown"] == 1
    # The package events are stored as events too, under their own type.
    r = platform.client.get("/api/v1/events", params={"type": "package.inventory"}, headers=platform.admin)
    assert [e["event"]["scope"] for e in r.json()["events"]] == ["host"]


def test_filters_and_validation(platform: Platform, agent: EnrolledAgent, tmp_path: Any) -> None:
    ingest(platform, agent, batch_body(_events(time.time_ns())))
    other = enroll(platform, "db-1")
    ingest(platform, other, batch_body([PackageInventory(ts=time.time_ns(), scope="host", full=True,
                                                         added=[_pkgs()["lodash"]])]))
    _import(platform, tmp_path)
    assert {f["host"] for f in vulns(platform)["findings"]} == {"web-1", "db-1"}
    assert [f["id"] for f in vulns(platform, host="db-1")["findings"]] == ["GHSA-LODASH"]
    assert [f["id"] for f in vulns(platform, active="true")["findings"]] == ["DSA-NEW", "GHSA-JINJA"]
    high_dormant = vulns(platform, severity="high", active="false")["findings"]
    assert sorted((f["id"], f["host"]) for f in high_dormant) == [("GHSA-LODASH", "db-1"), ("GHSA-LODASH", "web-1")]
    assert len(vulns(platform, limit=1)["findings"]) == 1
    for bad in ({"severity": "urgent"}, {"active": "maybe"}, {"limit": "-1"}, {"status": "x"},
                {"recent_days": "nan"}, {"host": "x" * 300}):
        r = platform.client.get("/api/v1/vulns", params=bad, headers=platform.admin)
        assert r.status_code == 400, (bad, r.text)
    assert platform.client.get("/api/v1/vulns").status_code == 401
    assert platform.client.get("/api/v1/vulns", headers=platform.auth(other.token)).status_code == 403


def test_retries_and_diffs_are_idempotent(platform: Platform, agent: EnrolledAgent, tmp_path: Any) -> None:
    now = time.time_ns()
    _import(platform, tmp_path)
    events = _events(now)
    ingest(platform, agent, batch_body(events))
    before = vulns(platform)["findings"]
    # The same events again under a new batch id (a retry after the platform crashed mid-batch).
    ingest(platform, agent, batch_body(events))
    assert vulns(platform)["findings"] == before
    # A diff removes curl; a late retry of the older complete inventory must not bring it back.
    removal = PackageInventory(ts=now - DAY, scope="host", removed=[_pkgs()["curl"]])
    ingest(platform, agent, batch_body([removal]))
    ingest(platform, agent, batch_body([events[0]]))
    assert "CURL-LAST" not in {f["id"] for f in vulns(platform)["findings"]}
    # An upgrade: the fixed libssl3 replaces the vulnerable one.
    fixed = msgspec.structs.replace(_pkgs()["libssl3"], version="3.0.13-1~deb12u1",
                                    purl="pkg:deb/debian/libssl3@3.0.13-1~deb12u1?arch=amd64&distro=debian-12")
    ingest(platform, agent, batch_body([PackageInventory(ts=now, scope="host", added=[fixed],
                                                         removed=[_pkgs()["libssl3"]])]))
    assert "DSA-NEW" not in {f["id"] for f in vulns(platform)["findings"]}


def test_full_inventory_keeps_packages_of_an_unreadable_database(platform: Platform, agent: EnrolledAgent,
                                                                  tmp_path: Any) -> None:
    now = time.time_ns()
    _import(platform, tmp_path)
    ingest(platform, agent, batch_body(_events(now)))
    languages_only = [p for p in packages() if p.manager != "dpkg"]
    ingest(platform, agent, batch_body([PackageInventory(
        ts=now, scope="host", full=True, added=languages_only, errors=["dpkg: status file truncated"])]))
    assert "DSA-NEW" in {f["id"] for f in vulns(platform)["findings"]}  # dpkg packages kept
    ingest(platform, agent, batch_body([PackageInventory(ts=now + 1, scope="host", full=True,
                                                         added=languages_only)]))
    assert {f["id"] for f in vulns(platform)["findings"]} == {"GHSA-JINJA", "GHSA-LODASH"}


def test_packages_endpoint(platform: Platform, agent: EnrolledAgent) -> None:
    ingest(platform, agent, batch_body(_events(time.time_ns())))
    r = platform.client.get("/api/v1/packages", headers=platform.admin)
    assert r.status_code == 200
    body = r.json()
    assert body["total"] == len(packages())
    active = {p["name"]: p for p in body["packages"] if p["active"]}
    assert set(active) == {"libssl3", "Jinja2"}
    assert active["libssl3"]["processes"][0]["pid"] == 100 and active["libssl3"]["files"] == ["/usr/lib/libssl.so.3"]
    r = platform.client.get("/api/v1/packages", params={"active": "false", "q": "CURL"}, headers=platform.admin)
    assert [p["name"] for p in r.json()["packages"]] == ["curl"]


@pytest.mark.parametrize("path", ["/api/v1/vulns", "/api/v1/packages"])
def test_openapi_documents_the_routes(platform: Platform, path: str) -> None:
    doc = platform.client.get("/api/v1/openapi.json").json()
    assert "get" in doc["paths"][path]


def test_out_of_range_timestamp_changes_nothing(platform: Platform, agent: EnrolledAgent) -> None:
    bad = PackageInventory(ts=2**63, scope="host", full=True, added=packages())
    status, body = ingest(platform, agent, batch_body([bad]))
    assert status == 400 and "out of range" in str(body["error"])
    r = platform.client.get("/api/v1/packages", headers=platform.admin)
    assert r.json()["total"] == 0


def test_uncovered_ecosystems_are_reported(platform: Platform, agent: EnrolledAgent, tmp_path: Any) -> None:
    """A distribution with no advisory imported is never a silent "no findings"."""
    trixie = Package(ecosystem="Debian", name="zlib1g", version="1:1.3.dfsg-3", manager="dpkg", distro="13",
                     purl="pkg:deb/debian/zlib1g@1:1.3.dfsg-3?distro=debian-13")
    ingest(platform, agent, batch_body([PackageInventory(ts=time.time_ns(), scope="host", full=True,
                                                         added=[*_pkgs().values(), trixie])]))
    _import(platform, tmp_path)
    result = vulns(platform)
    assert result["uncovered"] == {"Debian:13": 1}
    assert result["stats"]["uncovered"] == {"Debian:13": 1}


def test_package_update_overflow_is_counted(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    from heron.platform import packages as store
    from heron.platform.server import open_data_dir
    storage, _ = open_data_dir(tmp_path / "platform")
    storage.close()
    before = store.overflow_batches
    huge = PackageInventory(ts=2**70, scope="host", full=True, added=[_pkgs()["curl"]])
    assert store.ingest(storage.db, "agent-1", [huge]) == 0
    assert store.overflow_batches == before + 1
    assert "not applied" in caplog.text
