"""RuleEngine: detections from batches, summaries, hot reload, refused rule files."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from alert_events import NOW, exec_event, flow_event

from heron.platform.alerts import RuleEngine
from heron.platform.alerts.summary import summarise
from heron.platform.analysis import Batch

SHELL = exec_event(123, "/usr/bin/bash", ["bash", "-i"], [(100, "/usr/sbin/nginx")])
MY_RULE = """
- rule: Curl run
  desc: curl ran
  condition: type = process.exec and process.name = curl
  severity: low
  tags: [T1105, mine]
"""
BAD_RULE = """
- rule: Broken
  desc: a typo in a field name
  condition: type = process.exec and process.nmae = curl
  severity: low
"""


def batch(*events: dict[str, object]) -> Batch:
    return Batch("a1", "web-1", time.time_ns(), list(events))


def test_detection_fields_and_summary() -> None:
    [d] = RuleEngine(()).evaluate(batch(SHELL))
    assert (d.kind, d.name, d.severity, d.score, d.hostname, d.agent_id, d.ts) == (
        "rule", "Shell spawned by a server process", "high", 75.0, "web-1", "a1", NOW)
    assert d.process is not None and d.process["pid"] == 123  # the exec'd process
    assert d.summary == "bash -i spawned by nginx (pid 123, user www-data)"
    assert "T1059.004" in d.tags


def test_summaries_are_readable_and_safe() -> None:
    flow = flow_event(5, "/usr/bin/nc", "203.0.113.5", 4444)
    assert summarise(flow) == "nc connected to 203.0.113.5:4444 (pid 5, user www-data)"
    hostile = exec_event(7, "/tmp/x", ["/tmp/x", "\x1b[31mred\nfake line", "A" * 500], [])
    text = summarise(hostile)
    assert "\x1b" not in text and "\n" not in text and len(text) < 200
    change = {"type": "file.change", "ts": 1, "path": "/etc/cron.d/job", "action": "create"}
    assert summarise(change) == "an unknown writer created /etc/cron.d/job"


def test_hot_reload_and_refused_file_keeps_old_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rules = tmp_path / "rules.d"
    rules.mkdir()
    engine = RuleEngine([str(rules)], check_interval_s=0)
    curl = exec_event(9, "/usr/bin/curl", ["curl", "http://x"], [(8, "/usr/bin/bash")])
    assert engine.evaluate(batch(curl)) == []
    (rules / "mine.yaml").write_text(MY_RULE)
    assert [d.name for d in engine.evaluate(batch(curl))] == ["Curl run"]
    bad = rules / "zz-bad.yaml"
    bad.write_text(BAD_RULE)
    with caplog.at_level(logging.ERROR, "heron.platform.rules"):
        assert [d.name for d in engine.evaluate(batch(curl))] == ["Curl run"]  # old set still active
    assert engine.last_error is not None
    assert f"{bad}:2" in engine.last_error and "process.nmae" in engine.last_error
    assert any("process.nmae" in r.getMessage() for r in caplog.records)
    described = engine.describe()
    assert described["error"] == engine.last_error and described["problems"]
    assert any(r["name"] == "Curl run" and r["origin"].endswith("mine.yaml:2") for r in described["rules"])
    bad.unlink()
    engine.maybe_reload(force=True)
    assert engine.last_error is None


def test_reload_checks_are_rate_limited(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("[]")
    clock = [100.0]
    engine = RuleEngine([str(path)], check_interval_s=2.0, clock=lambda: clock[0])
    path.write_text(MY_RULE)
    os.utime(path, ns=(time.time_ns() + 10**9,) * 2)
    curl = exec_event(9, "/usr/bin/curl", ["curl"], [])
    clock[0] += 1.0
    assert engine.evaluate(batch(curl)) == []  # not checked yet
    clock[0] += 1.5
    assert [d.name for d in engine.evaluate(batch(curl))] == ["Curl run"]


def test_bad_user_file_at_start_keeps_the_default_pack(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD_RULE)
    engine = RuleEngine([str(path)])
    assert engine.last_error is not None and f"{path}:2" in engine.last_error
    assert [d.name for d in engine.evaluate(batch(SHELL))] == ["Shell spawned by a server process"]
