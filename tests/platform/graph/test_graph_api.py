"""The graph and baselines API through real HTTP (TestClient) on SQLite and PostgreSQL."""

from __future__ import annotations

import time

from graph_events import SEC, GraphApi, batch, exec_, flow

from heron.platform.analysis import Detection
from heron.platform.graph import GraphBuilder

NGINX = "/usr/sbin/nginx"


def build(api: GraphApi, received: int, *events: dict[str, object], agent: str = "agent-a") -> list[Detection]:
    with api.db.begin() as conn:
        return GraphBuilder(api.client.app.state.heron.config).update(  # type: ignore[attr-defined]
            conn, batch(agent, "web-1", received, *events))


def test_nodes_neighbourhood_baselines(gapi: GraphApi) -> None:
    now = time.time_ns()
    build(gapi, now, exec_(100, NGINX, ["nginx: worker process"], ts=now),
          flow(100, NGINX, "93.184.216.34", 443, domain="example.com", ts=now))
    c, reader, admin = gapi.client, gapi.reader, gapi.admin
    r = c.get("/api/v1/graph/nodes", params={"kind": "cluster"}, headers=reader)
    assert r.status_code == 200, r.text
    (cluster,) = r.json()["nodes"]
    assert set(cluster) == {"id", "kind", "key", "label", "attrs", "first_seen", "last_seen", "count"}
    assert cluster["attrs"]["exe"] == NGINX and cluster["label"].startswith("nginx")
    assert [n["key"] for n in c.get("/api/v1/graph/nodes", params={"q": "example"}, headers=reader).json()["nodes"]] \
        == ["example.com:443"]
    limited = c.get("/api/v1/graph/nodes", params={"host": "web-1", "limit": 2}, headers=reader).json()["nodes"]
    assert len(limited) == 2
    hood = c.get("/api/v1/graph/neighbourhood", params={"node": cluster["id"]}, headers=reader).json()
    assert hood["center"] == cluster["id"]
    assert {e["kind"] for e in hood["edges"]} == {"runs", "ran", "connected"}
    edge = next(e for e in hood["edges"] if e["kind"] == "connected")
    assert set(edge) == {"id", "src", "dst", "kind", "hosts", "first_seen", "last_seen", "count", "baseline"}
    assert edge["hosts"] == ["web-1"] and edge["baseline"] == "learned"
    assert c.get("/api/v1/graph/neighbourhood", params={"node": cluster["id"], "host": "other"},
                 headers=reader).json()["edges"] == []
    (base,) = c.get("/api/v1/baselines", params={"cluster": cluster["id"]}, headers=reader).json()["baselines"]
    assert base["learning"] is True and base["learning_until"] == base["learning_since"] + SEC
    assert base["edges"] == {"learned": 1}

    # After learning: a new remote is an anomaly; the admin marks it expected.
    later = now + 2 * SEC
    (d,) = build(gapi, later, flow(100, NGINX, "203.0.113.9", 4444, ts=later))
    edge_id = d.evidence["edge"]
    assert c.post(f"/api/v1/graph/edges/{edge_id}/expected", headers=reader).status_code == 403
    r = c.post(f"/api/v1/graph/edges/{edge_id}/expected", headers=admin)
    assert r.status_code == 200 and r.json() == {"edge": edge_id, "baseline": "expected", "changed": 1}
    hood = c.get("/api/v1/graph/neighbourhood", params={"node": cluster["id"]}, headers=reader).json()
    assert next(e for e in hood["edges"] if e["id"] == edge_id)["baseline"] == "expected"

    # Reset: learning again, by whom.
    assert c.post(f"/api/v1/baselines/{cluster['id']}/reset", headers=reader).status_code == 403
    r = c.post(f"/api/v1/baselines/{cluster['id']}/reset", headers=admin)
    assert r.status_code == 200, r.text
    assert r.json()["baseline"]["learning"] is True and r.json()["baseline"]["reset_by"].startswith("token:")


def test_bad_requests(gapi: GraphApi) -> None:
    c, reader, admin = gapi.client, gapi.reader, gapi.admin
    assert c.get("/api/v1/graph/nodes").status_code == 401
    for params in ({"kind": "planet"}, {"limit": "0"}, {"limit": "x"}, {"limit": "100000"}, {"q": "x" * 300}):
        r = c.get("/api/v1/graph/nodes", params=params, headers=reader)
        assert r.status_code == 400 and "error" in r.json(), params
    for params in ({}, {"node": "abc"}, {"node": "-1"}, {"node": "9" * 30}):
        assert c.get("/api/v1/graph/neighbourhood", params=params, headers=reader).status_code == 400, params
    assert c.get("/api/v1/graph/neighbourhood", params={"node": "12345"}, headers=reader).status_code == 404
    assert c.get("/api/v1/baselines", params={"cluster": "x"}, headers=reader).status_code == 400
    assert c.post("/api/v1/baselines/12345/reset", headers=admin).status_code == 404
    assert c.post("/api/v1/baselines/abc/reset", headers=admin).status_code == 400
    assert c.post("/api/v1/graph/edges/12345/expected", headers=admin).status_code == 404
    assert c.post("/api/v1/graph/edges/1e3/expected", headers=admin).status_code == 400
