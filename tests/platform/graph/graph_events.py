"""Real events (the schema's structs, JSON-decoded as ingest hands them to the pipeline) for graph tests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from starlette.testclient import TestClient

from heron.platform.analysis import Batch
from heron.platform.storage.db import Database
from heron.schema.events import (
    Ancestor,
    DnsQuery,
    Event,
    FileChange,
    NetFlow,
    NetListen,
    PackageActivity,
    PackageUse,
    Process,
    ProcessExec,
    ProcessRef,
    process_key,
)

BOOT = "0123456789abcdef0123456789abcdef"
SEC = 1_000_000_000
T0 = 1_700_000_000 * SEC


def as_json(event: Event) -> dict[str, Any]:
    decoded: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(event))
    return decoded


def key(pid: int) -> str:
    return process_key(BOOT, pid, 1000 + pid)


def exec_(pid: int, exe: str, argv: list[str], *, parent: tuple[int, str] | None = None, user: str = "root",
          ts: int = T0, container_id: str | None = None) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if parent is not None:
        extra = {"ppid": parent[0], "parent_key": key(parent[0]),
                 "ancestors": [Ancestor(parent[0], key(parent[0]), parent[1])]}
    return as_json(ProcessExec(ts=ts, source="process.test", process=Process(
        key=key(pid), pid=pid, exe=exe, argv=argv, uid=0 if user == "root" else 1000, user=user,
        start_ticks=1000 + pid, container_id=container_id, **extra)))


def ref(pid: int, exe: str, user: str = "root") -> ProcessRef:
    return ProcessRef(key=key(pid), pid=pid, exe=exe, user=user, uid=0 if user == "root" else 1000)


def flow(pid: int, exe: str, addr: str, port: int, domain: str | None = None, ts: int = T0) -> dict[str, Any]:
    return as_json(NetFlow(ts=ts, source="network.test", process=ref(pid, exe), direction="out", protocol="tcp",
                           local_addr="10.0.0.5", remote_addr=addr, remote_port=port, domain=domain, connections=1))


def listen(pid: int, exe: str, port: int, ts: int = T0) -> dict[str, Any]:
    return as_json(NetListen(ts=ts, source="network.test", process=ref(pid, exe), protocol="tcp", addr="0.0.0.0",
                             port=port, state="open"))


def dns(pid: int, exe: str, query: str, ts: int = T0) -> dict[str, Any]:
    return as_json(DnsQuery(ts=ts, source="network.test", process=ref(pid, exe), query=query, qtype="A",
                            answers=["93.184.216.34"]))


def write(pid: int, exe: str, path: str, ts: int = T0) -> dict[str, Any]:
    return as_json(FileChange(ts=ts, source="file.test", path=path, action="create", attribution="process",
                              process=ref(pid, exe)))


def uses(purl: str, procs: list[ProcessRef], ts: int = T0) -> dict[str, Any]:
    return as_json(PackageActivity(ts=ts, source="packages.test", scope="host",
                                   active=[PackageUse(purl=purl, processes=procs)]))


def batch(agent: str, host: str, received: int, *events: dict[str, Any]) -> Batch:
    return Batch(agent_id=agent, hostname=host, received=received, events=list(events))


@dataclass
class GraphApi:
    client: TestClient
    db: Database
    admin: dict[str, str]
    reader: dict[str, str]
