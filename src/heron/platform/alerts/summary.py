"""One line a person can read for a detection: what happened, by whom.

e.g. ``bash -i spawned by nginx (pid 123, user www-data)``. Text from events is hostile: it is
cut to a bounded length and control characters are escaped (the console and terminals show it).
"""

from __future__ import annotations

from typing import Any

MAX_COMMAND = 160
MAX_SUMMARY = 400


def _escape(c: str) -> str:
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


def printable(text: str) -> str:
    """``text`` with control and other non-printable characters (CR, LF, ESC, U+2028, ...) escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def one_line(value: object) -> str:
    """Any agent-provided value as one line of printable text: the helper for titles, notifications
    and syslog lines (a CR/LF from an agent must not start a line of its own)."""
    return printable(value if isinstance(value, str) else str(value))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _name(path: Any) -> str:
    return path.rpartition("/")[2] if isinstance(path, str) and path else "?"


def _parent_name(process: dict[str, Any]) -> str | None:
    parent = process.get("parent_exe")
    if not parent:
        ancestors = process.get("ancestors")
        if isinstance(ancestors, list) and ancestors and isinstance(ancestors[0], list) and len(ancestors[0]) > 2:
            parent = ancestors[0][2]
    return _name(parent) if parent else None


def _command(process: dict[str, Any]) -> str:
    argv = process.get("argv")
    if isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv):
        words = [_name(argv[0]) if argv[0].startswith("/") else argv[0], *argv[1:]]
        return _cut(" ".join(words), MAX_COMMAND)
    return _name(process.get("exe"))


def _who(process: dict[str, Any]) -> str:
    parts = [f"pid {process['pid']}"] if isinstance(process.get("pid"), int) else []
    user = process.get("user")
    if user:
        parts.append(f"user {user}")
    elif isinstance(process.get("uid"), int) and process["uid"] >= 0:
        parts.append(f"uid {process['uid']}")
    if process.get("container_id"):
        parts.append(f"container {str(process['container_id'])[:12]}")
    return f" ({', '.join(parts)})" if parts else ""


def summarise(event: dict[str, Any]) -> str:
    """The readable line for a detection on ``event`` (any event type)."""
    process = event.get("process") if isinstance(event.get("process"), dict) else {}
    assert isinstance(process, dict)
    etype = event.get("type")
    actor = _name(process.get("exe")) if process else "unknown process"
    if etype == "process.exec":
        parent = _parent_name(process)
        text = _command(process) + (f" spawned by {parent}" if parent else "")
    elif etype == "net.flow":
        remote = event.get("domain") or event.get("remote_addr", "?")
        verb = "connected to" if event.get("direction") == "out" else "accepted a connection from"
        port = f":{event['remote_port']}" if event.get("remote_port") else f" on port {event.get('local_port', '?')}"
        text = f"{actor} {verb} {remote}{port}"
    elif etype == "net.listen":
        text = f"{actor} listening on {event.get('protocol', '?')} {event.get('addr', '?')}:{event.get('port', '?')}"
    elif etype == "net.dns":
        text = f"{actor} looked up {event.get('query', '?')}"
    elif etype == "file.change":
        action = event.get("action", "changed")
        verb = {"create": "created", "modify": "modified", "delete": "deleted", "rename": "renamed",
                "attrib": "changed attributes of", "read": "read"}.get(str(action), str(action))
        who = actor if process else "an unknown writer"
        text = f"{who} {verb} {event.get('path', '?')}"
    elif etype == "process.exit":
        how = f"signal {event['signal']}" if event.get("signal") else f"code {event.get('exit_code', '?')}"
        text = f"{_name(event.get('exe'))} (pid {event.get('pid', '?')}) exited, {how}"
    else:
        text = f"{etype} by {actor}"
    return _cut(printable(text + (_who(process) if process else "")), MAX_SUMMARY)
