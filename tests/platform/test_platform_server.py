"""The real server on a loopback ephemeral port: data dir bootstrap, ingest and query over HTTP."""

from __future__ import annotations

import io
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from platform_helpers import batch_body, exec_event, exit_event, host_facts

from heron.platform.client import events_command, follow_events, list_agents, list_events
from heron.platform.server import ServerHandle, start_in_thread
from sysutil import free_port

pytestmark = pytest.mark.timeout(60)


def enroll_and_ingest(url: str, enrollment_token: str, events: list[object], batch: str) -> tuple[str, str]:
    r = httpx.post(f"{url}/api/v1/enroll", headers={"Authorization": f"Bearer {enrollment_token}"},
                   json={"agent_version": "0.1.0", "host": host_facts("loop-host")})
    assert r.status_code == 201
    agent_id, token = r.json()["agent_id"], r.json()["token"]
    ingest_over_http(url, agent_id, token, events, batch)
    return agent_id, token


def ingest_over_http(url: str, agent_id: str, token: str, events: list[object], batch: str) -> None:
    headers = {"Authorization": f"Bearer {token}", "X-Heron-Agent": agent_id, "X-Heron-Batch": batch,
               "Content-Type": "application/x-msgpack", "Content-Encoding": "zstd"}
    r = httpx.post(f"{url}/api/v1/ingest", content=batch_body(events), headers=headers)  # type: ignore[arg-type]
    assert r.status_code == 200, r.text


def test_first_start_creates_private_data_dir(server: ServerHandle, tmp_path: Path) -> None:
    data = tmp_path / "platform"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("admin.token", "enrollment.token", "heron.db"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    assert (data / "admin.token").read_text().strip() == server.credentials.admin_token
    assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"


def test_ingest_and_query_over_real_http(server: ServerHandle) -> None:
    assert httpx.get(f"{server.url}/api/v1/health").json()["status"] == "ok"
    events = [exec_event(77, "/usr/bin/id", ["id", "-u"]), exit_event(77, "/usr/bin/id", 0)]
    agent_id, _ = enroll_and_ingest(server.url, server.credentials.enrollment_token, events, "s1:0")
    admin = server.credentials.admin_token
    got = list_events(server.url, admin, type="process.exec")
    assert len(got) == 1 and got[0]["event"]["process"]["argv"] == ["id", "-u"]
    assert got[0]["agent_id"] == agent_id and got[0]["host"] == "loop-host"
    assert [a["agent_id"] for a in list_agents(server.url, admin)] == [agent_id]
    out = io.StringIO()
    assert events_command(server.url, admin, False, {}, False, out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "process.exec pid=77 user=root /usr/bin/id -- id -u" in lines[0]
    assert "process.exit pid=77 /usr/bin/id exit=0" in lines[1]


def test_restart_reuses_tokens_and_data(tmp_path: Path) -> None:
    data = tmp_path / "platform"
    first = start_in_thread("127.0.0.1", 0, data)
    try:
        enroll_and_ingest(first.url, first.credentials.enrollment_token, [exec_event(1, "/a", ["a"])], "b:1")
        creds = first.credentials
    finally:
        first.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{first.url}/api/v1/health")
    second = start_in_thread("127.0.0.1", 0, data)
    try:
        assert second.credentials == creds
        assert len(list_events(second.url, creds.admin_token)) == 1
    finally:
        second.stop()


def test_follow_sees_new_events(server: ServerHandle) -> None:
    agent_id, token = enroll_and_ingest(server.url, server.credentials.enrollment_token,
                                        [exec_event(1, "/old", ["old"])], "f:0")
    stop = threading.Event()
    out = io.StringIO()
    result: list[int] = []
    follower = threading.Thread(target=lambda: result.append(events_command(
        server.url, server.credentials.admin_token, True, {"type": "process.exec"}, True, out,
        limit=10, interval=0.05, stop=stop)))
    follower.start()
    try:
        time.sleep(0.2)
        ingest_over_http(server.url, agent_id, token, [exec_event(2, "/new", ["new", "\x1b[2J"]),
                                                       exit_event(2, "/new", 1)], "f:1")
        deadline = time.monotonic() + 5
        while out.getvalue().count("\n") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.set()
        follower.join(5)
    assert result == [0]
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and '"/old"' in lines[0] and '"/new"' in lines[1]  # exit filtered out
    assert "\x1b" not in out.getvalue()  # JSON lines escape control characters


def test_follow_events_generator_starts_after_newest(server: ServerHandle) -> None:
    agent_id, token = enroll_and_ingest(server.url, server.credentials.enrollment_token,
                                        [exec_event(1, "/before", [])], "g:0")
    stop = threading.Event()
    gen = follow_events(server.url, server.credentials.admin_token, interval=0.05, stop=stop)
    ingest_over_http(server.url, agent_id, token, [exec_event(3, "/after", [])], "g:1")
    guard = threading.Timer(15, stop.set)  # fail, don't hang, if the event never shows up
    guard.start()
    item = next(gen, None)
    stop.set()
    guard.cancel()
    assert item is not None and item["event"]["process"]["exe"] == "/after"


def test_bad_token_and_unreachable_server_fail_cleanly(server: ServerHandle,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert events_command(server.url, "wrong", False, {}, False, io.StringIO()) == 1
    assert "HTTP 401" in capsys.readouterr().err
    closed = free_port()
    assert events_command(f"http://127.0.0.1:{closed}", "t", False, {}, False, io.StringIO()) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_serve_blocks_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    code = ("import sys; from pathlib import Path; from heron.platform.server import serve; "
            "serve('127.0.0.1', int(sys.argv[1]), Path(sys.argv[2]), log_level='warning')")
    proc = subprocess.Popen([sys.executable, "-c", code, str(port), str(tmp_path / "p")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert f"heron platform on http://127.0.0.1:{port}" in err
    assert "created admin token" in err or (tmp_path / "p" / "admin.token").exists()
