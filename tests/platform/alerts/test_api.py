"""The alerts API through HTTP (TestClient) on SQLite and PostgreSQL."""

from __future__ import annotations

import json

import sqlalchemy as sa
from alert_events import HOST, NOW, Api, exec_event, flow_event, ingest, key

from heron.platform.alerts import AlertRecorder
from heron.platform.analysis import Detection, Pipeline
from heron.platform.api.context import PlatformContext
from heron.platform.storage import schema as s

SEC = 10**9
SHELL = exec_event(200, "/usr/bin/bash", ["bash", "-i"], [(100, "/usr/sbin/nginx"), (1, "/sbin/init")])
CHILD = exec_event(300, "/usr/bin/nc", ["nc", "203.0.113.5", "4444"],
                   [(200, "/usr/bin/bash"), (100, "/usr/sbin/nginx"), (1, "/sbin/init")], ts=NOW + SEC)
FLOW = flow_event(300, "/usr/bin/nc", "203.0.113.5", 4444, ppid=200, ts=NOW + 2 * SEC)
FIELDS = {"id", "title", "kind", "rule", "severity", "score", "state", "host", "agent_id", "pid", "exe",
          "process_key", "container_id", "time", "first_ts", "last_ts", "n_detections", "tags"}


def pipeline(api: Api) -> Pipeline:
    ctx = api.client.app.state.heron  # type: ignore[attr-defined]
    assert isinstance(ctx, PlatformContext) and ctx.alerts is not None
    return Pipeline(rules=ctx.alerts.engine, alerts=ctx.alerts.recorder)


def test_list_and_detail(api: Api) -> None:
    p = pipeline(api)
    ingest(api.db, p, [SHELL])
    ingest(api.db, p, [CHILD, FLOW])
    # nginx's other work (a sibling of the shell) is not part of the incident's tree or timeline
    sibling = exec_event(250, "/usr/bin/logger", ["logger", "x"], [(100, "/usr/sbin/nginx"), (1, "/sbin/init")],
                         ts=NOW + SEC)
    ingest(api.db, p, [sibling])
    ingest(api.db, p, [exec_event(900, "/usr/bin/gdb", ["gdb", "-p", "1"], [(800, "/usr/bin/bash")])],
           agent="a2", host="db-1")
    r = api.client.get("/api/v1/alerts", headers=api.reader)
    assert r.status_code == 200
    alerts = r.json()["alerts"]
    assert len(alerts) == 2 and set(alerts[0]) >= FIELDS
    web = next(a for a in alerts if a["host"] == HOST)
    assert (web["rule"], web["severity"], web["pid"], web["exe"], web["n_detections"], web["time"]) == (
        "Shell spawned by a server process", "high", 200, "/usr/bin/bash", 2, NOW)
    only = api.client.get("/api/v1/alerts?host=db-1&severity=medium,low&state=open", headers=api.reader).json()
    assert [a["rule"] for a in only["alerts"]] == ["Debugger attached to a process"]
    assert api.client.get("/api/v1/alerts?severity=urgent", headers=api.reader).status_code == 400
    assert api.client.get("/api/v1/alerts?limit=x", headers=api.reader).status_code == 400
    assert api.client.get("/api/v1/alerts").status_code == 401

    d = api.client.get(f"/api/v1/alerts/{web['id']}", headers=api.reader).json()
    assert d["alert"]["id"] == web["id"]
    assert [x["name"] for x in d["detections"]] == ["Shell spawned by a server process", "Connection to a mining port"]
    assert d["detections"][0]["event"]["process"]["pid"] == 200
    kinds = [t["kind"] for t in d["timeline"]]
    assert kinds.count("detection") == 2 and "process.exec" in kinds and "net.flow" in kinds and "log" in kinds
    assert [t["ts"] for t in d["timeline"]] == sorted(t["ts"] for t in d["timeline"])
    tree = {n["key"]: n for n in d["tree"]}
    assert tree[key(200)]["flagged"] and tree[key(300)]["flagged"]
    assert tree[key(300)]["parent_key"] == key(200) and tree[key(200)]["parent_key"] == key(100)
    assert tree[key(100)]["exe"] == "/usr/sbin/nginx" and not tree[key(100)]["flagged"]
    assert tree[key(300)]["argv"] == ["nc", "203.0.113.5", "4444"]
    assert key(250) not in tree and not any("logger" in t["summary"] for t in d["timeline"])
    assert set(d["graph"]) >= {"nodes", "edges"}
    assert [x["action"] for x in d["log"]] == ["created"]
    assert api.client.get("/api/v1/alerts/99999", headers=api.reader).status_code == 404
    assert api.client.get("/api/v1/alerts/abc", headers=api.reader).status_code == 404


