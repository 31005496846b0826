"""The platform sink end to end against a small real HTTP server speaking docs/wire.md.

The server below implements just enough of the platform (enrolment, host facts, ingest with
de-duplication by batch id) and can be switched to fail (503, 400, store-then-fail) or be down.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import secrets
import signal
import socket
import ssl
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from heron.agent.health import Health
from heron.agent.sinks.encode import DecodeError, decode_batch
from heron.agent.sinks.platform import PlatformSink
from heron.schema.events import HostInfo, ProcessExit

ENROLMENT = "enrol-" + secrets.token_hex(8)
HOST = HostInfo(hostname="test-host", machine_id="m" * 32, boot_id="b" * 32, kernel="6.18",
                distro="debian:12", arch="x86_64")


class FakePlatform:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.lock = threading.Lock()
        self.agents: dict[str, str] = {}  # token -> agent id
        self.batches: dict[tuple[str, str], list[ProcessExit]] = {}  # (agent, batch id) -> events
        self.mode = "ok"  # ok | 503 | 400 | store_then_503 | slow
        self.calls: dict[str, int] = {"enroll": 0, "self": 0, "ingest": 0, "duplicate": 0}
        self.port = 0
        self._server: http.server.ThreadingHTTPServer | None = None
        self._conns: set[socket.socket] = set()

    # -- control --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> None:
        platform = self

        class Handler(Platform):
            fake = platform

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        if self.tls is not None:
            server.socket = self.tls.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        """Down: refuse new connections and cut the kept-alive ones."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        with self.lock:
            for s in list(self._conns):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def events(self) -> list[ProcessExit]:
        with self.lock:
            return [e for evs in self.batches.values() for e in evs]


