"""Open sockets inside another network namespace (setns(2) through ctypes; Python 3.11 has none).

A socket belongs to the namespace of the thread that created it, for its whole life. So
``call_in_netns`` runs a factory in a short-lived thread that first joins the target namespace
and then creates whatever it returns (a sock_diag netlink socket, an AF_PACKET socket); the
caller keeps using it from any thread. The throwaway thread is the point: switching the
caller's own thread there and back would leave it in the wrong namespace if the way back
failed. Needs CAP_SYS_ADMIN (setns); otherwise ``PermissionError``.

An open socket keeps its namespace alive: close it when the namespace's processes are gone.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from heron.agent.linux.netlink import NetlinkSocket

CLONE_NEWNET = 0x40000000
T = TypeVar("T")

_libc: ctypes.CDLL | None = None


def _setns() -> Callable[[int, int], int]:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
        _libc.setns.restype = ctypes.c_int
    fn: Callable[[int, int], int] = _libc.setns
    return fn


def netns_inode(path: str) -> int:
    """Identity of the namespace at ``path`` (/proc/PID/ns/net, /run/netns/NAME): its nsfs inode."""
    return os.stat(path).st_ino


def call_in_netns(path: str, factory: Callable[[], T], timeout_s: float = 5.0) -> T:
    """Run ``factory`` in a fresh thread that joined the network namespace at ``path``.

    Raises what opening the namespace, setns or the factory raised (FileNotFoundError /
    ProcessLookupError when the namespace's process is gone, PermissionError without
    CAP_SYS_ADMIN), TimeoutError if the thread does not finish.
    """
    result: list[T] = []
    error: list[BaseException] = []

    def body() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _setns()(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({path}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(factory())
        except BaseException as e:
            error.append(e)

    th = threading.Thread(target=body, name="heron-netns", daemon=True)
    th.start()
    th.join(timeout_s)
    if th.is_alive():
        raise TimeoutError(f"opening a socket in {path} did not finish")
    if error:
        raise error[0]
    return result[0]


def netlink_in_netns(path: str, protocol: int, rcvbuf: int = 4 * 1024 * 1024) -> NetlinkSocket:
    """A netlink socket bound inside the namespace at ``path``."""
    return call_in_netns(path, lambda: NetlinkSocket(protocol, rcvbuf=rcvbuf))