def test_state_changes(api: Api) -> None:
    ingest(api.db, pipeline(api), [SHELL])
    [a] = api.client.get("/api/v1/alerts", headers=api.reader).json()["alerts"]
    url = f"/api/v1/alerts/{a['id']}/state"
    assert api.client.post(url, json={"state": "closed"}, headers=api.reader).status_code == 403
    assert api.client.post(url, content=b"{", headers=api.admin).status_code == 400
    assert api.client.post(url, json={"state": "gone"}, headers=api.admin).status_code == 400
    r = api.client.post(url, json={"state": "acknowledged", "note": "looking"}, headers=api.admin)
    assert r.status_code == 200 and r.json() == {"id": a["id"], "state": "acknowledged", "previous": "open"}
    assert api.client.post(url, json={"state": "closed"}, headers=api.admin).status_code == 200
    assert api.client.post(url, json={"state": "acknowledged"}, headers=api.admin).status_code == 409
    assert api.client.post(url, json={"state": "open", "note": "not done"}, headers=api.admin).status_code == 200
    log = api.client.get(f"/api/v1/alerts/{a['id']}", headers=api.reader).json()["log"]
    assert [(x["action"], x["note"]) for x in log] == [
        ("created", "rule Shell spawned by a server process"), ("acknowledged", "looking"), ("closed", ""),
        ("reopened", "not done")]
    assert all(x["actor"].startswith("token:") for x in log[1:])
    missing = api.client.post("/api/v1/alerts/424242/state", json={"state": "closed"}, headers=api.admin)
    assert missing.status_code == 404
    # a rule alert has no anomaly to fold into a baseline
    assert api.client.post(f"/api/v1/alerts/{a['id']}/expected", json={}, headers=api.admin).status_code == 409


def test_expected_folds_anomaly_into_baseline(api: Api) -> None:
    with api.db.begin() as c:
        ids = [c.execute(sa.insert(s.graph_nodes).values(kind=k, key=k, first_seen=NOW, last_seen=NOW))
               .inserted_primary_key[0] for k in ("cluster", "endpoint")]  # type: ignore[index]
        edge = c.execute(sa.insert(s.graph_edges).values(src=ids[0], dst=ids[1], kind="connected", agent_id="a1",
                                                         first_seen=NOW, last_seen=NOW, baseline="new")
                         ).inserted_primary_key[0]  # type: ignore[index]
        d = Detection(kind="anomaly", name="new_remote", severity="medium", score=60.0, agent_id="a1",
                      hostname=HOST, ts=NOW, event=FLOW, summary="nc connected to a new remote",
                      process=FLOW["process"], cluster=ids[0], evidence={"edge": edge, "kind": "connected"})
        alert_id = AlertRecorder().record_one(c, d, NOW)
    r = api.client.post(f"/api/v1/alerts/{alert_id}/expected", json={"note": "our backup"}, headers=api.admin)
    assert r.status_code == 200, r.text
    assert r.json() == {"id": alert_id, "state": "closed", "edges": [edge]}
    with api.db.read() as c:
        assert c.execute(sa.select(s.graph_edges.c.baseline).where(s.graph_edges.c.id == edge)).scalar() == "expected"
    detail = api.client.get(f"/api/v1/alerts/{alert_id}", headers=api.reader).json()
    assert detail["alert"]["state"] == "closed"
    assert [x["action"] for x in detail["log"]] == ["created", "expected", "closed"]
    assert detail["graph"]["center"] == ids[0]


