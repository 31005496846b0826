"""One hostile agent against the alert stage: floods fold into one storm alert, far-future times are
clamped, the outbox is throttled per channel, and agent strings stay one line in notifications."""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa
from alert_events import HOST, NOW, exec_event, ingest

from heron.platform.alerts import AlertRecorder, RuleEngine, channels
from heron.platform.alerts.queries import process_tree
from heron.platform.alerts.recorder import MAX_AHEAD_NS
from heron.platform.alerts.senders import headline, slack_payload, syslog_line
from heron.platform.analysis import Pipeline
from heron.platform.storage import schema as s
from heron.platform.storage.db import Database

RULE = "Shell spawned by a server process"


def shells(n: int, first_pid: int = 1000, ts: int = NOW) -> list[dict[str, Any]]:
    """n server-spawned shells in n unrelated process trees: n separate alerts without limits."""
    return [exec_event(pid, "/usr/bin/bash", ["bash", "-i"], [(pid + 50_000, "/usr/sbin/nginx")], ts=ts)
            for pid in range(first_pid, first_pid + n)]


def alerts(db: Database) -> list[dict[str, Any]]:
    with db.read() as c:
        return [dict(r) for r in c.execute(sa.select(s.alerts).order_by(s.alerts.c.id)).mappings()]


def add_channel(db: Database) -> None:
    with db.begin() as c:
        c.execute(sa.insert(s.notification_channels).values(
            name="hook", kind="webhook", config=json.dumps({"url": "https://example.invalid/x"}),
            min_severity="low", created=NOW))


def outbox(db: Database) -> list[dict[str, Any]]:
    with db.read() as c:
        return [json.loads(r.payload) for r in c.execute(sa.select(s.notifications).order_by(s.notifications.c.id))]


def test_a_flood_is_folded_into_one_storm_alert(adb: Database) -> None:
    add_channel(adb)
    recorder = AlertRecorder(suppression_refresh_s=0, max_detections_per_batch=20, max_new_alerts_per_agent_minute=5)
    p = Pipeline(rules=RuleEngine(()), alerts=recorder)
    found = ingest(adb, p, shells(100))
    assert len(found) == 100
    rows = alerts(adb)
    storms = [a for a in rows if a["kind"] == "storm"]
    assert len(rows) == 6 and len(storms) == 1  # 5 new alerts this minute, then the storm
    storm = storms[0]
    # 80 over the batch cap + 15 over the new-alert budget: counted, never dropped
    assert (storm["severity"], storm["rule"], storm["n_detections"], storm["state"]) == ("high", "storm", 95, "open")
    assert RULE in storm["title"] and HOST in storm["title"] and "95 detections" in storm["title"]
    with adb.read() as c:
        det = c.execute(sa.select(s.detections).where(s.detections.c.alert_id == storm["id"])).mappings().one()
        n_rows = c.execute(sa.select(sa.func.count()).select_from(s.detections)).scalar()
    assert json.loads(det["evidence"])["rules"] == {RULE: 95} and det["count"] == 95
    assert n_rows == 6  # 5 detections of their own + the storm's one row, not 100
    assert len(outbox(adb)) == 6
    # the next batch of the flood grows the same storm alert
    ingest(adb, p, shells(30, first_pid=5000))
    rows = alerts(adb)
    assert len(rows) == 6
    assert [a["n_detections"] for a in rows if a["kind"] == "storm"] == [125]


def test_detections_joining_existing_alerts_do_not_spend_the_budget(adb: Database) -> None:
    p = Pipeline(rules=RuleEngine(()), alerts=AlertRecorder(suppression_refresh_s=0, max_new_alerts_per_agent_minute=1))
    same = exec_event(700, "/usr/bin/bash", ["bash", "-i"], [(600, "/usr/sbin/nginx")])
    ingest(adb, p, [same])
    ingest(adb, p, [{**same, "ts": NOW + 1}])  # a duplicate of the first: counted on it, no storm
    assert [(a["kind"], a["n_detections"]) for a in alerts(adb)] == [("rule", 1)]


def test_far_future_times_are_clamped_for_ordering(adb: Database) -> None:
    p = Pipeline(rules=RuleEngine(()), alerts=AlertRecorder(suppression_refresh_s=0))
    future = NOW + 3650 * 86400 * 10**9
    before = time.time_ns()
    ingest(adb, p, shells(1, ts=future))
    [a] = alerts(adb)
    assert before < a["last_ts"] <= time.time_ns() + MAX_AHEAD_NS
    with adb.read() as c:
        det = c.execute(sa.select(s.detections)).mappings().one()
    assert det["ts"] == a["last_ts"] and json.loads(det["event"])["ts"] == future  # the agent's own time stays


def test_outbox_is_throttled_per_channel_per_minute(adb: Database) -> None:
    add_channel(adb)
    base = {"group_key": "g", "agent_id": "a1", "hostname": HOST, "title": "t", "kind": "rule", "rule": RULE,
            "severity": "high", "score": 75.0, "state": "open", "first_ts": NOW, "last_ts": NOW, "created": NOW,
            "updated": NOW, "n_detections": 1, "tags": "[]"}
    with adb.begin() as c:
        queued = [channels.queue(c, {**base, "id": i}, "created", NOW + i, limit=3) for i in range(1, 8)]
    assert queued == [1, 1, 1, 1, 0, 0, 0]
    events = [p["event"] for p in outbox(adb)]
    assert events == ["created", "created", "created", "throttled"]
    assert "more than 3 alert notifications in a minute" in headline(outbox(adb)[-1])
    with adb.begin() as c:  # a minute later the channel gets notifications again
        assert channels.queue(c, {**base, "id": 9}, "created", NOW + 61 * 10**9, limit=3) == 1


def test_agent_strings_stay_one_line_and_inert() -> None:
    payload = {"event": "created", "alert": {"id": 1, "severity": "high", "host": "web-1\r\n<13>1 - forged",
                                             "title": "<!channel> ping & <https://evil.example|click>\nnext",
                                             "exe": "/tmp/x\u2028y", "rule": RULE, "kind": "rule"}}
    text = headline(payload)
    assert "\r" not in text and "\n" not in text and "\u2028" not in text and "\\x0d\\x0a" in text
    slack = slack_payload(payload)
    assert "<" not in slack["text"] and "&lt;!channel&gt;" in slack["text"] and "&amp;" in slack["text"]
    assert all("<" not in json.dumps(b) for b in slack["blocks"])
    line = syslog_line({"facility": "auth"}, payload, NOW, hostname="collector")
    assert b"\n" not in line and b"\r" not in line and "\u2028".encode() not in line


def test_process_tree_reads_member_execs_within_the_window(adb: Database) -> None:
    pid = 4242
    key = exec_event(pid, "/usr/bin/bash", [], [])["process"]["key"]
    with adb.begin() as c:
        for ts, exe in ((NOW, "/usr/bin/bash"), (NOW + 30 * 86400 * 10**9, "/usr/bin/later")):
            ev = exec_event(pid, exe, [exe], [(1, "/sbin/init")], ts=ts)
            c.execute(sa.insert(s.events).values(agent_id="a1", hostname=HOST, type="process.exec", ts=ts, key=key,
                                                 pid=pid, exe=exe, cmdline=exe, data=json.dumps(ev)))
        tree = process_tree(c, "a1", [key], NOW - 10**9, NOW + 10**9, {key})
    [me] = [n for n in tree if n["key"] == key]
    assert me["exe"] == "/usr/bin/bash"  # the exec a month after the alert is outside its window
