"""``heron vulndb import|update`` and ``heron vulns``: what the CLI runs (main.py only parses).

``vulndb`` writes the advisory store of a local platform (``<data dir>/platform/vulndb.sqlite``,
read by the running platform at each query). ``update`` downloads osv.dev's per-ecosystem
``all.zip`` (``<base URL>/<ecosystem>/all.zip``) for the ecosystems of the inventories the
platform has seen (or those given), then imports it; a download that fails says which URL and
why. ``heron vulns`` asks a platform's API, like ``heron events``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from heron.vuln.db import AdvisoryDB, ImportStats, VulnDbError, vulndb_path

OSV_BASE_URL = "https://osv-vulnerabilities.storage.googleapis.com"
MAX_DOWNLOAD_BYTES = 4 << 30  # osv.dev's largest per-ecosystem zip is far below this


class UpdateError(Exception):
    """A download failed; the message names the URL and the reason."""


def platform_dir(data_dir: Path | str) -> Path:
    return Path(data_dir) / "platform"


def _open_db(data_dir: Path | str) -> AdvisoryDB:
    pdir = platform_dir(data_dir)
    if not pdir.exists():
        pdir.mkdir(parents=True, mode=0o700)
    return AdvisoryDB(vulndb_path(pdir))


def _report(stats: ImportStats, what: str, out: TextIO) -> None:
    malformed = sum(stats.malformed.values())
    reasons = ", ".join(f"{k}={v}" for k, v in sorted(stats.malformed.items()))
    out.write(f"{what}: {stats.records} records in {stats.files} files: {stats.added} added, {stats.updated} updated, "
              f"{stats.unchanged} unchanged, {malformed} malformed{f' ({reasons})' if reasons else ''} "
              f"in {stats.seconds:.1f} s\n")


def import_command(paths: Sequence[str], data_dir: Path | str, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        db = _open_db(data_dir)
        stats = db.import_paths(paths)
    except (VulnDbError, OSError) as e:
        print(f"heron: {e}", file=sys.stderr)
        return 1
    _report(stats, "imported", out)
    counts = db.counts()
    out.write(f"advisory store {db.path}: {counts['advisories']} advisories, {counts['affected']} packages\n")
    return 0


def ecosystem_url(ecosystem: str, base_url: str = OSV_BASE_URL) -> str:
    return f"{base_url.rstrip('/')}/{urllib.parse.quote(ecosystem, safe='')}/all.zip"


def download(url: str, dest: Path, timeout: float = 60.0) -> None:
    """Fetch ``url`` into ``dest``; raises UpdateError naming the URL and the reason."""
    if not url.startswith(("https://", "http://")):
        raise UpdateError(f"cannot download {url}: not an http(s) URL")
    request = urllib.request.Request(url, headers={"User-Agent": "heron-vulndb"})  # noqa: S310 (scheme checked)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as f:  # noqa: S310
            copied = 0
            while chunk := response.read(1 << 20):
                copied += len(chunk)
                if copied > MAX_DOWNLOAD_BYTES:
                    raise UpdateError(f"cannot download {url}: larger than {MAX_DOWNLOAD_BYTES} bytes")
                f.write(chunk)
    except urllib.error.HTTPError as e:
        raise UpdateError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise UpdateError(f"cannot download {url}: {e.reason}") from None
    except (OSError, ValueError) as e:  # timeouts, resets, bad URLs
        raise UpdateError(f"cannot download {url}: {e}") from None


def inventory_ecosystems(data_dir: Path | str) -> list[str]:
    """OSV ecosystems (base names, as osv.dev's bucket is laid out) of the packages the local
    platform has inventoried."""
    from heron.platform.packages import PackageStore
    from heron.platform.server import DB_FILE
    from heron.platform.storage.db import Database

    db_file = platform_dir(data_dir) / DB_FILE
    if not db_file.exists():
        return []
    db = Database(str(db_file))
    try:
        return sorted({eco for eco, _, _ in PackageStore(db).ecosystems()})
    finally:
        db.close()


def update_command(ecosystems: Sequence[str], data_dir: Path | str, base_url: str = OSV_BASE_URL,
                   out: TextIO | None = None, timeout: float = 60.0) -> int:
    out = out or sys.stdout
    wanted = list(dict.fromkeys(ecosystems)) or inventory_ecosystems(data_dir)
    if not wanted:
        print("heron: no ecosystem to update: no inventory seen yet; pass --ecosystem (e.g. Debian, PyPI, npm)",
              file=sys.stderr)
        return 1
    try:
        db = _open_db(data_dir)
    except (VulnDbError, OSError) as e:
        print(f"heron: {e}", file=sys.stderr)
        return 1
    failed = 0
    for ecosystem in wanted:
        url = ecosystem_url(ecosystem, base_url)
        fd, tmp = tempfile.mkstemp(prefix=".osv-", suffix=".zip", dir=db.path.parent)
        os.close(fd)
        try:
            download(url, Path(tmp), timeout)
            stats = db.import_paths([tmp])
        except (UpdateError, VulnDbError) as e:
            print(f"heron: {e}", file=sys.stderr)
            failed += 1
            continue
        finally:
            Path(tmp).unlink(missing_ok=True)
        _report(stats, f"{ecosystem} ({url})", out)
    return 1 if failed else 0


# -- heron vulns ---------------------------------------------------------------------------------
def _when(ts: object) -> str:
    return datetime.fromtimestamp(ts / 1e9).strftime("%Y-%m-%d %H:%M") if isinstance(ts, int) else "-"


def format_finding(f: dict[str, Any]) -> str:
    from heron.platform.client import printable

    activity = str(f.get("activity") or ("active" if f.get("active") else "dormant"))
    flags = [activity.upper() if activity == "active" else activity]
    if f.get("exposed"):
        flags.append("EXPOSED " + ",".join(str(x) for x in f.get("exposures") or []))
    if f.get("status") == "unknown":
        flags.append(f"unknown ({f.get('unknown_reason') or '?'})")
    fix = f"fixed in {f['fixed_version']}" if f.get("fixed_version") else "no fix"
    cvss = f" cvss {f['cvss']}" if f.get("cvss") is not None else ""
    aliases = f" ({', '.join(str(a) for a in (f.get('aliases') or [])[:3])})" if f.get("aliases") else ""
    where = f"{f.get('host') or '-'}/{f.get('scope') or '-'}"
    line = (f"{f.get('score', 0):>6} {f.get('severity')!s:<10} {f.get('id')}{aliases} {f.get('package')} "
            f"{f.get('version')} [{f.get('ecosystem')}]{cvss} {fix} {where} {' '.join(flags)}")
    if activity != "active" and f.get("last_used_ts"):
        line += f" last used {_when(f['last_used_ts'])}"
    return printable(line)


def vulns_command(base_url: str, token: str, as_json: bool, out: TextIO, host: str | None = None,
                  limit: int = 100, filters: dict[str, str] | None = None) -> int:
    from heron.platform.client import PlatformError, _get

    params: dict[str, object] = {"host": host, "limit": limit, **(filters or {})}
    try:
        body = _get(base_url, "/api/v1/vulns", token, params, 60.0)
    except PlatformError as e:
        print(f"heron: {e}", file=sys.stderr)
        return 1
    findings: list[dict[str, Any]] = body.get("findings") or []
    # Packages of an ecosystem with no advisory imported were not checked: say so, never "no findings".
    uncovered = body.get("uncovered") or {}
    warnings = [f"warning: no advisories imported for {key} ({n} packages): not checked"
                for key, n in sorted(uncovered.items()) if isinstance(n, int)] if isinstance(uncovered, dict) else []
    if as_json:
        for f in findings:
            out.write(json.dumps(f, ensure_ascii=True) + "\n")
        for w in warnings:  # stdout stays JSON lines
            print(f"heron: {w}", file=sys.stderr)
        return 0
    for w in warnings:
        out.write(w + "\n")
    if body.get("note"):
        out.write(f"{body['note']}\n")
    for f in findings:
        out.write(format_finding(f) + "\n")
    stats = body.get("stats") or {}
    out.write(f"{len(findings)} of {body.get('total', 0)} findings; {body.get('advisories', 0)} advisories, "
              f"{stats.get('packages', 0)} packages, {stats.get('unknown', 0)} unknown\n")
    return 0
