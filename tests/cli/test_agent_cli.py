"""The scripted interface: `heron agent --output jsonl:PATH [--collector ...]` and `heron doctor --json`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

HERON = [sys.executable, "-m", "heron.cli.main"]


def start_agent(out: Path, *extra: str) -> subprocess.Popen[bytes]:
    # Its own state dir beside the output: never the machine's /var/lib/heron/agent (FIM baseline, enrolment).
    proc = subprocess.Popen([*HERON, "agent", "--output", f"jsonl:{out}", "--state-dir", str(out.parent / "state"),
                             *extra], stderr=subprocess.PIPE)
    assert proc.stderr is not None
    line = proc.stderr.readline().decode()  # "heron agent X: collectors ..." once running
    assert "collectors" in line, line
    return proc


@pytest.mark.privileged
def test_doctor_json_lists_every_mechanism() -> None:
    out = subprocess.run([*HERON, "doctor", "--json"], check=True, capture_output=True).stdout
    rep = json.loads(out)
    proc = rep["collectors"]["process"]
    assert proc["selected"] in proc["mechanisms"]
    assert "procfs" in proc["mechanisms"]
    for m in proc["mechanisms"].values():
        assert isinstance(m["available"], bool) and isinstance(m["reason"], str)
    assert rep["host"]["kernel"] == os.uname().release


@pytest.mark.privileged
def test_agent_sigterm_flushes_and_exits_zero(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[process]\npoll_interval_s = 0.2\n[dedupe]\nwindow_s = 5\n")
    agent = start_agent(out, "--collector", "process=procfs", "--config", str(cfg))
    marker = f"heron-cli-{uuid.uuid4().hex[:8]}"
    subprocess.run(["/bin/sh", "-c", f"sleep 1 # {marker}"], check=True)
    time.sleep(0.3)
    # The dedupe window (5 s) still holds the exec: SIGTERM must flush it.
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert any(e["type"] == "process.exec" and marker in " ".join(e["process"]["argv"]) for e in events)
    health = [e for e in events if e["type"] == "agent.health"]
    assert health and health[-1]["collectors"]["process"] == "procfs"
    # Every other capability runs beside it, chosen by its own ladder.
    assert set(health[-1]["collectors"]) == {"process", "network", "file", "package"}


@pytest.mark.privileged
def test_pinning_unknown_or_unavailable_fails(tmp_path: Path) -> None:
    r = subprocess.run([*HERON, "agent", "--output", f"jsonl:{tmp_path / 'x'}", "--state-dir", str(tmp_path / "s"),
                        "--collector", "process=nope"],
                       capture_output=True, timeout=60)
    assert r.returncode != 0 and b"unknown mechanism" in r.stderr
    rep = json.loads(subprocess.run([*HERON, "doctor", "--json"], check=True, capture_output=True).stdout)
    unavailable = [m for m, v in rep["collectors"]["process"]["mechanisms"].items() if not v["available"]]
    for mech in unavailable:
        r = subprocess.run([*HERON, "agent", "--output", f"jsonl:{tmp_path / 'y'}", "--state-dir", str(tmp_path / "s"),
                            "--collector",
                            f"process={mech}"], capture_output=True, timeout=60)
        assert r.returncode != 0 and b"cannot run here" in r.stderr


def test_malformed_config_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[dedupe]\nwindow_s = 'x'\n")
    r = subprocess.run([*HERON, "agent", "--config", str(cfg), "--output", "stdout",
                        "--state-dir", str(tmp_path / "s")], capture_output=True, timeout=60)
    assert r.returncode != 0 and b"$.dedupe.window_s" in r.stderr


@pytest.mark.privileged
def test_sighup_with_bad_config_keeps_last_good(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[process]\npoll_interval_s = 0.2\n[dedupe]\nwindow_s = 0.2\n"
                   "[[filter.exclude]]\ncmdline = 're:heron-hidden'\n")
    agent = start_agent(out, "--collector", "process=procfs", "--config", str(cfg))
    try:
        cfg.write_text("[dedupe]\nwindow_s = 'broken'\n")
        agent.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert agent.poll() is None, "a bad config on reload must not stop the agent"
        marker = uuid.uuid4().hex[:8]
        subprocess.run(["/bin/sh", "-c", f"sleep 1 # heron-hidden-{marker}"], check=True)
        subprocess.run(["/bin/sh", "-c", f"sleep 1 # heron-shown-{marker}"], check=True)
        time.sleep(0.5)
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
    events = [json.loads(line) for line in out.read_text().splitlines()]
    argvs = [" ".join(e["process"]["argv"]) for e in events if e["type"] == "process.exec"]
    assert any(f"heron-shown-{marker}" in a for a in argvs)
    assert not any(f"heron-hidden-{marker}" in a for a in argvs), "the last good filter must still apply"
    notes = [m for e in events if e["type"] == "agent.health" for m in e.get("messages", [])]
    assert any("config reload rejected" in m and "$.dedupe.window_s" in m for m in notes)


@pytest.mark.privileged
def test_repeated_sighup_then_sigterm_exits_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    cfg = tmp_path / "agent.toml"
    cfg.write_text("[process]\npoll_interval_s = 0.2\n")
    agent = start_agent(out, "--collector", "process=procfs", "--config", str(cfg))
    for _ in range(5):
        agent.send_signal(signal.SIGHUP)
    time.sleep(1.2)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0
    notes = [m for line in out.read_text().splitlines() for m in json.loads(line).get("messages", [])]
    assert "configuration reloaded" in notes


def test_unwritable_output_is_a_clear_error(tmp_path: Path) -> None:
    r = subprocess.run([*HERON, "agent", "--output", f"jsonl:{tmp_path}/no/such/dir/x", "--state-dir",
                        str(tmp_path / "s")], capture_output=True,
                       timeout=60)
    assert r.returncode != 0 and b"cannot write" in r.stderr and b"Traceback" not in r.stderr
