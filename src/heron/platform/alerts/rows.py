"""Alert and detection rows as the API, the CLI and notifications show them."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def _json(text: Any, default: Any) -> Any:
    try:
        return json.loads(text) if isinstance(text, str) else default
    except ValueError:
        return default


def alert_json(r: Mapping[Any, Any]) -> dict[str, Any]:
    return {"id": r["id"], "title": r["title"], "kind": r["kind"], "rule": r["rule"], "severity": r["severity"],
            "score": r["score"], "state": r["state"], "host": r["hostname"], "agent_id": r["agent_id"],
            "pid": r.get("pid"), "exe": r.get("exe"), "process_key": r.get("process_key"),
            "container_id": r.get("container_id"),
            "time": r["first_ts"], "first_ts": r["first_ts"], "last_ts": r["last_ts"],
            "n_detections": r["n_detections"], "tags": _json(r["tags"], []), "created": r["created"],
            "updated": r["updated"]}


def detection_json(r: Mapping[Any, Any]) -> dict[str, Any]:
    return {"id": r["id"], "kind": r["kind"], "name": r["name"], "severity": r["severity"], "score": r["score"],
            "ts": r["ts"], "last_ts": r["last_ts"] or r["ts"], "count": r["count"], "pid": r["pid"], "exe": r["exe"],
            "process_key": r["process_key"], "summary": r["summary"], "tags": _json(r["tags"], []),
            "event": _json(r["event"], {}), "evidence": _json(r["evidence"], {}), "cluster": r["cluster"]}


def load_json(text: Any, default: Any) -> Any:
    return _json(text, default)
