"""Enrichment the platform adds at ingest: the class of each flow's remote endpoint.

``remote_class`` is loopback, private, public, link_local or multicast from the address alone,
or ``container`` when the address belongs to a container on the same host: an address seen as
the local side of a flow or listener of a containerised process of that agent. That knowledge
lives in memory per agent (bounded) and fills as containers talk, so a container's address is
recognised from its first flow on; a server restart relearns it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from heron.schema.addresses import address_class
from heron.schema.events import AnyEvent, NetFlow, NetListen

MAX_ADDRESSES_PER_AGENT = 4096


class ContainerAddresses:
    """Addresses of one host's containers (address -> container id), least recently seen dropped first."""

    def __init__(self, limit: int = MAX_ADDRESSES_PER_AGENT) -> None:
        self.limit = limit
        self.addrs: OrderedDict[str, str] = OrderedDict()
        self.lock = threading.Lock()  # ingest runs in several worker threads

    def learn(self, addr: str, container_id: str) -> None:
        if address_class(addr) in ("loopback", "unspecified", "invalid"):
            return
        self.addrs[addr] = container_id
        self.addrs.move_to_end(addr)
        while len(self.addrs) > self.limit:
            self.addrs.popitem(last=False)

    def __contains__(self, addr: str) -> bool:
        return addr in self.addrs


def classify_endpoints(known: ContainerAddresses, events: Sequence[AnyEvent]) -> None:
    with known.lock:
        _classify(known, events)


def _classify(known: ContainerAddresses, events: Sequence[AnyEvent]) -> None:
    for ev in events:
        if isinstance(ev, NetFlow) and ev.process is not None and ev.process.container_id:
            known.learn(ev.local_addr, ev.process.container_id)
        elif isinstance(ev, NetListen) and ev.process is not None and ev.process.container_id:
            known.learn(ev.addr, ev.process.container_id)
    for ev in events:
        if isinstance(ev, NetFlow):
            ev.remote_class = "container" if ev.remote_addr in known else address_class(ev.remote_addr)
