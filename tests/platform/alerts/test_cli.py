"""``heron alerts`` against a real server (a thread on a loopback port), as scripts call it."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

from alert_events import HOST, NOW, exec_event, ingest

from heron.platform.alerts import AlertRecorder, RuleEngine, set_state
from heron.platform.analysis import Pipeline
from heron.platform.server import start_in_thread

HERON = [sys.executable, "-m", "heron.cli.main"]


def run(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HERON_TOKEN"}
    return subprocess.run([*HERON, "alerts", *args, "--data-dir", str(data_dir)], capture_output=True, text=True,
                          timeout=60, env=env, check=False)


def test_alerts_json_shape_and_table(tmp_path: Path) -> None:
    with start_in_thread("127.0.0.1", 0, tmp_path / "platform") as server:
        p = Pipeline(rules=RuleEngine(()), alerts=AlertRecorder())
        ingest(server.storage.db, p, [exec_event(200, "/usr/bin/bash", ["bash", "-i"], [(100, "/usr/sbin/nginx")])])
        ingest(server.storage.db, p, [exec_event(7, "/tmp/.x/miner", ["/tmp/.x/miner"], [(6, "/usr/bin/bash")],
                                                 ts=NOW + 10**9)], agent="a2", host="db-1")
        with server.storage.db.begin() as c:
            set_state(c, 2, "closed", "test")

        r = run("--json", "--url", server.url, data_dir=tmp_path)  # token: the local admin token file
        assert r.returncode == 0, r.stderr
        alerts = json.loads(r.stdout)
        assert isinstance(alerts, list) and len(alerts) == 2
        by_host = {a["host"]: a for a in alerts}
        web = by_host[HOST]
        assert (web["rule"], web["kind"], web["severity"], web["pid"], web["exe"], web["state"]) == (
            "Shell spawned by a server process", "rule", "high", 200, "/usr/bin/bash", "open")
        assert web["time_ns"] == NOW
        assert round(dt.datetime.fromisoformat(web["time"]).timestamp() * 1000) == NOW // 10**6
        assert web["time"].endswith("Z")
        assert by_host["db-1"]["rule"] == "Program run from a temporary directory"

        r = run("--json", "--state", "open", "--server", server.url, data_dir=tmp_path)
        assert [a["host"] for a in json.loads(r.stdout)] == [HOST]

        r = run("--url", server.url, data_dir=tmp_path)
        assert r.returncode == 0
        lines = r.stdout.splitlines()
        assert lines[0].split()[:4] == ["ID", "TIME", "(UTC)", "SEVERITY"]
        assert any("bash -i spawned by nginx" in line and "high" in line for line in lines)
        assert lines[-1] == "2 alert(s)"

        r = run("--json", "--url", server.url, "--token", "wrong", data_dir=tmp_path)
        assert r.returncode == 1 and "401" in r.stderr
