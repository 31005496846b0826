"""Helpers of the platform tests: enrolment, real event batches, ingest requests."""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import zstandard
from starlette.testclient import TestClient

from heron.platform.server import Credentials
from heron.platform.storage.sql import SqlStorage
from heron.schema.events import (
    AgentHealth,
    Event,
    Process,
    ProcessExec,
    ProcessExit,
    encode_events,
    process_key,
)

# The PostgreSQL server of the storage tests (conftest.py: pg_url); scripts/ci-postgres.sh sets it up.
PG_SERVER = os.environ.get("HERON_TEST_PG", "postgresql://root@/postgres?host=/var/run/postgresql")
BOOT_ID = "0123456789abcdef0123456789abcdef"
_batch_ids = itertools.count(1)


@dataclass
class Platform:
    client: TestClient
    storage: SqlStorage
    creds: Credentials
    data_dir: Path

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    @property
    def admin(self) -> dict[str, str]:
        return self.auth(self.creds.admin_token)


@dataclass
class EnrolledAgent:
    agent_id: str
    token: str


def host_facts(hostname: str = "web-1") -> dict[str, str]:
    return {"hostname": hostname, "machine_id": "m" * 32, "boot_id": BOOT_ID, "kernel": "6.18.0",
            "distro": "debian:12", "arch": "x86_64"}


def enroll(platform: Platform, hostname: str = "web-1") -> EnrolledAgent:
    r = platform.client.post("/api/v1/enroll", headers=platform.auth(platform.creds.enrollment_token),
                             json={"name": None, "agent_version": "0.1.0", "host": host_facts(hostname)})
    assert r.status_code == 201, r.text
    body = r.json()
    return EnrolledAgent(body["agent_id"], body["token"])


def exec_event(pid: int, exe: str, argv: list[str], ts: int | None = None, **process: object) -> ProcessExec:
    key = process_key(BOOT_ID, pid, 1000 + pid)
    return ProcessExec(ts=ts or time.time_ns(), source="process.test",
                       process=Process(key=key, pid=pid, exe=exe, argv=argv, uid=0, user="root",
                                       start_ticks=1000 + pid, **process))  # type: ignore[arg-type]


def exit_event(pid: int, exe: str, code: int, ts: int | None = None) -> ProcessExit:
    return ProcessExit(ts=ts or time.time_ns(), source="process.test",
                       key=process_key(BOOT_ID, pid, 1000 + pid), pid=pid, exe=exe, exit_code=code)


def health_event(ts: int | None = None, dropped: int = 0) -> AgentHealth:
    return AgentHealth(ts=ts or time.time_ns(), source="agent", agent_version="0.1.0", uptime_s=1.5,
                       collectors={"process": "ebpf"}, counters={"process.ebpf.dropped": dropped},
                       cpu_s=0.1, rss_bytes=30 << 20)


def compress(payload: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(payload)


def batch_body(events: list[Event]) -> bytes:
    return compress(encode_events(events))


def new_batch_id() -> str:
    return f"spool-{next(_batch_ids)}:0"


def ingest(platform: Platform, agent: EnrolledAgent, body: bytes, batch_id: str | None = None,
           **headers: str) -> tuple[int, dict[str, object]]:
    h = {"Authorization": f"Bearer {agent.token}", "X-Heron-Agent": agent.agent_id,
         "X-Heron-Batch": batch_id or new_batch_id(), "Content-Type": "application/x-msgpack",
         "Content-Encoding": "zstd"}
    h.update({k.replace("_", "-"): v for k, v in headers.items()})
    r = platform.client.post("/api/v1/ingest", content=body, headers=h)
    return r.status_code, r.json()


