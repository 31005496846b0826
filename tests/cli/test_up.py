"""`heron up` as a new user runs it: agent + platform in one command, events visible through
`heron events`, the console served, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from sysutil import free_port

HERON = [sys.executable, "-m", "heron.cli.main"]
pytestmark = pytest.mark.privileged


def test_up_shows_processes_in_events_and_console(tmp_path: Path) -> None:
    port = free_port()
    cfg = tmp_path / "agent.toml"
    cfg.write_text("batch_max_delay_s = 0.2\n[dedupe]\nwindow_s = 0.2\n")
    up = subprocess.Popen([*HERON, "up", "--port", str(port), "--data", str(tmp_path / "data"),
                           "--config", str(cfg)], stderr=subprocess.PIPE, text=True)
    assert up.stderr is not None
    lines: list[str] = []
    try:
        while not any("collectors" in line for line in lines):
            line = up.stderr.readline()
            assert line, "heron up exited early:\n" + "".join(lines)
            lines.append(line)
        banner = "".join(lines)
        m = re.search(r"console: (http://127\.0\.0\.1:\d+)/#token=(\S+)", banner)
        assert m, banner
        url, token = m.group(1), m.group(2)
        assert token == (tmp_path / "data" / "platform" / "admin.token").read_text().strip()

        marker = f"heron-up-{uuid.uuid4().hex[:8]}"
        subprocess.run(["/bin/sh", "-c", f"exit 5 # {marker}"], check=False)
        found: list[dict[str, object]] = []
        deadline = time.monotonic() + 20
        while not found and time.monotonic() < deadline:
            out = subprocess.run([*HERON, "events", "--url", url, "--token", token, "--json", "--limit", "200"],
                                 capture_output=True, text=True, check=True).stdout
            found = [json.loads(x) for x in out.splitlines() if marker in x]
            time.sleep(0.3)
        assert found, "the process never reached the platform"
        ev = found[0]["event"]
        assert isinstance(ev, dict) and ev["type"] == "process.exec"
        assert ev["process"]["argv"] == ["/bin/sh", "-c", f"exit 5 # {marker}"]

        page = urllib.request.urlopen(f"{url}/", timeout=5).read().decode()
        assert "<script" in page and "heron" in page.lower()
        assert (tmp_path / "data" / "platform" / "admin.password").stat().st_mode & 0o777 == 0o600
        assert f"password in {tmp_path / 'data' / 'platform' / 'admin.password'}" in banner

        # A program run from a temporary directory raises an alert, which `heron alerts --json` (no
        # --url: the running `heron up` recorded where it is) lists with the fields scripts rely on.
        dropped = tmp_path / "dropped-tool"
        dropped.write_bytes(Path("/bin/true").read_bytes())
        dropped.chmod(0o755)
        run = subprocess.Popen([str(dropped)])
        run.wait(10)
        mine: list[dict[str, object]] = []
        deadline = time.monotonic() + 20
        while not mine and time.monotonic() < deadline:
            out = subprocess.run([*HERON, "alerts", "--json"], capture_output=True, text=True, check=True).stdout
            mine = [a for a in json.loads(out) if a.get("exe") == str(dropped)]
            time.sleep(0.3)
        assert mine, "no alert for the program run from /tmp"
        alert = mine[0]
        assert alert["rule"] == "Program run from a temporary directory" and alert["kind"] == "rule"
        assert alert["severity"] in ("medium", "high", "critical") and alert["pid"] == run.pid
        assert alert["host"] and isinstance(alert["time"], str) and alert["time"].startswith("20")
    finally:
        up.send_signal(signal.SIGTERM)
        rc = up.wait(30)
    assert rc == 0
