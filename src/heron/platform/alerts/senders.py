"""Delivering one notification: a webhook POST (Slack-compatible JSON) or an RFC 5424 syslog line.

Each function raises ``DeliveryError`` with a short reason on failure; the outbox retries. Every
agent-provided string (host, title, exe, ...) goes through ``one_line``: no CR/LF or other control
character reaches a syslog line or a chat message.

A webhook has a total deadline (``deadline``) besides the per-socket-operation timeout: a receiver
that drips its answer a byte at a time is cut off when the deadline passes (a watchdog timer shuts
the connection's socket down, which wakes the blocked read).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import http.client
import json
import os
import socket
import threading
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from heron import __version__
from heron.platform.alerts.channels import FACILITIES
from heron.platform.alerts.summary import one_line

TIMEOUT_S = 5.0
DEADLINE_S = 15.0  # a whole webhook send, connection to last byte
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
    """One line for people (chat text, the syslog message); agent strings are made one line."""
    a = payload.get("alert", {})
    if payload.get("event") == "throttled":
        return (f"heron: more than {one_line(payload.get('limit', '?'))} alert notifications in a minute on this "
                f"channel; further ones this minute are not sent (the console lists every alert). Latest: "
                f"{one_line(str(a.get('severity', '?')).upper())} alert #{one_line(a.get('id'))} on "
                f"{one_line(a.get('host'))}: {one_line(a.get('title'))}")
    verb = "raised to" if payload.get("event") == "escalated" else ""
    sev = one_line(str(a.get("severity", "?")).upper())
    return (f"heron {sev} alert #{one_line(a.get('id'))} {verb + ' ' if verb else ''}on {one_line(a.get('host'))}: "
            f"{one_line(a.get('title'))}")


def _mrkdwn(text: Any) -> str:
    """Slack mrkdwn-safe: one line, and & < > escaped (so no <!channel>, <@U..> or <url|link> from an agent)."""
    return one_line(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


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
        "text": _mrkdwn(headline(payload)),
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


class _Watchdog:
    """The connections of one send; ``expire`` shuts their sockets down (the deadline passed)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.expired = False
        self.conns: list[http.client.HTTPConnection] = []

    def track(self, conn: http.client.HTTPConnection) -> None:
        with self.lock:
            self.conns.append(conn)

    def check(self) -> None:
        if self.expired:
            raise TimeoutError("deadline passed")

    def expire(self) -> None:
        with self.lock:
            self.expired = True
            for conn in self.conns:
                sock = conn.sock
                if sock is not None:
                    # the base method: an SSLSocket's own shutdown would change TLS state under the reader
                    with contextlib.suppress(OSError):
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _watched(base: type[http.client.HTTPConnection], dog: _Watchdog) -> type[http.client.HTTPConnection]:
    class Watched(base):  # type: ignore[valid-type,misc]
        def connect(self) -> None:
            dog.track(self)
            dog.check()
            super().connect()
            dog.check()  # the deadline passed while connecting: the watchdog missed this socket
    return Watched


class _HTTP(urllib.request.HTTPHandler):
    def __init__(self, dog: _Watchdog) -> None:
        super().__init__()
        self.dog = dog

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_watched(http.client.HTTPConnection, self.dog), req)


class _HTTPS(urllib.request.HTTPSHandler):
    def __init__(self, dog: _Watchdog) -> None:
        super().__init__()
        self.dog = dog

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_watched(http.client.HTTPSConnection, self.dog), req,
                            context=getattr(self, "_context", None))


def send_webhook(config: dict[str, Any], payload: dict[str, Any], timeout: float = TIMEOUT_S,
                 deadline: float = DEADLINE_S) -> None:
    """POST the Slack-shaped payload; ``timeout`` per socket operation, ``deadline`` for the whole send
    (name resolution excepted: the system resolver has its own limits)."""
    url = config.get("url", "")
    if urlsplit(url).scheme not in ("http", "https"):
        raise DeliveryError("webhook url is not http(s)")
    body = json.dumps(slack_payload(payload)).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers={  # noqa: S310 (scheme checked above)
        "Content-Type": "application/json", "User-Agent": f"heron/{__version__}"})
    dog = _Watchdog()
    opener = urllib.request.build_opener(_NoRedirect, _HTTP(dog), _HTTPS(dog))
    timer = threading.Timer(deadline, dog.expire)
    timer.daemon = True
    timer.start()
    try:
        with opener.open(req, timeout=timeout) as resp:
            resp.read(65536)
            status = resp.status
    except urllib.error.HTTPError as err:
        if dog.expired:
            raise DeliveryError(f"webhook: no complete answer within {deadline:g} s") from None
        raise DeliveryError(f"HTTP {err.code}") from None
    except Exception as err:  # a receiver can make http.client raise nearly anything (BadStatusLine, ...)
        if dog.expired:
            raise DeliveryError(f"webhook: no complete answer within {deadline:g} s") from None
        reason = getattr(err, "reason", None) or f"{type(err).__name__}: {err}"
        raise DeliveryError(f"webhook: {one_line(reason)[:300]}") from None
    finally:
        timer.cancel()
    if dog.expired:
        raise DeliveryError(f"webhook: no complete answer within {deadline:g} s")
    if not 200 <= status < 300:
        raise DeliveryError(f"HTTP {status}")


def _sd_value(v: Any) -> str:
    return one_line(v).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


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
    msg = headline(payload).encode("utf-8", "replace")  # one line: agent strings went through one_line
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
