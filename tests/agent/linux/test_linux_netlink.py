"""Netlink framing: whole, several, cut and malformed buffers; errors and the audit length quirk."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from heron.agent.linux.netlink import (
    NLMSG_DONE,
    NLMSG_ERROR,
    NLMSG_HDR,
    NetlinkSocket,
    align,
    error_code,
    pack,
    parse,
)


def test_several_messages_in_one_buffer_with_padding() -> None:
    buf = pack(100, b"abc", seq=1) + b"\0" + pack(101, b"", seq=2) + pack(NLMSG_DONE, b"1234", seq=3)
    msgs, bad = parse(buf)
    assert bad == 0
    assert [(m.type, m.seq, m.payload) for m in msgs] == [
        (100, 1, b"abc"), (101, 2, b""), (NLMSG_DONE, 3, b"1234")]
    assert align(5) == 8 and align(8) == 8


@pytest.mark.parametrize("cut", [1, 10, 17, 19])
def test_truncated_buffer_is_counted_not_raised(cut: int) -> None:
    whole = pack(100, b"abcd", seq=1)
    msgs, bad = parse(pack(99, b"ok") + b"\0\0" + whole[:cut])
    assert [m.type for m in msgs] == [99]
    assert bad == 1


def test_length_smaller_than_header_is_malformed() -> None:
    buf = NLMSG_HDR.pack(4, 100, 0, 0, 0) + b"xxxx"
    assert parse(buf) == ([], 1)


def test_audit_length_quirk_only_when_asked() -> None:
    payload = b"audit(1.002:3): a=b"
    buf = NLMSG_HDR.pack(len(payload), 1300, 0, 0, 0) + payload
    msgs, bad = parse(buf, header_excluded_len=True)
    assert bad == 0 and msgs[0].payload == payload
    # A standard length still parses with the quirk allowed.
    msgs, bad = parse(pack(1300, payload), header_excluded_len=True)
    assert bad == 0 and msgs[0].payload == payload


def test_error_code() -> None:
    ack = parse(pack(NLMSG_ERROR, struct.pack("=i", 0) + pack(1000, b"")))[0][0]
    nak = parse(pack(NLMSG_ERROR, struct.pack("=i", -errno.EPERM)))[0][0]
    short = parse(pack(NLMSG_ERROR, b"\1"))[0][0]
    assert (error_code(ack), error_code(nak), error_code(short)) == (0, errno.EPERM, errno.EPROTO)


@pytest.mark.privileged
def test_socket_gets_a_large_receive_buffer() -> None:
    nl = NetlinkSocket(socket.NETLINK_ROUTE, rcvbuf=8 * 1024 * 1024)
    try:
        # The kernel doubles the value it was given (bookkeeping overhead).
        assert nl.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 8 * 1024 * 1024
        assert nl.recv(0) is None
    finally:
        nl.close()
