"""GET /api/v1/events filters, live follow with after_id, limits; health and OpenAPI."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from platform_helpers import (
    EnrolledAgent,
    Platform,
    batch_body,
    enroll,
    exec_event,
    exit_event,
    health_event,
    ingest,
)

BOTH_BACKENDS = True  # the platform fixture's tests run on SQLite and PostgreSQL (conftest.py)

T0 = 1_700_000_000_000_000_000  # 2023-11-14T22:13:20Z


@pytest.fixture
def loaded(platform: Platform, agent: EnrolledAgent) -> dict[str, str]:
    """web-1: curl exec+exit, bash exec, health; db-1: psql exec. Timestamps T0 + n seconds."""
    events = [
        exec_event(100, "/usr/bin/curl", ["curl", "http://x/100%_done"], ts=T0),
        exit_event(100, "/usr/bin/curl", 0, ts=T0 + 1_000_000_000),
        exec_event(200, "/bin/bash", ["bash", "-c", "echo hi"], ts=T0 + 2_000_000_000),
        health_event(ts=T0 + 3_000_000_000),
    ]
    assert ingest(platform, agent, batch_body(events))[0] == 200
    db = enroll(platform, "db-1")
    psql = exec_event(300, "/usr/bin/psql", ["psql"], ts=T0 + 4_000_000_000)
    assert ingest(platform, db, batch_body([psql]))[0] == 200
    return {"web": agent.agent_id, "db": db.agent_id}


def query(platform: Platform, **params: object) -> list[dict[str, object]]:
    r = platform.client.get("/api/v1/events", params=params, headers=platform.admin)  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    events: list[dict[str, object]] = r.json()["events"]
    return events


def pids(items: list[dict[str, object]]) -> list[object]:
    out = []
    for item in items:
        ev = item["event"]
        assert isinstance(ev, dict)
        out.append(ev["process"]["pid"] if "process" in ev else ev.get("pid", ev["type"]))
    return out


def test_newest_first_with_item_shape(platform: Platform, loaded: dict[str, str]) -> None:
    items = query(platform)
    assert pids(items) == [300, "agent.health", 200, 100, 100]
    first = items[0]
    assert set(first) == {"id", "agent_id", "host", "event"}
    assert first["host"] == "db-1" and first["agent_id"] == loaded["db"]
    event = first["event"]
    assert isinstance(event, dict)
    assert (event["type"], event["ts"]) == ("process.exec", T0 + 4_000_000_000)
    assert event["source"] == "process.test"
    assert event["process"]["argv"] == ["psql"] and event["process"]["exe"] == "/usr/bin/psql"


@pytest.mark.parametrize(("params", "expected"), [
    ({"type": "process.exec"}, [300, 200, 100]),
    ({"type": "process.exit"}, [100]),
    ({"type": "process.exit,agent.health"}, ["agent.health", 100]),
    ({"host": "db-1"}, [300]),
    ({"pid": 200}, [200]),
    ({"exe": "/usr/bin/curl"}, [100, 100]),
    ({"exe": "curl"}, [100, 100]),          # last path component
    ({"exe": "url"}, []),                   # not a substring match
    ({"q": "echo"}, [200]),                 # text in argv
    ({"q": "100%_"}, [100]),                # LIKE wildcards are literal
    ({"q": "0%"}, [100]),
    ({"q": "_"}, [100]),
    ({"since": T0 + 2_000_000_000}, [300, "agent.health", 200]),
    ({"until": T0 + 2_000_000_000}, [100, 100]),
    ({"since": "2023-11-14T22:13:21Z", "until": "2023-11-14T22:13:23+00:00"}, [200, 100]),
    ({"since": "2023-11-14T22:13:21", "type": "process.exec"}, [300, 200]),  # naive = UTC
    ({"type": "process.exec", "host": "web-1", "q": "curl"}, [100]),
    ({"limit": 2}, [300, "agent.health"]),
])
def test_filters(platform: Platform, loaded: dict[str, str], params: dict[str, object],
                 expected: list[object]) -> None:
    assert pids(query(platform, **params)) == expected


def test_agent_and_key_filters(platform: Platform, loaded: dict[str, str]) -> None:
    assert pids(query(platform, agent=loaded["db"])) == [300]
    curl_key = query(platform, pid=100, type="process.exit")[0]["event"]["key"]  # type: ignore[index]
    assert pids(query(platform, key=curl_key)) == [100, 100]


def test_after_id_follows_in_ascending_order(platform: Platform, agent: EnrolledAgent,
                                             loaded: dict[str, str]) -> None:
    newest = query(platform, limit=1)[0]["id"]
    assert query(platform, after_id=newest) == []
    batch = [exec_event(pid, "/bin/sleep", ["sleep", str(pid)]) for pid in (501, 502, 503)]
    assert ingest(platform, agent, batch_body(batch))[0] == 200
    r = platform.client.get("/api/v1/events", params={"after_id": newest}, headers=platform.admin)
    body = r.json()
    assert pids(body["events"]) == [501, 502, 503]
    ids = [e["id"] for e in body["events"]]
    assert ids == sorted(ids) and ids[0] > newest and body["last_id"] == ids[-1]
    page = query(platform, after_id=newest, limit=2)
    assert pids(page) == [501, 502]
    assert pids(query(platform, after_id=page[-1]["id"])) == [503]
    assert pids(query(platform, after_id=newest, type="process.exit")) == []


def test_limit_is_capped(platform: Platform, agent: EnrolledAgent) -> None:
    batch = [exec_event(1000 + i, "/bin/true", ["true"]) for i in range(1100)]
    assert ingest(platform, agent, batch_body(batch))[0] == 200
    assert len(query(platform, limit=5000)) == 1000
    assert len(query(platform)) == 100
    assert len(query(platform, limit=0)) == 1


@pytest.mark.parametrize("params", [
    {"pid": "abc"}, {"after_id": "1.5"}, {"limit": "many"}, {"since": "yesterday"}, {"until": "2023-13-45"},
    {"exe": "x" * 2000}, {"since": "\u00b2"}, {"since": "--5"},
])
def test_invalid_parameters_get_400(platform: Platform, params: dict[str, str]) -> None:
    r = platform.client.get("/api/v1/events", params=params, headers=platform.admin)
    assert r.status_code == 400 and r.json()["error"]


@pytest.mark.parametrize(("name", "value"), [
    ("pid", str(1 << 63)), ("pid", str(-(1 << 63) - 1)), ("after_id", str(1 << 63)),
    ("after_id", "9" * 1000), ("since", str(1 << 63)), ("until", str(-(1 << 63) - 1)),
    ("since", "2263-01-01T00:00:00Z"), ("until", "9999-12-31T23:59:59Z"),
])
def test_values_beyond_int64_get_400_not_500(platform: Platform, name: str, value: str) -> None:
    r = platform.client.get("/api/v1/events", params={name: value}, headers=platform.admin)
    assert r.status_code == 400 and r.json() == {"error": f"{name} is out of range (64-bit signed integer)"}


def test_int64_edges_are_accepted(platform: Platform, loaded: dict[str, str]) -> None:
    assert query(platform, pid=(1 << 63) - 1, after_id=-(1 << 63)) == []
    assert pids(query(platform, since=-(1 << 63), until=(1 << 63) - 1, type="process.exit")) == [100]
    assert pids(query(platform, until="2262-04-11T00:00:00Z", type="process.exit")) == [100]


def test_health_needs_no_token(platform: Platform) -> None:
    r = platform.client.get("/api/v1/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_openapi_describes_every_route(platform: Platform) -> None:
    """Each API route of the app (path and method) is in the OpenAPI document, and nothing else."""
    from starlette.routing import Route

    doc = platform.client.get("/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    routes = {(r.path, m.lower()) for r in platform.client.app.routes  # type: ignore[attr-defined]
              if isinstance(r, Route) and r.path.startswith("/api/") for m in (r.methods or ()) if m != "HEAD"}
    documented = {(path, m) for path, item in doc["paths"].items() for m in item if m != "parameters"}
    assert routes == documented, (routes - documented, documented - routes)
    names = {p["name"] for p in doc["paths"]["/api/v1/events"]["get"]["parameters"]}
    assert {"type", "agent", "host", "key", "pid", "exe", "since", "until", "after_id", "limit"} <= names


def test_unknown_api_path_is_404_json(platform: Platform) -> None:
    r = platform.client.get("/api/v1/nope", headers=platform.admin)
    assert r.status_code == 404
    r = platform.client.post("/api/v1/events", headers=platform.admin)
    assert r.status_code == 405 and r.json()["error"]


def test_iso_times_match_ns(platform: Platform) -> None:
    from heron.platform.api.query import parse_time

    assert parse_time("since", "2023-11-14T22:13:20Z") == T0
    assert parse_time("since", "2023-11-14T23:13:20.5+01:00") == T0 + 500_000_000
    assert parse_time("since", str(T0)) == T0
    assert datetime.fromtimestamp(T0 / 1e9, UTC).year == 2023
