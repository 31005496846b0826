"""Enrolment, agent self-update and the roles of each token kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from platform_helpers import EnrolledAgent, Platform, enroll, host_facts

from heron.platform.api.auth import hash_token
from heron.platform.storage import schema

BOTH_BACKENDS = True  # the platform fixture's tests run on SQLite and PostgreSQL (conftest.py)


def test_enroll_returns_agent_id_and_working_token(platform: Platform) -> None:
    agent = enroll(platform, "db-1")
    assert len(agent.agent_id) == 32 and int(agent.agent_id, 16) >= 0
    record = platform.storage.find_token(hash_token(agent.token))
    assert record is not None and record.kind == "agent" and record.agent_id == agent.agent_id
    stored = platform.storage.get_agent(agent.agent_id)
    assert stored is not None
    assert (stored.hostname, stored.name, stored.version) == ("db-1", "db-1", "0.1.0")
    assert json.loads(stored.host)["distro"] == "debian:12"
    # Only the hash is stored, never the token.
    if platform.storage.db.path:  # SQLite: not anywhere in the file
        assert agent.token not in Path(platform.storage.db.path).read_bytes().decode("latin-1")
    with platform.storage.db.read() as conn:
        assert agent.token not in str(conn.execute(sa.select(schema.tokens)).all())


def test_enroll_with_name_and_admin_token(platform: Platform) -> None:
    r = platform.client.post("/api/v1/enroll", headers=platform.admin,
                             json={"name": "edge box", "agent_version": "0.2.0", "host": host_facts("h")})
    assert r.status_code == 201
    stored = platform.storage.get_agent(r.json()["agent_id"])
    assert stored is not None and stored.name == "edge box"


def test_enroll_refuses_other_roles(platform: Platform, agent: EnrolledAgent) -> None:
    body = {"agent_version": "0.1.0", "host": host_facts()}
    assert platform.client.post("/api/v1/enroll", json=body).status_code == 401
    assert platform.client.post("/api/v1/enroll", headers=platform.auth("nope"), json=body).status_code == 401
    r = platform.client.post("/api/v1/enroll", headers=platform.auth(agent.token), json=body)
    assert r.status_code == 403


@pytest.mark.parametrize(("content", "ctype", "status"), [
    (b"{not json", "application/json", 400),
    (b'{"agent_version": "1"}', "application/json", 400),                 # host missing
    (b'{"host": {"hostname": 5}}', "application/json", 400),                # wrong type
    (json.dumps({"host": {"hostname": "x" * 300}}).encode(), "application/json", 400),  # too long
    (b'{"host": {}}', "text/plain", 415),
    (b"x" * (65 << 10), "application/json", 413),
])
def test_enroll_rejects_bad_bodies(platform: Platform, content: bytes, ctype: str, status: int) -> None:
    headers = {**platform.auth(platform.creds.enrollment_token), "Content-Type": ctype}
    r = platform.client.post("/api/v1/enroll", content=content, headers=headers)
    assert r.status_code == status, r.text
    assert "error" in r.json()


def test_agent_updates_itself(platform: Platform, agent: EnrolledAgent) -> None:
    facts = {**host_facts("web-1-renamed"), "boot_id": "f" * 32}
    r = platform.client.put("/api/v1/agents/self", headers=platform.auth(agent.token),
                            json={"agent_version": "0.1.1", "host": facts})
    assert (r.status_code, r.json()) == (200, {})
    stored = platform.storage.get_agent(agent.agent_id)
    assert stored is not None
    assert (stored.hostname, stored.version, json.loads(stored.host)["boot_id"]) == ("web-1-renamed", "0.1.1",
                                                                                    "f" * 32)
    assert stored.last_seen >= stored.first_seen


def test_only_agent_tokens_update_self(platform: Platform) -> None:
    body = {"agent_version": "0.1.0", "host": host_facts()}
    for token in (platform.creds.admin_token, platform.creds.enrollment_token):
        r = platform.client.put("/api/v1/agents/self", headers=platform.auth(token), json=body)
        assert r.status_code == 403


def test_agent_token_cannot_query(platform: Platform, agent: EnrolledAgent) -> None:
    for path in ("/api/v1/events", "/api/v1/agents"):
        assert platform.client.get(path, headers=platform.auth(agent.token)).status_code == 403
        enrol = platform.auth(platform.creds.enrollment_token)
        assert platform.client.get(path, headers=enrol).status_code == 403
        assert platform.client.get(path).status_code == 401


def test_reader_token_can_query_but_not_enroll(platform: Platform) -> None:
    platform.storage.add_token(hash_token("reader-secret"), "reader", None, 1)
    reader = platform.auth("reader-secret")
    assert platform.client.get("/api/v1/events", headers=reader).status_code == 200
    assert platform.client.get("/api/v1/agents", headers=reader).status_code == 200
    r = platform.client.post("/api/v1/enroll", headers=reader, json={"host": host_facts()})
    assert r.status_code == 403


def test_agents_listing(platform: Platform, agent: EnrolledAgent) -> None:
    enroll(platform, "aaa")
    r = platform.client.get("/api/v1/agents", headers=platform.admin)
    agents = r.json()["agents"]
    assert [a["hostname"] for a in agents] == ["aaa", "web-1"]
    web = agents[1]
    assert web["agent_id"] == agent.agent_id and web["host"]["kernel"] == "6.18.0"
    assert web["last_health"] is None and web["version"] == "0.1.0"
    assert isinstance(web["first_seen"], int) and isinstance(web["last_seen"], int)


@pytest.mark.parametrize("hostname", ["", "web 1", "web-1\r\nInjected: x", "web*", "a" * 254, "wéb", "web/1", "[db]"])
def test_hostnames_outside_rfc1123_are_refused(platform: Platform, agent: EnrolledAgent, hostname: str) -> None:
    body = {"agent_version": "0.1.0", "host": {**host_facts(), "hostname": hostname}}
    r = platform.client.post("/api/v1/enroll", headers=platform.auth(platform.creds.enrollment_token), json=body)
    assert r.status_code == 400, r.text
    assert "host.hostname" in r.json()["error"]
    r = platform.client.put("/api/v1/agents/self", headers=platform.auth(agent.token), json=body)
    assert r.status_code == 400, r.text
    stored = platform.storage.get_agent(agent.agent_id)
    assert stored is not None and stored.hostname == "web-1"


@pytest.mark.parametrize("hostname", ["web-1", "db_2.example.com", "a" * 253, "localhost", "192.0.2.1"])
def test_real_hostnames_enrol(platform: Platform, hostname: str) -> None:
    body = {"agent_version": "0.1.0", "host": {**host_facts(), "hostname": hostname}}
    r = platform.client.post("/api/v1/enroll", headers=platform.auth(platform.creds.enrollment_token), json=body)
    assert r.status_code == 201, r.text


def test_deeply_nested_body_is_400(platform: Platform, agent: EnrolledAgent) -> None:
    body = b'{"x": ' + b"[" * 30_000 + b"]" * 30_000 + b', "host": {"hostname": "web-1"}}'
    r = platform.client.post("/api/v1/enroll", content=body, headers={
        **platform.auth(platform.creds.enrollment_token), "Content-Type": "application/json"})
    assert r.status_code == 400 and "nested" in r.json()["error"]
    r = platform.client.put("/api/v1/agents/self", content=body, headers={
        **platform.auth(agent.token), "Content-Type": "application/json"})
    assert r.status_code == 400 and "nested" in r.json()["error"]
