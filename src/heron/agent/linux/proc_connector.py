"""The netlink process connector (cn_proc): fork/exec/exit/... notifications for every task.

No policy here. Each datagram carries one ``struct proc_event`` behind a netlink header and a
``struct cn_msg``; ``parse_events`` turns a list of datagrams into small tuples (one class per
event kind, all starting with ``ts_ns``, the kernel's CLOCK_MONOTONIC time). Events are per
task: a thread's pid differs from its tgid. Malformed datagrams are counted, never raised.
"""

from __future__ import annotations

import contextlib
import os
import struct
from typing import NamedTuple

from heron.agent.linux.netlink import NLMSG_DONE, NLMSG_HDR, NLMSG_HDRLEN, NetlinkSocket

NETLINK_CONNECTOR = 11
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
PROC_CN_MCAST_IGNORE = 2

PROC_EVENT_NONE = 0x0
PROC_EVENT_FORK = 0x1
PROC_EVENT_EXEC = 0x2
PROC_EVENT_UID = 0x4
PROC_EVENT_GID = 0x40
PROC_EVENT_SID = 0x80
PROC_EVENT_PTRACE = 0x100
PROC_EVENT_COMM = 0x200
PROC_EVENT_COREDUMP = 0x40000000
PROC_EVENT_EXIT = 0x80000000

CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
_EVENT_HEAD = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_BODY = NLMSG_HDRLEN + CN_MSG.size + _EVENT_HEAD.size
_I2 = struct.Struct("=ii")
_I4 = struct.Struct("=iiii")
_I4U2 = struct.Struct("=iiII")
_EXIT = struct.Struct("=iiIIii")
_COMM = struct.Struct("=ii16s")


class Fork(NamedTuple):
    ts_ns: int
    parent_pid: int
    parent_tgid: int
    child_pid: int
    child_tgid: int


class Exec(NamedTuple):
    ts_ns: int
    pid: int
    tgid: int


class IdChange(NamedTuple):
    """uid or gid change: ``real``/``effective`` are uids for kind 'uid', gids for 'gid'."""

    ts_ns: int
    kind: str
    pid: int
    tgid: int
    real: int
    effective: int


class Sid(NamedTuple):
    ts_ns: int
    pid: int
    tgid: int


class Ptrace(NamedTuple):
    ts_ns: int
    pid: int
    tgid: int
    tracer_pid: int
    tracer_tgid: int


class Comm(NamedTuple):
    ts_ns: int
    pid: int
    tgid: int
    comm: str


class Coredump(NamedTuple):
    ts_ns: int
    pid: int
    tgid: int
    parent_pid: int
    parent_tgid: int


class Exit(NamedTuple):
    ts_ns: int
    pid: int
    tgid: int
    status: int  # task->exit_code: (code << 8) for exit(), the signal (| 0x80 core) when killed
    exit_signal: int  # signal sent to the parent (SIGCHLD), not the one that killed it
    parent_pid: int
    parent_tgid: int

    @property
    def exit_code(self) -> int | None:
        return None if self.status & 0x7F else (self.status >> 8) & 0xFF

    @property
    def signal(self) -> int | None:
        return (self.status & 0x7F) or None


class Ack(NamedTuple):
    ts_ns: int
    err: int


ProcEvent = Fork | Exec | IdChange | Sid | Ptrace | Comm | Coredump | Exit | Ack


def parse_event(buf: bytes) -> ProcEvent | None:
    """One datagram -> event; None for unknown kinds. Raises ValueError/struct.error when short."""
    if len(buf) < _BODY:
        raise ValueError("short proc connector datagram")
    length = NLMSG_HDR.unpack_from(buf)[0]
    if length > len(buf):
        raise ValueError("truncated proc connector datagram")
    idx, val = CN_MSG.unpack_from(buf, NLMSG_HDRLEN)[:2]
    if idx != CN_IDX_PROC or val != CN_VAL_PROC:
        return None
    what, _cpu, ts = _EVENT_HEAD.unpack_from(buf, NLMSG_HDRLEN + CN_MSG.size)
    o = _BODY
    if what == PROC_EVENT_FORK:
        return Fork(ts, *_I4.unpack_from(buf, o))
    if what == PROC_EVENT_EXEC:
        return Exec(ts, *_I2.unpack_from(buf, o))
    if what == PROC_EVENT_EXIT:
        return Exit(ts, *_EXIT.unpack_from(buf, o))
    if what in (PROC_EVENT_UID, PROC_EVENT_GID):
        pid, tgid, real, eff = _I4U2.unpack_from(buf, o)
        return IdChange(ts, "uid" if what == PROC_EVENT_UID else "gid", pid, tgid, real, eff)
    if what == PROC_EVENT_SID:
        return Sid(ts, *_I2.unpack_from(buf, o))
    if what == PROC_EVENT_PTRACE:
        return Ptrace(ts, *_I4.unpack_from(buf, o))
    if what == PROC_EVENT_COMM:
        pid, tgid, comm = _COMM.unpack_from(buf, o)
        return Comm(ts, pid, tgid, comm.split(b"\0", 1)[0].decode("utf-8", "backslashreplace"))
    if what == PROC_EVENT_COREDUMP:
        return Coredump(ts, *_I4.unpack_from(buf, o))
    if what == PROC_EVENT_NONE:
        return Ack(ts, _I2.unpack_from(buf, o)[0] if len(buf) >= o + 4 else 0)
    return None


def parse_events(datagrams: list[bytes]) -> tuple[list[ProcEvent], int]:
    """Datagrams -> (events in order, malformed count)."""
    out: list[ProcEvent] = []
    bad = 0
    for buf in datagrams:
        try:
            ev = parse_event(buf)
        except (ValueError, struct.error):
            bad += 1
            continue
        if ev is not None:
            out.append(ev)
    return out, bad


class ProcConnector:
    """A subscribed process-connector socket. Needs CAP_NET_ADMIN (root)."""

    def __init__(self, rcvbuf: int = 16 * 1024 * 1024) -> None:
        self.nl = NetlinkSocket(NETLINK_CONNECTOR, groups=CN_IDX_PROC, rcvbuf=rcvbuf)
        self._listening = False
        try:
            self._control(PROC_CN_MCAST_LISTEN)
            self._listening = True
        except OSError:
            self.nl.close()
            raise

    def _control(self, op: int) -> None:
        op_bytes = struct.pack("=I", op)
        cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op_bytes), 0)
        self.nl.send(NLMSG_DONE, cn + op_bytes, flags=0, seq=0)

    def fileno(self) -> int:
        return self.nl.fileno()

    def recv_many(self, timeout: float | None, limit: int = 4096) -> list[bytes]:
        """Wait up to ``timeout`` for the first datagram, then drain what is queued (at most
        ``limit``). Raises NetlinkOverrun (after which the socket is still subscribed)."""
        first = self.nl.recv(timeout)
        if first is None:
            return []
        out = [first]
        while len(out) < limit:
            raw = self.nl.recv(0)
            if raw is None:
                break
            out.append(raw)
        return out

    def close(self) -> None:
        if self._listening:
            self._listening = False
            # The kernel forgets a closed socket's subscription anyway.
            with contextlib.suppress(OSError):
                self._control(PROC_CN_MCAST_IGNORE)
        self.nl.close()


def probe() -> str | None:
    """None if a connector socket binds and subscribes here, else why not."""
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) to subscribe to the process connector"
    try:
        ProcConnector(rcvbuf=64 * 1024).close()
    except OSError as e:
        return f"process connector unavailable: {e}"
    return None
