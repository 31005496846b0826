"""``heron alerts``: the alerts of a platform (the local one by default) as a table or JSON.

``--json`` prints one JSON array; each alert has the API's fields plus ``rule`` and ``kind``,
``severity``, ``host``, ``pid``, ``exe``, ``time`` (ISO 8601, UTC) and ``time_ns``. Scripts rely on it.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any, TextIO

from heron.platform.alerts.summary import printable


def iso(ns: Any) -> str | None:
    if not isinstance(ns, int) or isinstance(ns, bool):
        return None
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def script_view(alert: dict[str, Any]) -> dict[str, Any]:
    return {**alert, "time": iso(alert.get("time")), "time_ns": alert.get("time"),
            "first_ts": alert.get("first_ts"), "last_ts": alert.get("last_ts"), "last_time": iso(alert.get("last_ts"))}


def _cell(v: Any, width: int) -> str:
    text = printable("" if v is None else str(v))
    return text if len(text) <= width else text[: width - 1] + "…"


def table(alerts: list[dict[str, Any]], out: TextIO) -> None:
    cols = [("ID", "id", 6), ("TIME (UTC)", "time", 19), ("SEVERITY", "severity", 8), ("STATE", "state", 12),
            ("HOST", "host", 16), ("PID", "pid", 7), ("RULE", "rule", 34), ("TITLE", "title", 70)]
    out.write("  ".join(h.ljust(w) for h, _, w in cols).rstrip() + "\n")
    for a in alerts:
        row = {**a, "time": (iso(a.get("time")) or "")[:19].replace("T", " ")}
        out.write("  ".join(_cell(row.get(k), w).ljust(w) for _, k, w in cols).rstrip() + "\n")
    out.write(f"{len(alerts)} alert(s)\n")


def alerts_command(base_url: str, token: str, *, as_json: bool, state: str | None, limit: int,
                   out: TextIO = sys.stdout, severity: str | None = None, host: str | None = None) -> int:
    from heron.platform.client import PlatformError, _get

    params: dict[str, object] = {"state": state, "limit": limit, "severity": severity, "host": host}
    try:
        body = _get(base_url, "/api/v1/alerts", token, params, 30.0)
    except PlatformError as e:
        print(f"heron: {e}", file=sys.stderr)
        return 1
    alerts = [a for a in body.get("alerts") or [] if isinstance(a, dict)]
    if as_json:
        out.write(json.dumps([script_view(a) for a in alerts], ensure_ascii=True, indent=1) + "\n")
    else:
        table(alerts, out)
    return 0
