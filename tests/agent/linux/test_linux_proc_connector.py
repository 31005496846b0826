"""Process connector: crafted datagrams, and real fork/exec/exit events from the kernel."""

from __future__ import annotations

import signal
import struct
import subprocess
import time

import pytest

from heron.agent.linux.netlink import NLMSG_DONE, pack
from heron.agent.linux.proc_connector import (
    CN_IDX_PROC,
    CN_MSG,
    PROC_EVENT_COMM,
    PROC_EVENT_EXIT,
    PROC_EVENT_UID,
    Comm,
    Exec,
    Exit,
    Fork,
    IdChange,
    ProcConnector,
    ProcEvent,
    parse_event,
    parse_events,
)


def datagram(what: int, body: bytes, idx: int = CN_IDX_PROC) -> bytes:
    ev = struct.pack("=IIQ", what, 0, 123) + body
    return pack(NLMSG_DONE, CN_MSG.pack(idx, 1, 0, 0, len(ev), 0) + ev)


def test_crafted_events() -> None:
    ex = parse_event(datagram(PROC_EVENT_EXIT, struct.pack("=iiIIii", 5, 5, 7 << 8, 17, 1, 1)))
    assert isinstance(ex, Exit) and ex.exit_code == 7 and ex.signal is None and ex.ts_ns == 123
    killed = parse_event(datagram(PROC_EVENT_EXIT, struct.pack("=iiIIii", 5, 5, 9 | 0x80, 17, 1, 1)))
    assert isinstance(killed, Exit) and killed.signal == 9 and killed.exit_code is None
    uid = parse_event(datagram(PROC_EVENT_UID, struct.pack("=iiII", 5, 5, 1000, 0)))
    assert uid == IdChange(123, "uid", 5, 5, 1000, 0)
    comm = parse_event(datagram(PROC_EVENT_COMM, struct.pack("=ii16s", 5, 5, b"x\xffy\0junk")))
    assert comm == Comm(123, 5, 5, "x\\xffy")


def test_hostile_datagrams_are_counted() -> None:
    good = datagram(PROC_EVENT_EXIT, struct.pack("=iiIIii", 5, 5, 0, 17, 1, 1))
    other_connector = datagram(PROC_EVENT_EXIT, struct.pack("=iiIIii", 5, 5, 0, 17, 1, 1), idx=7)
    unknown_kind = datagram(0x1234, b"\0" * 24)
    events, bad = parse_events([good[:20], good[:-4], b"", other_connector, unknown_kind, good])
    assert bad == 3
    assert len(events) == 1 and isinstance(events[0], Exit)


@pytest.mark.privileged
def test_real_fork_exec_exit_and_signal() -> None:
    conn = ProcConnector()
    try:
        child = subprocess.Popen(["/bin/sh", "-c", "exit 7"])
        assert child.wait() == 7
        sleeper = subprocess.Popen(["/bin/sleep", "30"])
        time.sleep(0.1)
        sleeper.send_signal(signal.SIGKILL)
        sleeper.wait()
        events: list[ProcEvent] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            got, bad = parse_events(conn.recv_many(0.2))
            assert bad == 0
            events += got
            if any(isinstance(e, Exit) and e.tgid == sleeper.pid for e in events):
                break
        assert any(isinstance(e, Fork) and e.child_tgid == child.pid for e in events)
        assert any(isinstance(e, Exec) and e.tgid == child.pid for e in events)
        exit7 = next(e for e in events if isinstance(e, Exit) and e.tgid == child.pid)
        assert exit7.exit_code == 7 and exit7.signal is None
        kill = next(e for e in events if isinstance(e, Exit) and e.tgid == sleeper.pid)
        assert kill.signal == signal.SIGKILL and kill.exit_code is None
    finally:
        conn.close()
