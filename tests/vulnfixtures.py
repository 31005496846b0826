"""Shared fixtures of the vulnerability tests: OSV records, a Debian host's packages, events.

One Debian 12 host whose packages meet every matching rule once:

- libssl3 (source openssl 3.0.11-1~deb12u2): DSA-OLD's fix is a back-port at exactly this
  version (not vulnerable); DSA-NEW is fixed later (vulnerable, fixable); OSS-FUZZ-SSL (an
  upstream record) and DEB11-SSL (another Debian release) must not match.
- curl 7.88.1-10+deb12u5: CURL-LAST has last_affected at exactly this version (vulnerable, no
  fix); CURL-LATER is introduced after it (not vulnerable).
- bash 5.2.15-2+b2 (source bash 5.2.15-2: a binNMU): BASH-VERS lists the source version.
- weird "not-a-version": WEIRD-RANGE has a range: unknown, never "not vulnerable".
- PyPI Jinja2 3.1.2: GHSA-JINJA (name written jinja2) fixed in 3.1.3.
- npm lodash 4.17.20: GHSA-LODASH SEMVER fixed in 4.17.21; GHSA-LODASH-LIMIT's limit excludes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from heron.schema.events import Package

T0 = 1_780_000_000_000_000_000


def advisory(adv_id: str, ecosystem: str, name: str, events: list[dict[str, str]] | None = None,
             versions: list[str] | None = None, range_type: str = "ECOSYSTEM", modified: str = "2026-01-01T00:00:00Z",
             cvss: str | None = None, affected_extra: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    affected: dict[str, Any] = {"package": {"ecosystem": ecosystem, "name": name}, **(affected_extra or {})}
    if events is not None:
        affected["ranges"] = [{"type": range_type, "events": events}]
    if versions is not None:
        affected["versions"] = versions
    record: dict[str, Any] = {"id": adv_id, "modified": modified, "aliases": [f"CVE-{adv_id}"],
                              "summary": f"{adv_id} summary", "affected": [affected], **extra}
    if cvss:
        record["severity"] = [{"type": "CVSS_V3", "score": cvss}]
    return record


CRITICAL = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"  # 9.8
HIGH = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H"  # 7.5
MEDIUM = "CVSS:3.0/AV:N/AC:L/PR:N/UI:N/S:U/C:L/I:N/A:N"  # 5.3


def advisories() -> list[dict[str, Any]]:
    intro0 = {"introduced": "0"}
    return [
        advisory("DSA-OLD", "Debian:12", "openssl", [intro0, {"fixed": "3.0.11-1~deb12u2"}], cvss=CRITICAL),
        advisory("DSA-NEW", "Debian:12", "openssl", [intro0, {"fixed": "3.0.13-1~deb12u1"}], cvss=HIGH),
        advisory("OSS-FUZZ-SSL", "OSS-Fuzz", "openssl", [intro0], cvss=CRITICAL),
        advisory("DEB11-SSL", "Debian:11", "openssl", [intro0], cvss=CRITICAL),
        advisory("CURL-LAST", "Debian:12", "curl", [{"introduced": "7.80.0-1"}, {"last_affected": "7.88.1-10+deb12u5"}],
                 cvss=MEDIUM),
        advisory("CURL-LATER", "Debian:12", "curl",
                 [{"introduced": "7.88.1-10+deb12u6"}, {"fixed": "7.88.1-10+deb12u8"}], cvss=CRITICAL),
        advisory("BASH-VERS", "Debian:12", "bash", versions=["5.2.15-1", "5.2.15-2"],
                 affected_extra={"ecosystem_specific": {"urgency": "low"}}),
        advisory("WEIRD-RANGE", "Debian:12", "weird", [{"introduced": "1.0"}, {"fixed": "2.0"}]),
        advisory("GHSA-JINJA", "PyPI", "jinja2", [intro0, {"fixed": "3.1.3"}],
                 database_specific={"severity": "MODERATE"}),
        advisory("GHSA-LODASH", "npm", "lodash", [intro0, {"fixed": "4.17.21"}], range_type="SEMVER", cvss=HIGH),
        advisory("GHSA-LODASH-LIMIT", "npm", "lodash", [intro0, {"limit": "4.0.0"}], range_type="SEMVER", cvss=HIGH),
    ]


def write_advisories(directory: Path) -> list[dict[str, Any]]:
    directory.mkdir(parents=True, exist_ok=True)
    records = advisories()
    for r in records:
        (directory / f"{r['id']}.json").write_text(json.dumps(r))
    return records


def deb(name: str, version: str, source: str = "", source_version: str = "") -> Package:
    return Package(ecosystem="Debian", name=name, version=version, manager="dpkg", arch="amd64",
                   purl=f"pkg:deb/debian/{name}@{version}?arch=amd64&distro=debian-12",
                   source_name=source or name, source_version=source_version, distro="12")


def packages() -> list[Package]:
    return [
        deb("libssl3", "3.0.11-1~deb12u2", source="openssl"),
        deb("curl", "7.88.1-10+deb12u5"),
        deb("bash", "5.2.15-2+b2", source_version="5.2.15-2"),
        deb("weird", "not-a-version"),
        deb("coreutils", "9.1-1"),
        Package(ecosystem="PyPI", name="Jinja2", version="3.1.2", manager="python", purl="pkg:pypi/jinja2@3.1.2",
                location="/usr/lib/python3/dist-packages"),
        Package(ecosystem="npm", name="lodash", version="4.17.20", manager="npm", purl="pkg:npm/lodash@4.17.20",
                location="/srv/app/node_modules/lodash"),
    ]


# (advisory, package name) -> (status, fixed version) that matching must find, and nothing else.
EXPECTED = {
    ("DSA-NEW", "libssl3"): ("affected", "3.0.13-1~deb12u1"),
    ("CURL-LAST", "curl"): ("affected", None),
    ("BASH-VERS", "bash"): ("affected", None),
    ("WEIRD-RANGE", "weird"): ("unknown", None),
    ("GHSA-JINJA", "Jinja2"): ("affected", "3.1.3"),
    ("GHSA-LODASH", "lodash"): ("affected", "4.17.21"),
}
