"""AuthStore on SQLite and PostgreSQL: users, the last-admin rule, sessions, tokens."""

from __future__ import annotations

import pytest

from heron.platform.auth import sessions
from heron.platform.auth.store import AuthStore, Conflict
from heron.platform.storage.db import Database

SEC = 10**9


def test_users_and_last_admin(auth_db: Database) -> None:
    store = AuthStore(auth_db)
    assert store.count_users() == 0
    admin = store.add_user("admin", "h1", "admin", 100)
    reader = store.add_user("ann", "h2", "reader", 101)
    with pytest.raises(Conflict, match="exists"):
        store.add_user("ann", "h3", "reader", 102)
    assert [u.username for u in store.list_users()] == ["admin", "ann"]
    found = store.find_user("ann")
    assert found is not None and found[1] == "h2" and found[0] == reader

    for change in ({"role": "reader"}, {"disabled": True}):
        with pytest.raises(Conflict, match="no enabled admin"):
            store.update_user(admin.id, 200, **change)  # type: ignore[arg-type]
    with pytest.raises(Conflict):
        store.delete_user(admin.id)
    assert store.get_user(admin.id) == admin  # the refused changes were rolled back

    promoted = store.update_user(reader.id, 300, role="admin")
    assert promoted is not None and promoted.role == "admin"
    disabled = store.update_user(admin.id, 301, disabled=True)
    assert disabled is not None and disabled.disabled == 301
    with pytest.raises(Conflict):
        store.update_user(reader.id, 302, disabled=True)
    assert store.update_user(admin.id, 303, disabled=False) is not None
    assert store.delete_user(reader.id)
    assert not store.delete_user(reader.id)
    assert store.update_user(9999, 1, role="admin") is None


def test_sessions_expire_idle_and_on_disable(auth_db: Database) -> None:
    store = AuthStore(auth_db)
    admin = store.add_user("admin", "h", "admin", 1)
    ann = store.add_user("ann", "h", "reader", 1)
    policy = sessions.SessionPolicy(idle_s=60, max_s=3600)
    t0 = 1_000 * SEC
    new = sessions.create_session(store, ann.id, t0, policy)
    assert new.expires == t0 + 3600 * SEC
    # only the hash is stored
    with auth_db.read() as conn:
        from heron.platform.storage.schema import sessions as table
        stored = [r.token_hash for r in conn.execute(table.select())]
    assert stored == [sessions.session_hash(new.cookie)] and new.cookie not in stored

    found = sessions.lookup_session(store, new.cookie, t0 + 30 * SEC, policy)
    assert found is not None and found.user == ann and found.csrf == new.csrf
    assert sessions.lookup_session(store, new.cookie + "x", t0, policy) is None
    assert sessions.lookup_session(store, "x" * 1000, t0, policy) is None
    # kept alive by use (last_seen moves at most once a minute), idle expiry otherwise
    for minute in range(1, 5):
        assert sessions.lookup_session(store, new.cookie, t0 + minute * 50 * SEC, policy) is not None
    assert sessions.lookup_session(store, new.cookie, t0 + 600 * SEC, policy) is None
    assert store.find_session(sessions.session_hash(new.cookie)) is None  # deleted when found ended

    # absolute expiry even when active
    s2 = sessions.create_session(store, ann.id, t0, policy)
    for k in range(1, 80):
        sessions.lookup_session(store, s2.cookie, t0 + k * 45 * SEC, policy)
    assert sessions.lookup_session(store, s2.cookie, t0 + 3600 * SEC, policy) is None

    # disabling the user ends its sessions; revoke ends one
    s3 = sessions.create_session(store, ann.id, t0, policy)
    store.update_user(ann.id, t0, disabled=True)
    assert sessions.lookup_session(store, s3.cookie, t0 + SEC, policy) is None
    s4 = sessions.create_session(store, admin.id, t0, policy)
    assert sessions.revoke_session(store, s4.cookie)
    assert sessions.lookup_session(store, s4.cookie, t0 + SEC, policy) is None
    assert not sessions.revoke_session(store, s4.cookie)


def test_tokens(auth_db: Database) -> None:
    store = AuthStore(auth_db)
    a = store.add_token("a" * 64, "reader", "ci", None, 10, expires=500)
    store.add_token("ab" + "0" * 62, "enroll", "fleet", None, 20)
    store.add_token("c" * 64, "agent", "", None, 30)
    assert [t.name for t in store.list_tokens()] == ["fleet", "ci"]  # newest first, no agent tokens
    assert store.find_token("a" * 64) == a
    assert [t.token_hash for t in store.tokens_by_id("a" * 16)] == ["a" * 64]
    assert store.tokens_by_id("%") == []  # LIKE wildcards are escaped
    store.touch_token("a" * 64, 1000, older_than=940)
    store.touch_token("a" * 64, 1030, older_than=970)  # last use 1000 is recent: no write
    found = store.find_token("a" * 64)
    assert found is not None and found.last_used == 1000
    assert store.revoke_token("a" * 64, 2000)
    assert not store.revoke_token("a" * 64, 2001)
    assert store.list_tokens()[1].json() == {"id": "a" * 16, "name": "ci", "kind": "reader", "created": 10,
                                             "last_used": 1000, "expires": 500, "revoked": 2000}
