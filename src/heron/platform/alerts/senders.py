"""Delivering one notification: a webhook POST (Slack-compatible JSON) or an RFC 5424 syslog line.

Each function raises ``DeliveryError`` with a short reason on failure; the outbox retries.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import socket
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from heron import __version__
from heron.platform.alerts.channels import FACILITIES

TIMEOUT_S = 5.0
MAX_SYSLOG_BYTES = 8192
SYSLOG_SEVERITY = {"critical": 2, "high": 3, "medium": 4, "low": 5, "info": 6}
SD_ID = "heron@32473"  # 32473: the enterprise number RFC 5612 reserves for examples


class DeliveryError(Exception):
    pass


def _iso(ns: Any) -> str:
    if not isinstance(ns, int):
        return ""
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def headline(payload: dict[str, Any]) -> str:
    a = payload.get("alert", {})
    verb = "raised to" if payload.get("event") == "escalated" else ""
    sev = str(a.get("severity", "?")).upper()
    return f"heron {sev} alert #{a.get('id')} {verb + ' ' if verb else ''}on {a.get('host')}: {a.get('title')}"


def _mrkdwn(text: Any) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """{"text", "blocks"} for Slack (and compatible receivers) plus "heron": the event and alert fields."""
    a = payload.get("alert", {})
    facts = (f"*{_mrkdwn(str(a.get('severity', '')).upper())}* · {_mrkdwn(a.get('kind'))} "
             f"`{_mrkdwn(a.get('rule'))}` · host *{_mrkdwn(a.get('host'))}*")
    context = (f"pid {_mrkdwn(a.get('pid'))} · {_mrkdwn(a.get('exe') or '?')} · {_mrkdwn(a.get('n_detections'))} "
               f"detection(s) · first seen {_iso(a.get('first_ts'))}")
    tags = a.get("tags") or []
    if tags:
        context += " · " + _mrkdwn(", ".join(map(str, tags)))
    return {
        "text": headline(payload),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": f"heron alert #{a.get('id')}"[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn(a.get("title", ""))[:2900]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": facts[:2900]}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context[:2900]}]},
        ],
        "heron": {"event": payload.get("event"), "alert": a},
    }


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # a 3xx is an answer we report, not a place we follow


_opener = urllib.request.build_opener(_NoRedirect)


def send_webhook(config: dict[str, Any], payload: dict[str, Any], timeout: float = TIMEOUT_S) -> None:
    url = config.get("url", "")
    if urlsplit(url).scheme not in ("http", "https"):
        raise DeliveryError("webhook url is not http(s)")
    body = json.dumps(slack_payload(payload)).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={  # noqa: S310 (scheme checked above)
        "Content-Type": "application/json", "User-Agent": f"heron/{__version__}"})
    try:
        with _opener.open(req, timeout=timeout) as resp:
            resp.read(65536)
            status = resp.status
    except urllib.error.HTTPError as err:
        raise DeliveryError(f"HTTP {err.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise DeliveryError(f"webhook: {reason}") from None
    if not 200 <= status < 300:
        raise DeliveryError(f"HTTP {status}")


def _sd_value(v: Any) -> str:
    return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_line(config: dict[str, Any], payload: dict[str, Any], now_ns: int, hostname: str | None = None) -> bytes:
    """One RFC 5424 message: <PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] BOM+MSG."""
    a = payload.get("alert", {})
    pri = FACILITIES.get(config.get("facility", "auth"), 4) * 8 + SYSLOG_SEVERITY.get(str(a.get("severity")), 5)
    host = "".join(c for c in (hostname or socket.gethostname()) if "!" <= c <= "~")[:255] or "-"
    app = str(config.get("app_name", "heron"))[:48] or "-"
    msgid = f"alert.{payload.get('event', 'created')}"[:32]
    params = {"id": a.get("id"), "host": a.get("host"), "severity": a.get("severity"), "kind": a.get("kind"),
              "rule": a.get("rule"), "pid": a.get("pid"), "exe": a.get("exe"), "state": a.get("state")}
    sd = "[" + SD_ID + "".join(f' {k}="{_sd_value(v)}"' for k, v in params.items() if v is not None) + "]"
    head = f"<{pri}>1 {_iso(now_ns)} {host} {app} {os.getpid()} {msgid} {sd} ".encode()
    msg = headline(payload).encode("utf-8", "replace")
    return (head + b"\xef\xbb\xbf" + msg)[:MAX_SYSLOG_BYTES]


def send_syslog(config: dict[str, Any], payload: dict[str, Any], now_ns: int, timeout: float = TIMEOUT_S) -> None:
    line = syslog_line(config, payload, now_ns)
    parts = urlsplit(config.get("url", ""))
    try:
        if parts.scheme == "unix":
            _send_unix(parts.path, line, timeout)
            return
        if parts.scheme not in ("udp", "tcp") or not parts.hostname:
            raise DeliveryError("syslog url is not udp://, tcp:// or unix://")
        port = parts.port or (514 if parts.scheme == "udp" else 601)
        kind = socket.SOCK_DGRAM if parts.scheme == "udp" else socket.SOCK_STREAM
        infos = socket.getaddrinfo(parts.hostname, port, type=kind)
        if not infos:
            raise DeliveryError(f"cannot resolve {parts.hostname}")
        family, socktype, proto, _, addr = infos[0]
        with socket.socket(family, socktype, proto) as sock:
            sock.settimeout(timeout)
            if parts.scheme == "udp":
                sock.sendto(line, addr)
            else:
                sock.connect(addr)
                sock.sendall(str(len(line)).encode() + b" " + line)  # RFC 6587 octet counting
    except DeliveryError:
        raise
    except (OSError, ValueError) as err:
        raise DeliveryError(f"syslog: {err}") from None


def _send_unix(path: str, line: bytes, timeout: float) -> None:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.send(line)
            return
    except OSError as err:
        if err.errno != errno.EPROTOTYPE:  # a stream socket
            raise
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(line + b"\n")