class Platform(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakePlatform

    def setup(self) -> None:
        super().setup()
        with self.fake.lock:
            self.fake._conns.add(self.connection)

    def finish(self) -> None:
        with self.fake.lock:
            self.fake._conns.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:
        pass

    def reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def agent(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return self.fake.agents.get(auth.removeprefix("Bearer "))

    def do_POST(self) -> None:
        fake = self.fake
        body = self.body()
        if self.path == "/api/v1/enroll":
            fake.calls["enroll"] += 1
            if self.headers.get("Authorization") != f"Bearer {ENROLMENT}":
                return self.reply(401, {"error": "bad enrolment token"})
            assert json.loads(body)["host"]["hostname"] == "test-host"
            token, agent_id = secrets.token_hex(16), secrets.token_hex(16)
            fake.agents[token] = agent_id
            return self.reply(201, {"agent_id": agent_id, "token": token})
        if self.path != "/api/v1/ingest":
            return self.reply(404, {})
        fake.calls["ingest"] += 1
        agent_id = self.agent()
        if agent_id is None:
            return self.reply(401, {})
        if self.headers.get("X-Heron-Agent") != agent_id:
            return self.reply(403, {})
        if (self.headers.get("Content-Type") != "application/x-msgpack"
                or self.headers.get("Content-Encoding") != "zstd"):
            return self.reply(415, {})
        if fake.mode in ("503", "400"):
            return self.reply(int(fake.mode), {})
        try:
            events = decode_batch(body)
        except (DecodeError, ValueError):
            return self.reply(400, {})
        key = (agent_id, self.headers["X-Heron-Batch"])
        with fake.lock:
            if key in fake.batches:
                fake.calls["duplicate"] += 1
                return self.reply(200, {"accepted": 0, "duplicate": True})
            fake.batches[key] = [e for e in events if isinstance(e, ProcessExit)]
        if fake.mode == "store_then_503":  # stored, but the agent never hears so
            return self.reply(503, {})
        if fake.mode == "slow":
            time.sleep(0.3)
        return self.reply(200, {"accepted": len(events), "duplicate": False})

    def do_PUT(self) -> None:
        self.body()
        if self.path != "/api/v1/agents/self":
            return self.reply(404, {})
        if self.agent() is None:
            return self.reply(401, {})
        self.fake.calls["self"] += 1
        self.reply(200, {})


@pytest.fixture
def platform() -> Iterator[FakePlatform]:
    p = FakePlatform()
    p.start()
    yield p
    p.stop()


def make_sink(platform: FakePlatform, state: Path, health: Health | None = None,
              **kw: object) -> PlatformSink:
    opts: dict[str, object] = {"batch_max_events": 20, "batch_max_delay_s": 0.05, "backoff_initial_s": 0.05,
                               "backoff_max_s": 0.2, "timeout_s": 3.0}
    opts.update(kw)
    return PlatformSink(platform.url, ENROLMENT, state, HOST, health or Health(),
                        spool_max_bytes=1 << 20, spool_segment_bytes=64 << 10, **opts)  # type: ignore[arg-type]


def exits(n: int, prefix: str = "k") -> list[ProcessExit]:
    return [ProcessExit(ts=time.time_ns(), source="test", key=f"{prefix}{i}", pid=i + 1) for i in range(n)]


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def keys(platform: FakePlatform) -> list[str]:
    return sorted(e.key for e in platform.events())


def test_delivers_coalesced_batches_and_keeps_its_enrolment(platform: FakePlatform, tmp_path: Path) -> None:
    health = Health()
    sink = make_sink(platform, tmp_path, health)
    sent = exits(95)
    for i in range(0, 95, 3):  # the pipeline hands over a few events at a time
        sink.write(sent[i:i + 3])
    assert sink.drain(timeout=10)
    assert keys(platform) == sorted(e.key for e in sent)
    assert len(platform.batches) == 5  # 20 events per record, not one per write
    assert health.get("sink.platform.sent_events") == 95
    assert health.get("sink.platform.sent_batches") == 5
    assert health.get("spool.pending") == 0
    sink.close()
    creds = tmp_path / "agent.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    assert platform.calls["enroll"] == 1 and platform.calls["self"] == 1

    sink = make_sink(platform, tmp_path)  # a restart reuses the identity, and refreshes host facts
    sink.write(exits(1, "again"))
    assert sink.drain(timeout=10)
    sink.close()
    assert platform.calls["enroll"] == 1 and platform.calls["self"] == 2
    assert len(platform.agents) == 1


def test_outage_and_503_lose_nothing_and_store_nothing_twice(platform: FakePlatform, tmp_path: Path) -> None:
    health = Health()
    platform.stop()  # down before the agent starts: it cannot even enrol
    sink = make_sink(platform, tmp_path, health)
    sink.write(exits(50, "down"))
    time.sleep(0.5)
    assert health.get("sink.platform.retries") >= 2
    assert health.get("spool.pending") >= 2  # spooled on time even while backing off
    platform.start()  # back on the same port
    assert sink.drain(timeout=10)
    assert keys(platform) == sorted(f"down{i}" for i in range(50))

    platform.mode = "503"
    retries = health.get("sink.platform.retries")
    sink.write(exits(30, "busy"))
    wait_for(lambda: health.get("sink.platform.retries") >= retries + 2)
    assert not sink.drain(timeout=0.2)
    platform.mode = "ok"
    assert sink.drain(timeout=10)

    platform.mode = "store_then_503"  # stored, the response is lost: the resend is a duplicate
    sink.write(exits(20, "lost"))
    wait_for(lambda: platform.calls["ingest"] > 0 and len(keys(platform)) == 100)
    platform.mode = "ok"
    assert sink.drain(timeout=10)
    assert platform.calls["duplicate"] >= 1
    assert health.get("sink.platform.duplicates") >= 1
    got = keys(platform)
    assert len(got) == len(set(got)) == 100
    sink.close()


def test_platform_down_mid_session_reconnects(platform: FakePlatform, tmp_path: Path) -> None:
    sink = make_sink(platform, tmp_path)
    sink.write(exits(20, "a"))
    assert sink.drain(timeout=10)
    platform.stop()  # the kept-alive connection is cut
    sink.write(exits(20, "b"))
    assert not sink.drain(timeout=0.3)
    platform.start()
    assert sink.drain(timeout=10)
    sink.close()
    assert len(keys(platform)) == 40


def test_malformed_batch_is_dropped_and_counted(platform: FakePlatform, tmp_path: Path) -> None:
    health = Health()
    sink = make_sink(platform, tmp_path, health)
    platform.mode = "400"
    sink.write(exits(20))
    assert sink.drain(timeout=10)  # settled: dropped, not retried forever
    assert health.get("sink.platform.dropped_batches") == 1
    assert health.get("sink.platform.dropped_events") == 20
    assert platform.events() == []
    sink.close()


def test_revoked_token_enrols_again(platform: FakePlatform, tmp_path: Path) -> None:
    health = Health()
    sink = make_sink(platform, tmp_path, health)
    sink.write(exits(20, "before"))
    assert sink.drain(timeout=10)
    platform.agents.clear()  # the platform forgot/revoked the agent
    sink.write(exits(20, "after"))
    assert sink.drain(timeout=10)
    sink.close()
    assert platform.calls["enroll"] == 2
    assert health.get("sink.platform.enrolments") == 2
    assert len(keys(platform)) == 40


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from heron.agent.sinks.platform import PlatformSink
    from heron.schema.events import HostInfo, ProcessExit
    url, token, state, n = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    host = HostInfo(hostname="test-host", machine_id="m" * 32, boot_id="b" * 32, kernel="6.18",
                    distro="debian:12", arch="x86_64")
    sink = PlatformSink(url, token, state, host, batch_max_events=10, batch_max_delay_s=0.05,
                        backoff_initial_s=0.05, backoff_max_s=0.2, timeout_s=3.0)
    for i in range(n):
        sink.write([ProcessExit(ts=time.time_ns(), key=f"crash{i}", pid=i + 1)])
    sink.drain(timeout=0.01)  # spools the tail of the buffer; delivery may or may not happen
    print("spooled", flush=True)
    time.sleep(60)
""")


def run_child_and_kill(platform: FakePlatform, state: Path, n: int, when: Callable[[], bool]) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, platform.url, ENROLMENT, str(state), str(n)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "spooled"
        wait_for(when)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL


def test_sigkill_with_platform_down_then_restart_delivers_exactly_once(platform: FakePlatform,
                                                                       tmp_path: Path) -> None:
    n = 137
    platform.stop()
    run_child_and_kill(platform, tmp_path, n, lambda: True)
    platform.start()
    sink = make_sink(platform, tmp_path)
    assert sink.drain(timeout=10)
    sink.close()
    assert keys(platform) == sorted(f"crash{i}" for i in range(n))


def test_sigkill_mid_delivery_resend_is_deduplicated(platform: FakePlatform, tmp_path: Path) -> None:
    n = 200
    platform.mode = "slow"  # each batch is stored, then the answer takes 0.3 s: kill in that window
    run_child_and_kill(platform, tmp_path, n, lambda: len(platform.batches) >= 3)
    stored_before = len(platform.batches)
    assert stored_before < n // 10
    platform.mode = "ok"
    sink = make_sink(platform, tmp_path)
    assert sink.drain(timeout=10)
    sink.close()
    assert platform.calls["duplicate"] >= 1  # the batch in flight at the kill was sent again
    got = keys(platform)
    assert got == sorted(f"crash{i}" for i in range(n))


@pytest.fixture
def tls_platform(tmp_path: Path) -> Iterator[FakePlatform]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    p = FakePlatform(tls=ctx)
    p.start()
    yield p
    p.stop()


def test_https_verifies_the_platform_certificate(tls_platform: FakePlatform, tmp_path: Path) -> None:
    untrusted = make_sink(tls_platform, tmp_path / "a")  # system CAs only: the self-signed cert fails
    untrusted.write(exits(20, "untrusted"))
    assert not untrusted.drain(timeout=0.5)
    untrusted.close()
    assert tls_platform.calls["enroll"] == 0

    trusted = make_sink(tls_platform, tmp_path / "b", ca_file=str(tmp_path / "cert.pem"))
    trusted.write(exits(20, "trusted"))
    assert trusted.drain(timeout=10)
    trusted.close()
    assert keys(tls_platform) == sorted(f"trusted{i}" for i in range(20))


def test_unreadable_spool_is_retried_and_loses_nothing(platform: FakePlatform, tmp_path: Path) -> None:
    health = Health()
    sink = make_sink(platform, tmp_path, health)
    seg = next((tmp_path / "spool").glob("*.seg"))  # the segment the writer appends to
    aside = seg.with_suffix(".aside")
    seg.rename(aside)  # the writer's descriptor follows the file; readers open the path
    seg.mkdir()  # so every read fails with EISDIR: an I/O error, not corruption
    try:
        sink.write(exits(40, "io"))
        wait_for(lambda: health.get("spool.read_errors") >= 2)
        assert sink._thread.is_alive() and platform.events() == []
        assert health.get("spool.corrupt_skips") == 0 and sink.spool.pending_records == 2
        assert any("spool unreadable" in m for m in health.messages)
    finally:
        seg.rmdir()
        aside.rename(seg)
    assert sink.drain(timeout=10)
    assert keys(platform) == sorted(f"io{i}" for i in range(40))
    assert health.get("spool.dropped_records") == 0
    sink.close()
