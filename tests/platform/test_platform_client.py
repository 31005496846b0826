"""heron events' line format: readable, and safe for a terminal whatever argv holds."""

from __future__ import annotations

from heron.platform.client import format_event, printable


def test_exec_line_is_readable() -> None:
    item = {"id": 1, "host": "web-1", "event": {
        "type": "process.exec", "ts": 1_700_000_000_000_000_000,
        "process": {"pid": 42, "user": "alice", "exe": "/usr/bin/ls", "argv": ["ls", "-l", "my file"],
                    "container_id": "ab" * 32}, "count": 3}}
    line = format_event(item)
    assert line.endswith("web-1 process.exec pid=42 user=alice container=abababababab /usr/bin/ls "
                         "-- ls -l 'my file' (x3)")


def test_hostile_argv_cannot_reach_the_terminal_raw() -> None:
    argv = ["sh", "\x1b]0;owned\x07\x1b[2J", "\u202etxt.exe", "line\nbreak", "\x9b31m"]
    item = {"host": "h\x1b[31m", "event": {"type": "process.exec", "ts": 1,
                                          "process": {"pid": 1, "exe": "/bin/sh", "argv": argv}}}
    line = format_event(item)
    assert line.isprintable()
    assert "\\x1b]0;owned\\x07" in line and "\\u202e" in line and "\\x0a" in line and "\\x9b" in line


def test_exit_and_health_lines() -> None:
    assert "signal=9" in format_event({"event": {"type": "process.exit", "ts": 1, "pid": 5, "exe": "/x",
                                                 "signal": 9, "exit_code": None}})
    health = format_event({"host": "h", "event": {
        "type": "agent.health", "ts": 1, "agent_version": "0.1.0", "collectors": {"process": "ebpf"},
        "counters": {"process.ebpf.dropped": 4, "process.ebpf.received": 100, "sink.errors": 0}}})
    assert "collectors=process=ebpf" in health and "process.ebpf.dropped=4" in health
    assert "received" not in health and "sink.errors" not in health


def test_printable_keeps_ordinary_text() -> None:
    assert printable("héllo wörld /usr/bin/python3") == "héllo wörld /usr/bin/python3"
    assert format_event({}) .startswith("? - ?")