def test_suppressions_crud_and_effect(api: Api) -> None:
    url = "/api/v1/suppressions"
    bad = api.client.post(url, json={"name": "x", "condition": "process.nmae = nginx"}, headers=api.admin)
    assert bad.status_code == 400 and "process.nmae" in bad.json()["error"]
    assert api.client.post(url, json={"name": "everything"}, headers=api.admin).status_code == 400
    assert api.client.post(url, json={"name": "x", "rule": "r"}, headers=api.reader).status_code == 403
    assert api.client.post(url, json={"name": "x", "rule": "r", "expires": 5}, headers=api.admin).status_code == 400
    r = api.client.post(url, json={"name": "web shells", "rule": "Shell spawned by a server process",
                                   "condition": "process.parent_name = nginx", "hostname": "web-*",
                                   "expires_in_s": 3600}, headers=api.admin)
    assert r.status_code == 201
    sid = r.json()["id"]
    ingest(api.db, pipeline(api), [SHELL])
    assert api.client.get("/api/v1/alerts", headers=api.reader).json()["alerts"] == []
    [listed] = api.client.get(url, headers=api.reader).json()["suppressions"]
    assert (listed["id"], listed["hits"], listed["created_by"].startswith("token:")) == (sid, 1, True)
    assert api.client.delete(f"{url}/{sid}", headers=api.admin).status_code == 200
    assert api.client.delete(f"{url}/{sid}", headers=api.admin).status_code == 404
    ingest(api.db, pipeline(api), [SHELL])
    assert len(api.client.get("/api/v1/alerts", headers=api.reader).json()["alerts"]) == 1


def test_channels_crud(api: Api) -> None:
    url = "/api/v1/channels"
    r = api.client.post(url, json={"name": "x", "kind": "webhook", "config": {"url": "file:///etc/passwd"}},
                        headers=api.admin)
    assert r.status_code == 400 and "http" in r.json()["error"]
    good = {"name": "slack", "kind": "webhook", "config": {"url": "https://hooks.example/T0"}, "min_severity": "high"}
    assert api.client.post(url, json=good, headers=api.reader).status_code == 403
    r = api.client.post(url, json=good, headers=api.admin)
    assert r.status_code == 201 and r.json()["config"] == {"url": "https://hooks.example/T0"}
    assert api.client.post(url, json=good, headers=api.admin).status_code == 409
    syslog = {"name": "siem", "kind": "syslog", "config": {"url": "udp://127.0.0.1"}, "min_severity": "medium"}
    assert api.client.post(url, json=syslog, headers=api.admin).json()["config"]["url"] == "udp://127.0.0.1:514"
    listed = api.client.get(url, headers=api.reader).json()["channels"]
    assert [c["name"] for c in listed] == ["slack", "siem"]
    assert api.client.delete(f"{url}/{listed[0]['id']}", headers=api.admin).status_code == 200
    assert [c["name"] for c in api.client.get(url, headers=api.reader).json()["channels"]] == ["siem"]


def test_rules_endpoint_reports_refused_file(api: Api) -> None:
    r = api.client.get("/api/v1/rules", headers=api.reader).json()
    assert r["error"] is None and any(x["name"] == "Reverse shell through /dev/tcp" for x in r["rules"])
    bad = api.rules_dir / "bad.yaml"
    bad.write_text("- rule: Broken\n  desc: d\n  severity: loud\n  condition: type = process.exec\n")
    r = api.client.get("/api/v1/rules", headers=api.reader).json()
    assert r["error"] is not None and f"{bad}:1" in r["error"] and "severity" in r["error"]
    assert any(x["name"] == "Reverse shell through /dev/tcp" for x in r["rules"])  # the old set is active
    assert json.dumps(r)
