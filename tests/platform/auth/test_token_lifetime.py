"""A token lives no longer than its maker's rights; an agent's token can be revoked (API and CLI);
the session cookie's Secure flag can be forced behind a TLS-terminating proxy."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from authkit import PASSWORD, AuthPlatform, make_platform
from platform_helpers import EnrolledAgent, Platform, batch_body, enroll, health_event, ingest

from heron.cli.main import main
from heron.platform.api.context import PlatformConfig
from heron.platform.storage import schema
from heron.platform.storage.db import Database

BOTH_BACKENDS = {"test_revoke_agent_token"}


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def both(auth_db: Database, admin_hash: str) -> Iterator[AuthPlatform]:
    yield from make_platform(auth_db, admin_hash, PlatformConfig(retention_days=0))


def _user_tokens(plat: AuthPlatform, username: str) -> tuple[int, dict[str, str]]:
    """A new admin user ``username`` who, logged in, makes an admin, an enroll and a reader token."""
    c, h = plat.client, _bearer(plat.admin_token)
    r = c.post("/api/v1/users", headers=h, json={"username": username, "password": PASSWORD, "role": "admin"})
    assert r.status_code == 201, r.text
    uid = r.json()["user"]["id"]
    csrf = plat.login(username)
    made = {}
    for role in ("admin", "enroll", "reader"):
        r = c.post("/api/v1/tokens", headers={"X-Heron-CSRF": csrf}, json={"name": f"{username}-{role}", "role": role})
        assert r.status_code == 201, r.text
        made[role] = r.json()["token"]
    c.cookies.clear()
    return uid, made


def _works(plat: AuthPlatform, token: str) -> int:
    """401 for a refused token, else 200 (reader, admin) or 403 (enroll may not query)."""
    return int(plat.client.get("/api/v1/agents", headers=_bearer(token)).status_code)


def _revoked(plat: AuthPlatform) -> set[str]:
    listed = plat.client.get("/api/v1/tokens", headers=_bearer(plat.admin_token)).json()["tokens"]
    return {t["name"] for t in listed if t["revoked"] is not None}


def test_tokens_end_with_their_user(both: AuthPlatform) -> None:
    c, h = both.client, _bearer(both.admin_token)
    ann, anns = _user_tokens(both, "ann")
    bob, bobs = _user_tokens(both, "bob")
    cy, cys = _user_tokens(both, "cy")
    assert [_works(both, anns[r]) for r in ("admin", "enroll", "reader")] == [200, 403, 200]

    assert c.patch(f"/api/v1/users/{ann}", headers=h, json={"disabled": True}).status_code == 200
    assert [_works(both, anns[r]) for r in ("admin", "enroll", "reader")] == [401, 401, 401]
    assert {"ann-admin", "ann-enroll", "ann-reader"} <= _revoked(both)
    # re-enabling the user does not bring its tokens back
    assert c.patch(f"/api/v1/users/{ann}", headers=h, json={"disabled": False}).status_code == 200
    assert _works(both, anns["reader"]) == 401

    assert c.delete(f"/api/v1/users/{bob}", headers=h).status_code == 204
    assert [_works(both, bobs[r]) for r in ("admin", "enroll", "reader")] == [401, 401, 401]

    assert c.patch(f"/api/v1/users/{cy}", headers=h, json={"role": "reader"}).status_code == 200
    assert [_works(both, cys[r]) for r in ("admin", "enroll", "reader")] == [401, 401, 200]
    assert {"cy-admin", "cy-enroll"} <= _revoked(both) and "cy-reader" not in _revoked(both)
    # Tokens of nobody (CLI, first start) are not affected.
    assert _works(both, both.admin_token) == 200


def test_token_refused_when_its_user_changed_behind_the_api(both: AuthPlatform) -> None:
    """The check at use time covers a user changed directly in the database (no revocation ran)."""
    dan, dans = _user_tokens(both, "dan")
    with both.store.db.begin() as conn:
        conn.execute(sa.update(schema.users).where(schema.users.c.id == dan).values(role="reader"))
    assert [_works(both, dans[r]) for r in ("admin", "enroll", "reader")] == [401, 401, 200]
    with both.store.db.begin() as conn:
        conn.execute(sa.update(schema.users).where(schema.users.c.id == dan).values(disabled=5))
    assert _works(both, dans["reader"]) == 401
    with both.store.db.begin() as conn:
        conn.execute(sa.delete(schema.users).where(schema.users.c.id == dan))
    assert _works(both, dans["reader"]) == 401


def _health(platform: Platform, agent: EnrolledAgent) -> int:
    return int(ingest(platform, agent, batch_body([health_event()]))[0])


def test_revoke_agent_token(platform: Platform, agent: EnrolledAgent) -> None:
    c = platform.client
    other = enroll(platform, "web-2")
    assert _health(platform, agent) == 200
    r = c.delete(f"/api/v1/agents/{agent.agent_id}/token", headers=platform.auth(platform.creds.enrollment_token))
    assert r.status_code == 403  # admins only
    assert c.delete(f"/api/v1/agents/{agent.agent_id}/token", headers=platform.admin).status_code == 204
    assert _health(platform, agent) == 401
    assert c.put("/api/v1/agents/self", headers=platform.auth(agent.token),
                 json={"agent_version": "0.1.0", "host": {"hostname": "web-1"}}).status_code == 401
    assert _health(platform, other) == 200  # the other agent is not affected
    assert c.delete(f"/api/v1/agents/{agent.agent_id}/token", headers=platform.admin).status_code == 204  # again
    assert c.delete("/api/v1/agents/nope/token", headers=platform.admin).status_code == 404
    assert c.delete(f"/api/v1/agents/{'x' * 300}/token", headers=platform.admin).status_code == 404
    assert c.delete(f"/api/v1/agents/{agent.agent_id}/token").status_code == 401
    # The agent enrols again with the enrolment token (documented): a new id and token.
    again = enroll(platform, "web-1")
    assert again.agent_id != agent.agent_id and _health(platform, again) == 200


def test_cli_revokes_an_agent_token(platform: Platform, agent: EnrolledAgent, capsys: pytest.CaptureFixture[str]) \
        -> None:
    d = ["--data", str(platform.data_dir.parent)]
    assert _health(platform, agent) == 200
    assert main(["token", "revoke", "--agent", agent.agent_id, *d]) == 0
    assert capsys.readouterr().out.startswith(f"revoked the token of agent {agent.agent_id}")
    assert _health(platform, agent) == 401
    assert main(["token", "revoke", "--agent", agent.agent_id, *d]) == 0
    assert "has no live token" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no agent"):
        main(["token", "revoke", "--agent", "nope", *d])
    with pytest.raises(SystemExit):  # a token id or --agent, not both
        main(["token", "revoke", "0" * 16, "--agent", agent.agent_id, *d])


def test_cookie_secure_can_be_forced(sqlite_db: Database, admin_hash: str) -> None:
    gen = make_platform(sqlite_db, admin_hash, PlatformConfig(retention_days=0, cookie_secure=True))
    plat = next(gen)
    try:  # plain http, as a TLS-terminating proxy forwards it
        r = plat.client.post("/api/v1/session", json={"username": "admin", "password": PASSWORD})
        assert r.status_code == 200 and "Secure" in r.headers["set-cookie"]
        cookie = r.headers["set-cookie"].split(";")[0]  # the client keeps a Secure cookie for https only
        r = plat.client.delete("/api/v1/session", headers={"X-Heron-CSRF": r.json()["csrf"], "Cookie": cookie})
        assert r.status_code == 204 and "Secure" in r.headers["set-cookie"]
    finally:
        gen.close()
