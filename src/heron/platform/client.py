"""A small HTTP client of the query API, and ``heron events``.

Standard library only (urllib), so the CLI needs no extra dependency. Event data is hostile:
every field printed to a terminal goes through ``printable`` so argv cannot smuggle escape
sequences or bidi overrides into the operator's terminal.
"""

from __future__ import annotations

import json
import shlex
import sys
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, TextIO

FOLLOW_PAGE = 1000


class PlatformError(Exception):
    """The platform could not be reached or refused the request."""


def _get(base_url: str, path: str, token: str, params: Mapping[str, object], timeout: float) -> Any:
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None and v != ""})
    url = f"{base_url.rstrip('/')}{path}" + (f"?{query}" if query else "")
    if not url.startswith(("http://", "https://")):
        raise PlatformError(f"not an http(s) URL: {base_url!r}")
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (scheme checked above)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (scheme checked)
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read()).get("error", e.reason)
        except (ValueError, AttributeError):
            message = e.reason
        raise PlatformError(f"{url}: HTTP {e.code}: {message}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise PlatformError(f"cannot reach {base_url}: {reason}") from None


def list_events(base_url: str, token: str, *, limit: int = 50, after_id: int | None = None,
                timeout: float = 10.0, filters: Mapping[str, object] | None = None,
                **more_filters: object) -> list[dict[str, Any]]:
    """Events matching the filters (query parameters of GET /api/v1/events, given as a mapping
    and/or keywords): newest first, or ascending after ``after_id``."""
    params = {**(filters or {}), **more_filters, "limit": limit, "after_id": after_id}
    body = _get(base_url, "/api/v1/events", token, params, timeout)
    events: list[dict[str, Any]] = body["events"]
    return events


def list_agents(base_url: str, token: str, *, timeout: float = 10.0) -> list[dict[str, Any]]:
    agents: list[dict[str, Any]] = _get(base_url, "/api/v1/agents", token, {}, timeout)["agents"]
    return agents


def follow_events(base_url: str, token: str, *, after_id: int | None = None, interval: float = 1.0,
                  stop: threading.Event | None = None, timeout: float = 10.0,
                  filters: Mapping[str, object] | None = None,
                  **more_filters: object) -> Iterator[dict[str, Any]]:
    """Yield events as they arrive, oldest first, forever (or until ``stop`` is set). Starts
    after ``after_id``, or after the newest event at the time of the call when it is None."""
    if after_id is None:  # resolved now, not at the first next()
        newest = list_events(base_url, token, limit=1, timeout=timeout)
        after_id = newest[0]["id"] if newest else 0
    wanted = {**(filters or {}), **more_filters}
    return _follow(base_url, token, int(after_id or 0), interval, stop, timeout, wanted)


def _follow(base_url: str, token: str, after_id: int, interval: float, stop: threading.Event | None,
            timeout: float, wanted: Mapping[str, object]) -> Iterator[dict[str, Any]]:
    while stop is None or not stop.is_set():
        page = list_events(base_url, token, limit=FOLLOW_PAGE, after_id=after_id, timeout=timeout,
                           filters=wanted)
        for item in page:
            after_id = max(after_id, int(item["id"]))
            yield item
        if len(page) < FOLLOW_PAGE:
            if stop is not None:
                stop.wait(interval)
            else:
                time.sleep(interval)


def printable(text: str) -> str:
    """``text`` with control and format characters (escapes, bidi overrides) shown as \\x.. / \\u...."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _time(ts: object) -> str:
    if not isinstance(ts, int):
        return "?"
    return datetime.fromtimestamp(ts / 1e9).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _ref_parts(p: Mapping[str, Any] | None) -> list[str]:
    if not p:
        return ["pid=?"]
    out = [f"pid={p.get('pid')}", f"user={p.get('user') or p.get('uid', '?')}"]
    if p.get("container_id"):
        out.append(f"container={str(p['container_id'])[:12]}")
    out.append(str(p.get("exe") or p.get("comm") or "?"))
    return out


def _describe(kind: str, ev: Mapping[str, Any]) -> str:
    """What a network or file event did, in one phrase."""
    if kind == "net.flow":
        domain = f"{ev['domain']} " if ev.get("domain") else ""
        remote = f"{domain}{ev.get('remote_addr')}:{ev.get('remote_port', 0)}"
        local = f"{ev.get('local_addr')}:{ev.get('local_port', 0)}"
        arrow = f"{remote} -> {local}" if ev.get("direction") == "in" else f"{local} -> {remote}"
        return (f"{ev.get('protocol')} {arrow} conn={ev.get('connections', 0)} out={ev.get('bytes_out', 0)}B "
                f"in={ev.get('bytes_in', 0)}B" + (f" [{ev['remote_class']}]" if ev.get("remote_class") else ""))
    if kind == "net.listen":
        return f"{ev.get('protocol')} listen {ev.get('addr')}:{ev.get('port')} {ev.get('state', 'open')}"
    if kind == "net.dns":
        answers = ",".join(str(a) for a in ev.get("answers") or []) or str(ev.get("rcode", ""))
        return f"dns {ev.get('qtype')} {ev.get('query')} -> {answers}"
    old = f"{ev['old_path']} -> " if ev.get("old_path") else ""
    text = f"{ev.get('action')} {old}{ev.get('path')}"
    if ev.get("package_manager"):
        text += f" [{ev['package_manager']}]"
    if ev.get("attribution") == "unknown":
        text += " (writer unknown)"
    return text


def format_event(item: Mapping[str, Any]) -> str:
    """One readable line for an event returned by the API."""
    ev: Mapping[str, Any] = item.get("event") or {}
    kind = str(ev.get("type", "?"))
    parts = [_time(ev.get("ts")), str(item.get("host") or "-"), kind]
    if kind == "process.exec":
        p: Mapping[str, Any] = ev.get("process") or {}
        parts.append(f"pid={p.get('pid')}")
        parts.append(f"user={p.get('user') or p.get('uid', '?')}")
        if p.get("container_id"):
            parts.append(f"container={str(p['container_id'])[:12]}")
        argv = [str(a) for a in p.get("argv") or []]
        parts.append(str(p.get("exe") or "?"))
        if argv:
            parts.append("--")
            parts.append(shlex.join(argv) + (" …" if p.get("argv_truncated") else ""))
        if ev.get("count", 1) > 1:
            parts.append(f"(x{ev['count']})")
    elif kind == "process.exit":
        parts += [f"pid={ev.get('pid')}", str(ev.get("exe") or ev.get("comm") or "?")]
        if ev.get("signal") is not None:
            parts.append(f"signal={ev['signal']}")
        elif ev.get("exit_code") is not None:
            parts.append(f"exit={ev['exit_code']}")
    elif kind in ("net.flow", "net.listen", "net.dns", "file.change"):
        parts += _ref_parts(ev.get("process"))
        parts.append(_describe(kind, ev))
    elif kind in ("package.inventory", "package.activity"):
        parts.append(f"scope={ev.get('scope', '?')}")
        if kind == "package.inventory":
            parts.append(f"{'full' if ev.get('full') else 'diff'} +{len(ev.get('added') or [])} "
                         f"-{len(ev.get('removed') or [])}")
            parts += [f"error={e}" for e in ev.get("errors") or []]
        else:
            parts.append(f"active={len(ev.get('active') or [])} inactive={len(ev.get('inactive') or [])}")
    elif kind == "agent.health":
        collectors = ",".join(f"{k}={v}" for k, v in (ev.get("collectors") or {}).items())
        parts += [f"agent={ev.get('agent_version')}", f"collectors={collectors or '-'}"]
        counters: Mapping[str, int] = ev.get("counters") or {}
        losses = {k: v for k, v in counters.items()
                  if v and any(w in k for w in ("drop", "lost", "error"))}
        parts += [f"{k}={v}" for k, v in sorted(losses.items())]
    return printable(" ".join(parts))


def events_command(base_url: str, token: str, follow: bool, filters: Mapping[str, str], as_json: bool,
                   out: TextIO, limit: int = 50, interval: float = 1.0,
                   stop: threading.Event | None = None) -> int:
    """``heron events``: print the last ``limit`` matching events (oldest first), then, with
    ``follow``, new ones as they arrive. Returns the exit status."""

    def emit(item: Mapping[str, Any]) -> None:
        out.write((json.dumps(item, ensure_ascii=True) if as_json else format_event(item)) + "\n")

    try:
        recent = list_events(base_url, token, limit=limit, filters=filters)
        for item in reversed(recent):
            emit(item)
        out.flush()
        if follow:
            after = max((int(i["id"]) for i in recent), default=None)
            if after is None:
                newest = list_events(base_url, token, limit=1)
                after = newest[0]["id"] if newest else 0
            for item in follow_events(base_url, token, after_id=after, interval=interval, stop=stop,
                                      filters=filters):
                emit(item)
                out.flush()
    except PlatformError as e:
        print(f"heron: {e}", file=sys.stderr)
        return 1
    return 0
