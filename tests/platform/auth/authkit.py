"""Shared helpers of the auth tests (imported by module name: tests/platform/auth is on sys.path)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from starlette.testclient import TestClient

from heron.platform.api.auth import hash_token, new_token
from heron.platform.api.context import PlatformConfig
from heron.platform.auth.store import AuthStore
from heron.platform.storage.db import Database
from heron.platform.storage.sql import SqlStorage

PASSWORD = "correct horse battery"


@dataclass
class AuthPlatform:
    client: TestClient
    store: AuthStore
    admin_token: str
    admin_id: int

    def login(self, username: str = "admin", password: str = PASSWORD) -> str:
        """Log in (the client keeps the cookie); returns the CSRF token."""
        r = self.client.post("/api/v1/session", json={"username": username, "password": password})
        assert r.status_code == 200, r.text
        return str(r.json()["csrf"])


def make_platform(db: Database, admin_hash: str, config: PlatformConfig) -> Iterator[AuthPlatform]:
    from heron.platform.api.app import create_app  # imported late: the store tests need none of the app

    storage = SqlStorage(db)
    store = AuthStore(db)
    admin = store.add_user("admin", admin_hash, "admin", 1)
    token = new_token()
    store.add_token(hash_token(token), "admin", "test admin", None, 1)
    with TestClient(create_app(storage, config), base_url="http://testserver") as client:
        yield AuthPlatform(client, store, token, admin.id)


