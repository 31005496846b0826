"""Detections → alerts on real SQLite and PostgreSQL: rule match, grouping, de-duplication, closed alerts,
suppressions, escalation and the notification outbox."""

from __future__ import annotations

import json
import time

import sqlalchemy as sa
from alert_events import HOST, NOW, exec_event, flow_event, ingest, key

from heron.platform.alerts import AlertRecorder, RuleEngine, set_state
from heron.platform.analysis import Pipeline
from heron.platform.storage import schema as s
from heron.platform.storage.db import Database

SEC = 10**9
SHELL = exec_event(200, "/usr/bin/bash", ["bash", "-i"], [(100, "/usr/sbin/nginx"), (1, "/sbin/init")], ts=NOW)
CHILD = exec_event(300, "/usr/bin/nc", ["nc", "203.0.113.5", "4444"],
                   [(200, "/usr/bin/bash"), (100, "/usr/sbin/nginx"), (1, "/sbin/init")], ts=NOW + SEC)
CHILD_FLOW = flow_event(300, "/usr/bin/nc", "203.0.113.5", 4444, ppid=200, ts=NOW + 2 * SEC)


def pipeline(*, incident_window_s: float = 600, dedupe_window_s: float = 600) -> Pipeline:
    return Pipeline(rules=RuleEngine(()), alerts=AlertRecorder(
        suppression_refresh_s=0, incident_window_s=incident_window_s, dedupe_window_s=dedupe_window_s))


def alerts(db: Database) -> list[dict[str, object]]:
    with db.read() as c:
        return [dict(r) for r in c.execute(sa.select(s.alerts).order_by(s.alerts.c.id)).mappings()]


def detections(db: Database) -> list[dict[str, object]]:
    with db.read() as c:
        return [dict(r) for r in c.execute(sa.select(s.detections).order_by(s.detections.c.id)).mappings()]


def log_actions(db: Database, alert_id: object) -> list[str]:
    with db.read() as c:
        return [r.action for r in c.execute(sa.select(s.alert_log.c.action).where(s.alert_log.c.alert_id == alert_id)
                                            .order_by(s.alert_log.c.id))]


def test_rule_match_makes_an_alert(adb: Database) -> None:
    found = ingest(adb, pipeline(), [SHELL])
    assert [d.name for d in found] == ["Shell spawned by a server process"]
    [a] = alerts(adb)
    assert (a["kind"], a["rule"], a["severity"], a["state"], a["hostname"]) == (
        "rule", "Shell spawned by a server process", "high", "open", HOST)
    assert (a["pid"], a["exe"], a["process_key"], a["first_ts"], a["n_detections"]) == (
        200, "/usr/bin/bash", key(200), NOW, 1)
    assert a["title"] == "bash -i spawned by nginx (pid 200, user www-data)"
    assert a["score"] == 75.0
    assert "T1505.003" in json.loads(str(a["tags"]))
    assert log_actions(adb, a["id"]) == ["created"]


def test_shell_and_its_childs_connection_are_one_alert(adb: Database) -> None:
    p = pipeline()
    ingest(adb, p, [SHELL])
    ingest(adb, p, [CHILD])  # no rule: the exec record the flow's lineage is read from
    found = ingest(adb, p, [CHILD_FLOW])
    assert [d.name for d in found] == ["Connection to a mining port"]
    [a] = alerts(adb)
    assert a["n_detections"] == 2 and a["severity"] == "high"
    assert a["last_ts"] == NOW + 2 * SEC
    assert {d["alert_id"] for d in detections(adb)} == {a["id"]}
    # a sibling shell under the same nginx is another incident
    sibling = exec_event(201, "/usr/bin/bash", ["bash", "-i"], [(100, "/usr/sbin/nginx")], ts=NOW + 3 * SEC)
    ingest(adb, p, [sibling])
    assert len(alerts(adb)) == 2
    # another host's identical process is another incident
    ingest(adb, p, [SHELL], agent="agent-2", host="web-2")
    assert [x["hostname"] for x in alerts(adb)] == [HOST, HOST, "web-2"]


def test_child_first_then_ancestor_joins_and_escalates(adb: Database) -> None:
    with adb.begin() as c:
        c.execute(sa.insert(s.notification_channels).values(name="all", kind="webhook", min_severity="medium",
                                                            config='{"url": "http://127.0.0.1:9/"}', created=NOW))
        c.execute(sa.insert(s.notification_channels).values(name="high", kind="webhook", min_severity="high",
                                                            config='{"url": "http://127.0.0.1:9/"}', created=NOW))
    p = pipeline()
    ingest(adb, p, [CHILD, CHILD_FLOW])  # medium, on the child
    [a] = alerts(adb)
    assert a["severity"] == "medium"
    ingest(adb, p, [SHELL])  # high, on its parent: joins through the child's ancestors
    [a] = alerts(adb)
    assert (a["severity"], a["n_detections"], a["first_ts"]) == ("high", 2, NOW)
    assert log_actions(adb, a["id"]) == ["created", "escalated"]
    with adb.read() as c:
        rows = c.execute(sa.select(s.notifications.c.channel_id, s.notifications.c.payload)
                         .order_by(s.notifications.c.id)).all()
    events = [(cid, json.loads(pl)["event"], json.loads(pl)["alert"]["severity"]) for cid, pl in rows]
    assert events == [(1, "created", "medium"), (1, "escalated", "high"), (2, "escalated", "high")]


