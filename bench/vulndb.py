#!/usr/bin/env python3
"""Advisory store benchmark: import N generated OSV records, import them again, match packages.

    .venv/bin/python bench/vulndb.py [--advisories 100000] [--packages 1000]

Records are spread over Debian:12, Alpine:v3.20, PyPI and npm, each with a CVSS v3 vector, one
ECOSYSTEM range and a 10-version list (osv.dev's records are of this size or smaller, Debian's
DEBIAN-CVE records often larger). Reports the first import (parse + validate + store), the
re-import (all unchanged: the idempotency check), the file size, and matching ``--packages``
Debian packages (lookup + evaluation) against the store, cold then warm (version caches).
Results go to stdout and /tmp/heron-bench/vulndb.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from heron.schema.events import Package
from heron.vuln.db import AdvisoryDB
from heron.vuln.match import match_packages

ECOSYSTEMS = ("Debian:12", "Alpine:v3.20", "PyPI", "npm")
VERSION = {"Debian:12": "{}.{}-1", "Alpine:v3.20": "{}.{}-r0", "PyPI": "{}.{}", "npm": "{}.{}.0"}


def record(i: int, names: int) -> bytes:
    eco = ECOSYSTEMS[i % len(ECOSYSTEMS)]
    fmt = VERSION[eco]
    return json.dumps({
        "id": f"BENCH-{i}", "modified": "2026-01-01T00:00:00Z", "aliases": [f"CVE-2026-{i}"],
        "summary": f"generated advisory {i}",
        "severity": [{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}],
        "affected": [{"package": {"ecosystem": eco, "name": f"src{i % names}"},
                      "ranges": [{"type": "ECOSYSTEM", "events": [{"introduced": "0"},
                                                                  {"fixed": fmt.format(1, i % 50)}]}],
                      "versions": [fmt.format(1, k) for k in range(10)]}],
    }).encode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--advisories", type=int, default=100_000)
    ap.add_argument("--packages", type=int, default=1000)
    args = ap.parse_args()
    names = max(1, args.advisories // 20)  # about 5 advisories per package name and ecosystem
    records = [record(i, names) for i in range(args.advisories)]
    with tempfile.TemporaryDirectory() as tmp:
        db = AdvisoryDB(Path(tmp) / "vulndb.sqlite")
        first = db.import_records(records)
        again = db.import_records(records)
        size = sum(p.stat().st_size for p in Path(tmp).iterdir())
        pkgs = [Package(ecosystem="Debian", name=f"bin{i}", version=f"1.{i % 60}-1", manager="dpkg", distro="12",
                        source_name=f"src{i % names}", purl=f"pkg:deb/debian/bin{i}@1") for i in range(args.packages)]
        t = time.monotonic()
        matches, stats = match_packages(pkgs, db)
        cold = time.monotonic() - t
        t = time.monotonic()
        match_packages(pkgs, db)
        warm = time.monotonic() - t
    result = {
        "advisories": args.advisories, "import_s": round(first.seconds, 2),
        "import_per_s": round(args.advisories / first.seconds), "reimport_s": round(again.seconds, 2),
        "reimport_unchanged": again.unchanged, "store_mib": round(size / 2**20, 1), "packages": args.packages,
        "candidates": stats.candidates, "findings": len(matches), "match_cold_s": round(cold, 3),
        "match_warm_s": round(warm, 3),
    }
    for k, v in result.items():
        print(f"{k:>20}: {v}")
    out = Path("/tmp/heron-bench")
    out.mkdir(exist_ok=True)
    (out / "vulndb.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
