"""Login, sessions, CSRF, roles, users and tokens through the real app (TestClient)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from authkit import PASSWORD, AuthPlatform, make_platform

from heron.platform.api.context import PlatformConfig
from heron.platform.auth.sessions import COOKIE_NAME
from heron.platform.storage.db import Database


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_login_whoami_roles_csrf_logout(plat: AuthPlatform) -> None:
    c = plat.client
    assert c.get("/api/v1/session").status_code == 401
    r = c.post("/api/v1/users", headers=_bearer(plat.admin_token),
               json={"username": "ann", "password": "reader password 1", "role": "reader"})
    assert r.status_code == 201, r.text
    assert r.json()["user"]["role"] == "reader"

    r = c.post("/api/v1/session", json={"username": "ann", "password": "reader password 1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"]["username"] == "ann" and body["user"]["role"] == "reader" and body["csrf"]
    cookie = r.headers["set-cookie"]
    assert f"{COOKIE_NAME}=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace(
        "Strict", "strict") and "Path=/" in cookie and "Secure" not in cookie
    assert c.get("/api/v1/session").json() == body

    assert c.get("/api/v1/agents").status_code == 200  # a reader queries
    r = c.get("/api/v1/users")
    assert r.status_code == 403 and "reader user" in r.json()["error"]
    r = c.post("/api/v1/tokens", headers={"X-Heron-CSRF": body["csrf"]}, json={"name": "x", "role": "admin"})
    assert r.status_code == 403

    assert c.delete("/api/v1/session").status_code == 403  # no CSRF header
    assert c.delete("/api/v1/session", headers={"X-Heron-CSRF": "wrong"}).status_code == 403
    assert c.delete("/api/v1/session", headers={"X-Heron-CSRF": body["csrf"]}).status_code == 204
    assert c.get("/api/v1/session").status_code == 401
    c.cookies.set(COOKIE_NAME, cookie.split(";")[0].split("=", 1)[1])  # the logged-out cookie, replayed
    assert c.get("/api/v1/agents").status_code == 401


def test_admin_session_needs_csrf_for_changes(plat: AuthPlatform) -> None:
    csrf = plat.login()
    c = plat.client
    assert c.get("/api/v1/users").status_code == 200  # GET needs no CSRF
    new = {"username": "bob", "password": "bob password 12"}
    r = c.post("/api/v1/users", json=new)
    assert r.status_code == 403 and "X-Heron-CSRF" in r.json()["error"]
    assert c.post("/api/v1/users", json=new, headers={"X-Heron-CSRF": csrf}).status_code == 201
    # a bearer token needs no CSRF even when a cookie is sent too
    r = c.post("/api/v1/users", json={**new, "username": "carl"}, headers=_bearer(plat.admin_token))
    assert r.status_code == 201


def test_https_cookie_is_secure(plat: AuthPlatform) -> None:
    r = plat.client.post("https://testserver/api/v1/session", json={"username": "admin", "password": PASSWORD})
    assert r.status_code == 200 and "Secure" in r.headers["set-cookie"]


def test_bad_logins(plat: AuthPlatform) -> None:
    c = plat.client
    for body in ({"username": "admin", "password": "wrong password!"}, {"username": "nobody", "password": PASSWORD}):
        r = c.post("/api/v1/session", json=body)
        assert r.status_code == 401 and r.json()["error"] == "invalid username or password"
    assert c.post("/api/v1/session", json={"username": "admin"}).status_code == 400
    assert c.post("/api/v1/session", json={"username": "admin", "password": "x" * 5000}).status_code == 400
    assert c.post("/api/v1/session", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    assert c.post("/api/v1/session", content=b"a=b").status_code == 415
    c.cookies.set(COOKIE_NAME, "x" * 3000)
    assert c.get("/api/v1/agents").status_code == 401


def test_rate_limit(plat: AuthPlatform) -> None:
    c = plat.client
    for _ in range(5):
        assert c.post("/api/v1/session", json={"username": "admin", "password": "wrong password!"}).status_code == 401
    r = c.post("/api/v1/session", json={"username": "admin", "password": PASSWORD})  # even the right one
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
    # another username from the same address is not affected
    assert c.post("/api/v1/session", json={"username": "other", "password": "wrong password!"}).status_code == 401


def test_disabled_user_and_expired_session(sqlite_db: Database, admin_hash: str) -> None:
    cfg = PlatformConfig(retention_days=0, session_idle_s=0.5, session_max_s=60)
    gen = make_platform(sqlite_db, admin_hash, cfg)
    plat = next(gen)
    try:
        plat.store.add_user("ann", admin_hash, "admin", 1)
        plat.login("ann")
        assert plat.client.get("/api/v1/session").status_code == 200
        time.sleep(0.7)
        assert plat.client.get("/api/v1/session").status_code == 401  # idle too long
        plat.login("ann")
        r = plat.client.patch("/api/v1/users/2", headers=_bearer(plat.admin_token), json={"disabled": True})
        assert r.status_code == 200 and r.json()["user"]["disabled"]
        assert plat.client.get("/api/v1/agents").status_code == 401
        assert plat.client.post("/api/v1/session", json={"username": "ann", "password": PASSWORD}).status_code == 401
    finally:
        gen.close()


def test_last_admin_protection(plat: AuthPlatform) -> None:
    c, h = plat.client, _bearer(plat.admin_token)
    uid = plat.admin_id
    for change in ({"role": "reader"}, {"disabled": True}):
        r = c.patch(f"/api/v1/users/{uid}", headers=h, json=change)
        assert r.status_code == 409 and "no enabled admin" in r.json()["error"]
    assert c.delete(f"/api/v1/users/{uid}", headers=h).status_code == 409
    assert c.delete("/api/v1/users/999", headers=h).status_code == 404
    assert c.patch("/api/v1/users/abc", headers=h, json={}).status_code == 404
    assert c.patch(f"/api/v1/users/{uid}", headers=h, json={"role": "root"}).status_code == 400
    assert c.patch(f"/api/v1/users/{uid}", headers=h, json={"password": "short"}).status_code == 400
    r = c.post("/api/v1/users", headers=h, json={"username": "eve", "password": "eve password 12", "role": "admin"})
    eve = r.json()["user"]["id"]
    dup = {"username": "eve", "password": "eve password 12"}
    assert c.post("/api/v1/users", headers=h, json=dup).status_code == 409
    assert c.patch(f"/api/v1/users/{uid}", headers=h, json={"role": "reader"}).status_code == 200
    assert c.delete(f"/api/v1/users/{eve}", headers=h).status_code == 409  # eve is the last admin now
    assert [u["username"] for u in c.get("/api/v1/users", headers=h).json()["users"]] == ["admin", "eve"]


def test_own_password_change(plat: AuthPlatform) -> None:
    csrf = plat.login()
    c = plat.client
    hdr = {"X-Heron-CSRF": csrf}
    r = c.post("/api/v1/users/me/password", headers=hdr, json={"old_password": "wrong password!",
                                                              "new_password": "new password 123"})
    assert r.status_code == 403
    r = c.post("/api/v1/users/me/password", headers=hdr, json={"old_password": PASSWORD,
                                                              "new_password": "new password 123"})
    assert r.status_code == 204
    assert c.get("/api/v1/session").status_code == 200  # this session stays
    c.cookies.clear()
    assert c.post("/api/v1/session", json={"username": "admin", "password": PASSWORD}).status_code == 401
    plat.login(password="new password 123")
    r = c.post("/api/v1/users/me/password", headers=_bearer(plat.admin_token),
               json={"old_password": "a" * 12, "new_password": "b" * 12})
    assert r.status_code == 400  # a token has no password


def test_tokens_create_list_revoke_expire(plat: AuthPlatform) -> None:
    c, h = plat.client, _bearer(plat.admin_token)
    r = c.post("/api/v1/tokens", headers=h, json={"name": "grafana", "role": "reader"})
    assert r.status_code == 201, r.text
    made = r.json()
    token, tid = made["token"], made["id"]
    assert len(tid) == 16 and made["kind"] == "reader"
    assert c.get("/api/v1/agents", headers=_bearer(token)).status_code == 200
    assert c.get("/api/v1/tokens", headers=_bearer(token)).status_code == 403
    listed = c.get("/api/v1/tokens", headers=h).json()["tokens"]
    assert token not in str(listed)
    row = next(t for t in listed if t["id"] == tid)
    assert set(row) == {"id", "name", "kind", "created", "last_used", "expires", "revoked"}
    assert row["last_used"] is not None and row["revoked"] is None

    assert c.delete(f"/api/v1/tokens/{tid}", headers=h).status_code == 204
    assert c.get("/api/v1/agents", headers=_bearer(token)).status_code == 401
    assert c.delete("/api/v1/tokens/ffffffffffffffff", headers=h).status_code == 404
    assert c.delete("/api/v1/tokens/%25", headers=h).status_code == 404

    soon = time.time_ns() + 700_000_000
    r = c.post("/api/v1/tokens", headers=h, json={"name": "brief", "role": "enroll", "expires": soon})
    assert r.status_code == 201
    short = r.json()["token"]
    assert c.get("/api/v1/agents", headers=_bearer(short)).status_code == 403  # valid, but enroll may not query
    time.sleep(0.8)
    assert c.get("/api/v1/agents", headers=_bearer(short)).status_code == 401  # expired
    assert c.post("/api/v1/tokens", headers=h, json={"name": "old", "role": "reader", "expires": 5}).status_code == 400
    assert c.post("/api/v1/tokens", headers=h, json={"name": "x", "role": "agent"}).status_code == 400


def test_last_used_written_at_most_once_a_minute(plat: AuthPlatform) -> None:
    c, h = plat.client, _bearer(plat.admin_token)
    c.get("/api/v1/agents", headers=h)
    first = c.get("/api/v1/tokens", headers=h).json()["tokens"][0]["last_used"]
    time.sleep(0.01)
    c.get("/api/v1/agents", headers=h)
    assert c.get("/api/v1/tokens", headers=h).json()["tokens"][0]["last_used"] == first


@pytest.fixture
def pg_plat(pg_url: str, admin_hash: str) -> Iterator[AuthPlatform]:
    from heron.platform.storage.sql import SqlStorage

    storage = SqlStorage.open(pg_url)
    try:
        yield from make_platform(storage.db, admin_hash, PlatformConfig(retention_days=0))
    finally:
        storage.close()


def test_login_flow_on_postgresql(pg_plat: AuthPlatform) -> None:
    csrf = pg_plat.login()
    c = pg_plat.client
    assert c.get("/api/v1/users").json()["users"][0]["last_login"] is not None
    assert c.post("/api/v1/tokens", headers={"X-Heron-CSRF": csrf}, json={"name": "n", "role": "reader"}).status_code \
        == 201
    assert c.delete("/api/v1/session", headers={"X-Heron-CSRF": csrf}).status_code == 204
    assert c.get("/api/v1/session").status_code == 401


def test_deeply_nested_login_body_is_a_400(plat: AuthPlatform) -> None:
    body = "[" * 100_000 + "]" * 100_000
    r = plat.client.post("/api/v1/session", content=body, headers={"content-type": "application/json"})
    assert r.status_code in (400, 413) and "error" in r.json()
    r = plat.client.post("/api/v1/session", content=b'{"username": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
                         headers={"content-type": "application/json"})
    assert r.status_code == 400 and "invalid body" in r.json()["error"]
