"""GET /api/v1/vulns (ranked findings) and GET /api/v1/packages (inventories with activity).

Findings are computed per request: the installed packages (heron.platform.packages) are matched
against the advisory store (``vulndb.sqlite`` beside the platform database, filled by
``heron vulndb import|update``), then scored and ranked (heron.vuln.risk): active first. A
finding is one (advisory, installed package, agent, scope); ``status`` is ``affected`` or
``unknown`` (the version could not be ordered: shown, never dropped). Filters: ``host``,
``agent``, ``severity`` (labels, comma-separated), ``active`` (true: in use now; false: not),
``status``, ``recent_days`` (the "was active" window), ``limit``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from heron.platform.api.auth import QUERY_ROLES, authenticate
from heron.platform.api.context import ApiError, context
from heron.platform.packages import InstalledPackage, Listener, PackageStore
from heron.vuln.db import AdvisoryDB, vulndb_path
from heron.vuln.match import Match, match_packages
from heron.vuln.risk import LABEL_ORDER, RiskPolicy, base_score, rank_key, risk_score

MAX_LIMIT = 10_000
DEFAULT_LIMIT = 100
_MAX_PARAM = 256
_encoder = msgspec.json.Encoder()


@dataclass(frozen=True)
class FindingQuery:
    host: str | None = None
    agent: str | None = None
    severities: frozenset[str] = frozenset()
    active: bool | None = None
    status: str | None = None
    limit: int = DEFAULT_LIMIT
    recent_days: float = RiskPolicy().recent_days


def _exposures(pkg: InstalledPackage, listeners: dict[str, list[Listener]]) -> list[str]:
    """Public listening sockets of the processes using ``pkg`` ("addr:port/proto")."""
    if not pkg.active or not pkg.processes:
        return []
    keys = {p.key for p in pkg.processes if p.key}
    pids = {p.pid for p in pkg.processes if p.pid and not p.key}
    out = []
    for sock in listeners.get(pkg.agent_id, ()):
        if not sock.public:
            continue
        if (sock.process_key and sock.process_key in keys) or (not sock.process_key and sock.pid in pids) \
                or (sock.pid and sock.pid in pids):
            addr = f"[{sock.addr}]" if ":" in sock.addr else sock.addr
            out.append(f"{addr}:{sock.port}/{sock.protocol}")
    return sorted(set(out))


def _finding(m: Match, pkg: InstalledPackage, exposures: list[str], policy: RiskPolicy,
             now: int) -> tuple[tuple[object, ...], dict[str, object]]:
    """(rank key, the finding as JSON)."""
    activity = policy.activity(pkg.active, pkg.last_used_ts, now)
    fixable = bool(m.fixed_version)
    unknown = m.status == "unknown"
    sev = m.severity
    p = pkg.package
    base = base_score(sev)
    score = risk_score(sev, activity, bool(exposures), fixable, unknown, policy)
    return rank_key(activity, score, base, m.advisory.id, p.name), {
        "id": m.advisory.id,
        "aliases": list(m.advisory.aliases),
        "summary": m.advisory.summary,
        "package": p.name,
        "version": p.version,
        "ecosystem": p.ecosystem + (f":{p.distro}" if p.distro and p.manager in ("dpkg", "rpm", "apk") else ""),
        "advisory_ecosystem": m.ecosystem,
        "purl": p.purl,
        "manager": p.manager,
        "source_name": m.matched_name if m.matched_name != p.name else None,
        "source_version": m.matched_version if m.matched_version != p.version else None,
        "fixed_version": m.fixed_version,
        "fixable": fixable,
        "status": m.status,
        "unknown_reason": m.reason or None,
        "severity": sev.label,
        "cvss": sev.score,
        "cvss_vector": sev.vector,
        "distro_severity": sev.distro_label,
        "base": base,
        "score": score,
        "active": pkg.active,
        "activity": activity,
        "last_used_ts": pkg.last_used_ts or None,
        "exposed": bool(exposures),
        "exposures": exposures,
        "processes": [{"pid": r.pid, "key": r.key, "exe": r.exe, "container_id": r.container_id}
                      for r in pkg.processes[:8]],
        "host": pkg.hostname,
        "agent_id": pkg.agent_id,
        "scope": pkg.scope,
        "container_id": pkg.container_id,
    }


def build_findings(store: PackageStore, db: AdvisoryDB | None, query: FindingQuery,
                   now_ns: int | None = None) -> dict[str, object]:
    """The response body of GET /api/v1/vulns."""
    now = time.time_ns() if now_ns is None else now_ns
    policy = RiskPolicy(recent_days=query.recent_days)
    installed = store.installed(hostname=query.host, agent_id=query.agent)
    if db is None:
        return {"findings": [], "total": 0, "advisories": 0, "stats": {"packages": len(installed)},
                "note": "no advisory database: run heron vulndb import or heron vulndb update"}
    started = time.monotonic()
    matches, stats = match_packages([i.package for i in installed], db)
    by_agent: dict[str, list[Listener]] = defaultdict(list)
    for sock in store.listeners({i.agent_id for i in installed}):
        by_agent[sock.agent_id].append(sock)
    exposure_cache: dict[int, list[str]] = {}
    ranked: list[tuple[tuple[object, ...], dict[str, object]]] = []
    for m in matches:
        pkg = installed[m.package_index]
        if m.package_index not in exposure_cache:
            exposure_cache[m.package_index] = _exposures(pkg, by_agent)
        key, f = _finding(m, pkg, exposure_cache[m.package_index], policy, now)
        if query.severities and f["severity"] not in query.severities:
            continue
        if query.active is not None and f["active"] is not query.active:
            continue
        if query.status and f["status"] != query.status:
            continue
        ranked.append((key, f))
    ranked.sort(key=lambda item: item[0])
    findings = [f for _, f in ranked]
    body: dict[str, object] = {
        "findings": findings[:query.limit],
        "total": len(findings),
        "advisories": db.counts()["advisories"],
        "stats": {**stats.as_dict(), "seconds": round(time.monotonic() - started, 3)},
        # ecosystem key -> packages not checked at all: no advisory for that key in the store
        "uncovered": dict(stats.uncovered),
    }
    return body


def _param(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    if value is not None and len(value) > _MAX_PARAM:
        raise ApiError(400, f"{name} is too long")
    return value or None


def _bool(name: str, value: str | None) -> bool | None:
    if value is None:
        return None
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise ApiError(400, f"{name} must be true or false")


def _limit(value: str | None, default: int = DEFAULT_LIMIT) -> int:
    if value is None:
        return default
    if not value.isascii() or not value.isdigit():
        raise ApiError(400, "limit must be a positive integer")
    return max(1, min(int(value), MAX_LIMIT))


def parse_query(request: Request) -> FindingQuery:
    severities = frozenset(s.strip().lower() for s in (_param(request, "severity") or "").split(",") if s.strip())
    unknown = severities - set(LABEL_ORDER)
    if unknown:
        raise ApiError(400, f"severity must be among {', '.join(LABEL_ORDER)}")
    status = _param(request, "status")
    if status not in (None, "affected", "unknown"):
        raise ApiError(400, "status must be affected or unknown")
    recent = _param(request, "recent_days")
    try:
        recent_days = float(recent) if recent is not None else RiskPolicy().recent_days
    except ValueError:
        raise ApiError(400, "recent_days must be a number") from None
    if not 0 <= recent_days <= 3650:
        raise ApiError(400, "recent_days must be between 0 and 3650")
    return FindingQuery(host=_param(request, "host"), agent=_param(request, "agent"), severities=severities,
                        active=_bool("active", _param(request, "active")), status=status,
                        limit=_limit(_param(request, "limit")), recent_days=recent_days)


def _stores(request: Request) -> tuple[PackageStore, AdvisoryDB | None]:
    """The packages (in the platform's database) and the advisory store (a SQLite file in the
    data dir, beside a SQLite platform database)."""
    ctx = context(request)
    db = ctx.db
    data_dir = ctx.config.data_dir or (Path(db.path).parent if db.path and db.path != ":memory:" else None)
    vulndb = vulndb_path(data_dir) if data_dir is not None else None
    return PackageStore(db), (AdvisoryDB(vulndb) if vulndb is not None and Path(vulndb).exists() else None)


def _json(payload: object) -> Response:
    return Response(_encoder.encode(payload), media_type="application/json")


async def list_vulns(request: Request) -> Response:
    await authenticate(request, QUERY_ROLES)
    query = parse_query(request)
    store, db = _stores(request)
    return _json(await run_in_threadpool(build_findings, store, db, query))


def build_packages(store: PackageStore, host: str | None, agent: str | None, active: bool | None,
                   text: str | None, limit: int, recent_days: float, now_ns: int | None = None) -> dict[str, object]:
    """The response body of GET /api/v1/packages."""
    now = time.time_ns() if now_ns is None else now_ns
    policy = RiskPolicy(recent_days=recent_days)
    rows = []
    for i in store.installed(hostname=host, agent_id=agent):
        if active is not None and i.active is not active:
            continue
        if text and text.lower() not in i.package.name.lower():
            continue
        p = i.package
        rows.append({
            "host": i.hostname, "agent_id": i.agent_id, "scope": i.scope, "container_id": i.container_id,
            "name": p.name, "version": p.version, "ecosystem": p.ecosystem, "distro": p.distro or None,
            "purl": p.purl, "manager": p.manager, "source_name": p.source_name or None,
            "location": p.location or None, "active": i.active,
            "activity": policy.activity(i.active, i.last_used_ts, now), "last_used_ts": i.last_used_ts or None,
            "processes": [{"pid": r.pid, "key": r.key, "exe": r.exe} for r in i.processes[:8]],
            "files": list(i.files[:8]),
        })
    return {"packages": rows[:limit], "total": len(rows)}


async def list_packages(request: Request) -> Response:
    await authenticate(request, QUERY_ROLES)
    recent = parse_query(request).recent_days
    store, _ = _stores(request)
    body = await run_in_threadpool(
        build_packages, store, _param(request, "host"), _param(request, "agent"),
        _bool("active", _param(request, "active")), _param(request, "q"),
        _limit(_param(request, "limit"), 1000), recent)
    return _json(body)
