"""Events as the agent sends them (JSON-decoded), and a helper that stores a batch and runs the
pipeline in one transaction the way ingest does."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from starlette.testclient import TestClient

from heron.platform.analysis import Batch, Pipeline
from heron.platform.storage import schema
from heron.platform.storage.db import Database

AGENT = "agent-1"
HOST = "web-1"
BOOT = "0b1d2e3f"
NOW = time.time_ns()


def key(pid: int) -> str:
    return f"{BOOT}-{pid}-{pid * 10}"


def exec_event(pid: int, exe: str, argv: list[str], parents: list[tuple[int, str]], *, user: str = "www-data",
               ts: int = NOW, container_id: str | None = None) -> dict[str, Any]:
    """parents: (pid, exe), nearest first."""
    proc: dict[str, Any] = {"key": key(pid), "pid": pid, "ppid": parents[0][0] if parents else 0, "exe": exe,
                            "comm": exe.rpartition("/")[2][:15], "argv": argv, "uid": 33, "user": user,
                            "ancestors": [[p, key(p), e] for p, e in parents]}
    if parents:
        proc["parent_key"] = key(parents[0][0])
    if container_id:
        proc["container_id"] = container_id
    return {"type": "process.exec", "ts": ts, "source": "process.ebpf", "process": proc}


def flow_event(pid: int, exe: str, remote: str, port: int, *, ppid: int = 0, ts: int = NOW,
               remote_class: str = "public") -> dict[str, Any]:
    return {"type": "net.flow", "ts": ts, "source": "network.ebpf",
            "process": {"key": key(pid), "pid": pid, "ppid": ppid, "exe": exe, "user": "www-data"},
            "direction": "out", "protocol": "tcp", "local_addr": "10.0.0.5", "remote_addr": remote,
            "remote_port": port, "remote_class": remote_class, "connections": 1, "bytes_out": 100}


def ingest(db: Database, pipeline: Pipeline, events: list[dict[str, Any]], *, agent: str = AGENT,
           host: str = HOST) -> list[Any]:
    """Store the events and run the pipeline in one transaction (as ingest does)."""
    with db.begin() as conn:
        rows = []
        for ev in events:
            p = ev.get("process") or {}
            rows.append({"agent_id": agent, "hostname": host, "type": ev["type"], "ts": ev["ts"],
                         "key": p.get("key") or None, "pid": p.get("pid"), "exe": p.get("exe"),
                         "cmdline": " ".join([p.get("exe", ""), *p.get("argv", [])]), "data": json.dumps(ev)})
        conn.execute(sa.insert(schema.events), rows)
        return pipeline.run(conn, Batch(agent, host, time.time_ns(), events))


@dataclass
class Api:
    client: TestClient
    db: Database
    admin: dict[str, str]
    reader: dict[str, str]
    rules_dir: Path
