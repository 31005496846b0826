"""Nothing lost, nothing stored twice: the real agent, the real platform, SIGKILL in between.

Phase 1: the platform is down; the agent observes a burst of marked execs, spools them, and is
killed with SIGKILL. Phase 2: the platform comes back and a new agent on the same state directory
ships the spool. Every marker must be stored exactly once. Phase 3: a second burst while the
platform is up, and a SIGKILL in the middle of shipping: a restarted agent resends what was not
acknowledged, and idempotent ingest keeps every marker exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from heron.platform.client import list_events
from heron.platform.server import ServerHandle, start_in_thread
from sysutil import free_port

pytestmark = pytest.mark.privileged


def start_agent(url: str, data: Path, state: Path) -> subprocess.Popen[bytes]:
    cfg = state.parent / "agent.toml"
    cfg.write_text("health_interval_s = 3600\nbatch_max_delay_s = 0.2\n[dedupe]\nwindow_s = 0.2\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "heron.cli.main", "agent", "--config", str(cfg), "--platform", url,
         "--enrollment-token-file", str(data / "enrollment.token"), "--state-dir", str(state),
         "--output", "platform"],
        stderr=subprocess.PIPE)
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()
    assert "collectors" in line, line + (proc.stderr.read().decode() if proc.poll() is not None else "")
    return proc


def burst(tag: str, n: int) -> None:
    for i in range(n):
        subprocess.run(["/bin/true", f"heron-crash-{tag}-{i}"], check=True)


def stored_markers(server: ServerHandle, tag: str) -> Counter[str]:
    seen: Counter[str] = Counter()
    after = 0
    while True:
        page = list_events(server.url, server.credentials.admin_token, limit=1000, after_id=after,
                           filters={"type": "process.exec"})
        if not page:
            return seen
        for item in page:
            after = max(after, int(item["id"]))
            argv = item["event"]["process"].get("argv", [])
            if len(argv) == 2 and argv[1].startswith(f"heron-crash-{tag}-"):
                seen[argv[1]] += item["event"].get("count", 1)


def wait_for(pred: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def spool_bytes(state: Path) -> int:
    return sum(f.stat().st_size for f in (state / "spool").glob("*") if f.is_file())


def test_sigkill_loses_nothing_spooled_and_stores_nothing_twice(tmp_path: Path) -> None:
    data, state = tmp_path / "platform", tmp_path / "agent" / "state"
    state.parent.mkdir()
    port = free_port()
    server = start_in_thread("127.0.0.1", port, data)  # creates the tokens; the agent enrols
    url = server.url
    agent = start_agent(url, data, state)
    assert wait_for(lambda: (state / "agent.json").exists(), 15), "agent did not enrol"
    server.stop()

    # Phase 1: platform down, burst spooled, then SIGKILL.
    tag1, n = uuid.uuid4().hex[:6], 300
    before = spool_bytes(state)
    burst(tag1, n)
    assert wait_for(lambda: spool_bytes(state) > before + 2000, 15), "burst never reached the spool"
    time.sleep(1.0)  # past the dedupe window and batch delay: everything observed is spooled
    agent.send_signal(signal.SIGKILL)
    agent.wait(10)

    # Phase 2: platform back, new agent on the same state dir ships the spool.
    server = start_in_thread("127.0.0.1", port, data)
    try:
        agent = start_agent(url, data, state)
        assert wait_for(lambda: len(stored_markers(server, tag1)) == n, 30), (
            f"only {len(stored_markers(server, tag1))}/{n} spooled markers arrived after restart")

        # Phase 3: SIGKILL while shipping a burst; restart; exactly once.
        tag2 = uuid.uuid4().hex[:6]
        storm = threading.Thread(target=burst, args=(tag2, 4 * n))
        storm.start()
        assert wait_for(lambda: len(stored_markers(server, tag2)) > 0, 30), "shipping never started"
        os.kill(agent.pid, signal.SIGKILL)  # mid-stream: batches spooled, some sent, some not acked
        storm.join()
        agent.wait(10)
        agent = start_agent(url, data, state)
        time.sleep(3)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
        agent = None  # type: ignore[assignment]
        first = stored_markers(server, tag1)
        second = stored_markers(server, tag2)
        assert set(first.values()) == {1}, "a spooled batch was stored twice"
        assert second and set(second.values()) == {1}, "a resent batch was stored twice"
        assert all(int(m.rsplit("-", 1)[1]) < 4 * n for m in second)
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        server.stop()
