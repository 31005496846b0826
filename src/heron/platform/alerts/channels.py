"""Notification channels (webhook, syslog): validation, and queueing into the outbox.

Channel configs (JSON in ``notification_channels.config``):
- webhook: ``{"url": "https://hooks.example/..."}`` (http or https only);
- syslog: ``{"url": "udp://host:514" | "tcp://host:601" | "unix:///dev/log", "facility": "auth",
  "app_name": "heron"}`` (RFC 5424 lines; TCP uses octet counting, RFC 6587).

The recorder queues one outbox row per channel whose ``min_severity`` the alert meets, when an
alert is created and when its severity rises; ``notify.py`` sends them. A channel gets at most
``limit`` rows in any 60 s; the next one is a single "throttled" summary row, and further ones in
that minute are not queued (the alerts themselves are all in the console).

Webhook URLs are credentials (a Slack webhook URL is its own secret): readers see them masked
(``scheme://host[:port]/…``), admins in full (``channel_json(..., reveal=True)``).
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
from sqlalchemy.sql.elements import ColumnElement

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
WINDOW_NS = 60 * 10**9


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


def mask_url(url: str) -> str:
    """``scheme://host[:port]/…``: no userinfo, path or query (where webhook secrets live)."""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    rest = "/…" if (parts.path not in ("", "/") or parts.query or parts.fragment or parts.username) else "/"
    return f"{parts.scheme}://{host}{port}{rest}"


def channel_json(r: Mapping[Any, Any], reveal: bool = True) -> dict[str, Any]:
    """The channel as the API shows it; ``reveal=False`` (readers) masks a webhook's URL."""
    config = json.loads(r["config"])
    if not reveal and r["kind"] == "webhook" and isinstance(config.get("url"), str):
        config = {**config, "url": mask_url(config["url"])}
    return {"id": r["id"], "name": r["name"], "kind": r["kind"], "config": config,
            "min_severity": r["min_severity"], "enabled": bool(r["enabled"]), "created": r["created"]}


def _recent(now: int) -> ColumnElement[bool]:
    n = s.notifications.c
    # created >= since implies next_attempt >= since (it only moves later): that term lets the
    # (state, next_attempt) index find the last minute's rows
    since = now - WINDOW_NS
    return sa.and_(n.state.in_(("pending", "sent", "failed")), n.next_attempt >= since, n.created >= since)


def queue(conn: Connection, alert: Mapping[Any, Any], event: str, now: int | None = None,
          limit: int | None = None) -> int:
    """Outbox rows for ``alert`` (a full alerts row) on each enabled channel it is severe enough for;
    past ``limit`` rows in the last minute on a channel, one "throttled" row, then none."""
    now = time.time_ns() if now is None else now
    rows = conn.execute(sa.select(s.notification_channels.c.id, s.notification_channels.c.min_severity)
                        .where(s.notification_channels.c.enabled == 1)).all()
    targets = [cid for cid, min_sev in rows if at_least(alert["severity"], min_sev)]
    if not targets:
        return 0
    recent: dict[int, int] = {}
    if limit is not None:
        n = s.notifications.c
        recent = {cid: count for cid, count in conn.execute(
            sa.select(n.channel_id, sa.func.count()).where(_recent(now), n.channel_id.in_(targets))
            .group_by(n.channel_id)).all()}
    body = {"event": event, "alert": alert_json(alert)}
    payload = json.dumps(body, separators=(",", ":"))
    throttled = json.dumps({**body, "event": "throttled", "limit": limit, "original_event": event},
                           separators=(",", ":"))
    values = []
    for cid in targets:
        sent = recent.get(cid, 0)
        if limit is not None and sent > limit:
            continue  # the throttled row for this minute is queued already
        values.append({"channel_id": cid, "alert_id": alert["id"], "state": "pending", "attempts": 0,
                       "next_attempt": now, "created": now,
                       "payload": throttled if limit is not None and sent == limit else payload})
    if values:
        conn.execute(sa.insert(s.notifications), values)
    return len(values)
