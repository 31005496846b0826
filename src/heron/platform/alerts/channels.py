"""Notification channels (webhook, syslog): validation, and queueing into the outbox.

Channel configs (JSON in ``notification_channels.config``):
- webhook: ``{"url": "https://hooks.example/..."}`` (http or https only);
- syslog: ``{"url": "udp://host:514" | "tcp://host:601" | "unix:///dev/log", "facility": "auth",
  "app_name": "heron"}`` (RFC 5424 lines; TCP uses octet counting, RFC 6587).

The recorder queues one outbox row per channel whose ``min_severity`` the alert meets, when an
alert is created and when its severity rises; ``notify.py`` sends them.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from heron.detect import SEVERITIES
from heron.platform.alerts.rows import alert_json
from heron.platform.alerts.severity import at_least
from heron.platform.storage import schema as s

KINDS = ("webhook", "syslog")
FACILITIES = {name: i for i, name in enumerate(
    ["kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp",
     "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4", "local5", "local6",
     "local7"])}
NAME_RE = re.compile(r"[\w .:@-]{1,100}\Z")
MAX_URL = 2048


def validate(name: Any, kind: Any, config: Any, min_severity: Any) -> dict[str, Any]:
    """A clean channel from a request body; ValueError with the reason otherwise."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError("name: 1-100 letters, digits, spaces and . : @ - _")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    if min_severity not in SEVERITIES:
        raise ValueError(f"min_severity must be one of {', '.join(SEVERITIES)}")
    if not isinstance(config, dict):
        raise ValueError("config must be an object")
    url = config.get("url")
    if not isinstance(url, str) or not url or len(url) > MAX_URL or not url.isprintable():
        raise ValueError("config.url is required")
    parts = urlsplit(url)
    clean: dict[str, Any] = {"url": url}
    if kind == "webhook":
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("a webhook url must be http:// or https:// with a host")
    else:
        if parts.scheme in ("udp", "tcp"):
            if not parts.hostname:
                raise ValueError("a syslog url needs a host: udp://host:514 or tcp://host:601")
            try:
                port = parts.port
            except ValueError:
                raise ValueError("syslog port out of range") from None
            clean["url"] = f"{parts.scheme}://{parts.netloc}"
            if port is None:
                clean["url"] += ":514" if parts.scheme == "udp" else ":601"
        elif parts.scheme == "unix":
            if not parts.path.startswith("/"):
                raise ValueError("a unix syslog url is unix:///dev/log (an absolute socket path)")
        else:
            raise ValueError("a syslog url is udp://host:port, tcp://host:port or unix:///path")
        facility = config.get("facility", "auth")
        if facility not in FACILITIES:
            raise ValueError(f"facility must be one of {', '.join(FACILITIES)}")
        clean["facility"] = facility
        app = config.get("app_name", "heron")
        if not isinstance(app, str) or not re.fullmatch(r"[!-~]{1,48}", app):
            raise ValueError("app_name: 1-48 printable ASCII characters without spaces")
        clean["app_name"] = app
    return {"name": name, "kind": kind, "config": clean, "min_severity": min_severity}


def channel_json(r: Mapping[Any, Any]) -> dict[str, Any]:
    return {"id": r["id"], "name": r["name"], "kind": r["kind"], "config": json.loads(r["config"]),
            "min_severity": r["min_severity"], "enabled": bool(r["enabled"]), "created": r["created"]}


def queue(conn: Connection, alert: Mapping[Any, Any], event: str, now: int | None = None) -> int:
    """Outbox rows for ``alert`` (a full alerts row) on each enabled channel it is severe enough for."""
    now = time.time_ns() if now is None else now
    rows = conn.execute(sa.select(s.notification_channels.c.id, s.notification_channels.c.min_severity)
                        .where(s.notification_channels.c.enabled == 1)).all()
    payload = json.dumps({"event": event, "alert": alert_json(alert)}, separators=(",", ":"))
    values = [{"channel_id": cid, "alert_id": alert["id"], "payload": payload, "state": "pending", "attempts": 0,
               "next_attempt": now, "created": now}
              for cid, min_sev in rows if at_least(alert["severity"], min_sev)]
    if values:
        conn.execute(sa.insert(s.notifications), values)
    return len(values)