def test_duplicates_fold_into_one_detection(adb: Database) -> None:
    p = pipeline(dedupe_window_s=60)
    ingest(adb, p, [SHELL])
    again = json.loads(json.dumps(SHELL))
    again["ts"] = NOW + 5 * SEC
    ingest(adb, p, [again])
    [d] = detections(adb)
    assert (d["count"], d["last_ts"]) == (2, NOW + 5 * SEC)
    [a] = alerts(adb)
    assert (a["n_detections"], a["last_ts"]) == (1, NOW + 5 * SEC)
    later = json.loads(json.dumps(SHELL))
    later["ts"] = NOW + 120 * SEC  # outside the de-duplication window: a detection of its own, same alert
    ingest(adb, p, [later])
    assert len(detections(adb)) == 2 and len(alerts(adb)) == 1


def test_closed_alert_is_never_reopened(adb: Database) -> None:
    p = pipeline()
    ingest(adb, p, [SHELL])
    [a] = alerts(adb)
    with adb.begin() as c:
        assert set_state(c, int(str(a["id"])), "closed", "alice", "done")["previous"] == "open"
    ingest(adb, p, [SHELL])  # the very same detection again
    ingest(adb, p, [CHILD, CHILD_FLOW])  # and a related one
    first, second = alerts(adb)
    assert first["state"] == "closed" and first["n_detections"] == 1
    assert second["state"] == "open" and second["n_detections"] == 2
    assert log_actions(adb, first["id"]) == ["created", "closed"]


def test_incident_window_splits_alerts(adb: Database) -> None:
    p = pipeline(incident_window_s=10)
    ingest(adb, p, [SHELL])
    late = flow_event(200, "/usr/bin/bash", "203.0.113.5", 4444, ts=NOW + 60 * SEC)
    ingest(adb, p, [late])
    # the shell's own connection matches two rules: both join the second alert, not the first
    assert [(a["n_detections"], a["first_ts"]) for a in alerts(adb)] == [(1, NOW), (2, NOW + 60 * SEC)]


def test_suppression_hides_and_counts(adb: Database) -> None:
    with adb.begin() as c:
        c.execute(sa.insert(s.suppressions).values(
            name="nginx shells on web hosts", rule="Shell spawned by a server process",
            condition="process.parent_name = nginx and process.user = www-data", hostname="web-*", created=NOW))
        c.execute(sa.insert(s.suppressions).values(name="expired", rule="", condition="", hostname="db-*",
                                                   created=NOW, expires=time.time_ns() - SEC))
    p = pipeline()
    assert len(ingest(adb, p, [SHELL])) == 1  # detected, then suppressed
    assert alerts(adb) == [] and detections(adb) == []
    ingest(adb, p, [SHELL], agent="agent-2", host="db-1")  # host glob does not match; expired one ignored
    assert [a["hostname"] for a in alerts(adb)] == ["db-1"]
    other_user = exec_event(202, "/usr/bin/bash", ["bash", "-i"], [(100, "/usr/sbin/nginx")], user="root")
    ingest(adb, p, [other_user])  # condition does not hold
    assert len(alerts(adb)) == 2
    with adb.read() as c:
        hits = {r.name: (r.hits, r.last_hit is not None) for r in c.execute(sa.select(s.suppressions))}
    assert hits == {"nginx shells on web hosts": (1, True), "expired": (0, False)}


def test_suppressions_are_cached_between_refreshes(adb: Database) -> None:
    rec = AlertRecorder(suppression_refresh_s=3600)
    p = Pipeline(rules=RuleEngine(()), alerts=rec)
    ingest(adb, p, [SHELL])  # loads the (empty) suppression list
    with adb.begin() as c:
        c.execute(sa.insert(s.suppressions).values(name="all shells", rule="Shell spawned by a server process",
                                                   created=NOW))
    ingest(adb, p, [exec_event(203, "/usr/bin/bash", ["bash"], [(100, "/usr/sbin/nginx")])])
    assert len(alerts(adb)) == 2  # not re-read yet
    rec.suppressions.invalidate()
    ingest(adb, p, [exec_event(204, "/usr/bin/bash", ["bash"], [(100, "/usr/sbin/nginx")])])
    assert len(alerts(adb)) == 2
