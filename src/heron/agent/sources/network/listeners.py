"""Listening sockets as open/closed records, from whatever table a collector reads.

A collector hands over the listening sockets it sees at each poll; this reports the ones that
appeared ("open") and disappeared ("closed") since the previous poll. The first poll reports
every listener once with source ``network.snapshot``. Identity is (network namespace, protocol,
address, port, pid): several sockets of one process on one address and port (SO_REUSEPORT,
threads) are one listener; two processes sharing a port are two.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from heron.schema.events import NetListen, ProcessRef

SNAPSHOT_SOURCE = "network.snapshot"


@dataclass(frozen=True, slots=True)
class Listener:
    netns: int
    protocol: str  # tcp | udp
    addr: str
    port: int
    pid: int  # 0: the owner could not be found


@dataclass(slots=True)
class _Open:
    uid: int
    since_ns: int


class ListenerInventory:
    def __init__(self, source: str) -> None:
        self.source = source
        self.open: dict[Listener, _Open] = {}
        self.started = False

    def update(self, current: Iterable[tuple[Listener, int]], now_ns: int) -> list[NetListen]:
        """``current``: every listener seen now with its socket's uid. Returns the changes."""
        source = self.source if self.started else SNAPSHOT_SOURCE
        self.started = True
        out: list[NetListen] = []
        seen: dict[Listener, int] = dict(current)
        for key, uid in seen.items():
            if key not in self.open:
                self.open[key] = _Open(uid, now_ns)
                out.append(_record(key, uid, "open", now_ns, now_ns, source))
        for key in [k for k in self.open if k not in seen]:
            o = self.open.pop(key)
            out.append(_record(key, o.uid, "closed", now_ns, o.since_ns, self.source))
        return out


def _record(key: Listener, uid: int, state: str, now_ns: int, since_ns: int, source: str) -> NetListen:
    process = ProcessRef(pid=key.pid, uid=uid) if key.pid > 0 else None
    return NetListen(ts=now_ns, source=source, process=process, protocol=key.protocol, addr=key.addr,
                     port=key.port, state=state, since_ts=since_ns)
