"""Minimal netlink: message framing and a datagram socket, stdlib only.

No policy here. A receive buffer may hold several messages (connector, multipart replies) or
one (audit records); ``parse`` walks it and never raises on a short or malformed buffer: it
returns what was whole and how many pieces were not. ENOBUFS on receive means the kernel
dropped messages for this socket: it becomes ``NetlinkOverrun`` so the caller can count loss.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
from dataclasses import dataclass

NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLMSG_HDRLEN = NLMSG_HDR.size
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4

SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33

DEFAULT_RCVBUF = 8 * 1024 * 1024
_ERR = struct.Struct("=i")


class NetlinkOverrun(Exception):
    """ENOBUFS: the socket's receive queue overflowed and the kernel dropped messages."""


class NetlinkError(OSError):
    """The kernel answered a request with a negative errno."""


@dataclass(frozen=True, slots=True)
class Message:
    type: int
    flags: int
    seq: int
    pid: int
    payload: bytes


def align(n: int) -> int:
    return (n + 3) & ~3


def pack(msg_type: int, payload: bytes, flags: int = NLM_F_REQUEST, seq: int = 0, pid: int = 0) -> bytes:
    return NLMSG_HDR.pack(NLMSG_HDRLEN + len(payload), msg_type, flags, seq, pid) + payload


def parse(buf: bytes, header_excluded_len: bool = False) -> tuple[list[Message], int]:
    """Split one receive buffer into messages: (messages, malformed pieces).

    ``header_excluded_len`` accepts the audit quirk: the kernel sends audit records to the
    daemon with nlmsg_len counting only the payload, one record per datagram.
    """
    out: list[Message] = []
    off, end = 0, len(buf)
    while off + NLMSG_HDRLEN <= end:
        length, mtype, flags, seq, pid = NLMSG_HDR.unpack_from(buf, off)
        if header_excluded_len and off == 0 and length + NLMSG_HDRLEN == end:
            out.append(Message(mtype, flags, seq, pid, bytes(buf[NLMSG_HDRLEN:end])))
            return out, 0
        if length < NLMSG_HDRLEN or off + length > end:
            return out, 1
        out.append(Message(mtype, flags, seq, pid, bytes(buf[off + NLMSG_HDRLEN : off + length])))
        off += align(length)
    return out, (1 if off < end else 0)


def error_code(msg: Message) -> int:
    """Positive errno of an NLMSG_ERROR (0 is an ACK); EPROTO if the payload is short."""
    if len(msg.payload) < _ERR.size:
        return errno.EPROTO
    return -int(_ERR.unpack_from(msg.payload)[0])


class NetlinkSocket:
    """One AF_NETLINK datagram socket with a large receive buffer."""

    def __init__(self, protocol: int, groups: int = 0, rcvbuf: int = DEFAULT_RCVBUF) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        try:
            self._grow_rcvbuf(rcvbuf)
            self.sock.bind((0, groups))
        except OSError:
            self.sock.close()
            raise
        self.portid = int(self.sock.getsockname()[0])
        # Reused for every receive; ``recv_raw`` callers read the datagram in place from ``buf``.
        self.buf = bytearray(256 * 1024)
        self._view = memoryview(self.buf)
        self._seq = 0

    def _grow_rcvbuf(self, size: int) -> None:
        # FORCE ignores net.core.rmem_max (needs CAP_NET_ADMIN); plain SO_RCVBUF is capped by it.
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)

    def fileno(self) -> int:
        return self.sock.fileno()

    def next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq

    def send(self, msg_type: int, payload: bytes, flags: int = NLM_F_REQUEST, seq: int | None = None) -> int:
        seq = self.next_seq() if seq is None else seq
        self.sock.sendto(pack(msg_type, payload, flags, seq, self.portid), (0, 0))
        return seq

    def recv(self, timeout: float | None = None) -> bytes | None:
        """One datagram, or None when nothing arrives within ``timeout`` (0 or None: do not wait).

        Raises NetlinkOverrun when the kernel dropped messages; the socket stays usable.
        A datagram larger than the buffer is returned cut (``parse`` then counts it).
        """
        if timeout:
            ready, _, _ = select.select([self.sock], [], [], timeout)
            if not ready:
                return None
        n = self.recv_raw()
        return bytes(self._view[:n]) if n else None

    def recv_raw(self) -> int:
        """Size of one queued datagram, now at the start of ``buf``; 0 when none is queued.
        The hot-path variant of ``recv``: no copy, no wait. Raises NetlinkOverrun."""
        try:
            return self.sock.recv_into(self.buf, len(self.buf), socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                raise NetlinkOverrun() from e
            raise

    def close(self) -> None:
        self.sock.close()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
