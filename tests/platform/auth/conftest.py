"""Fixtures of the auth tests: a Database on SQLite and on a throwaway PostgreSQL database, and an
app whose storage carries that Database (as the SQLAlchemy storage does)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from heron.platform.api.auth import hash_token, new_token
from heron.platform.api.context import PlatformConfig
from heron.platform.auth import passwords
from heron.platform.auth.store import AuthStore
from heron.platform.storage import schema
from heron.platform.storage.db import Database
from heron.platform.storage.sql import SqlStorage

PASSWORD = "correct horse battery"


@pytest.fixture(scope="session")
def admin_hash() -> str:
    return passwords.hash_password(PASSWORD)  # scrypt is slow on purpose: hash once per run


@pytest.fixture(params=["sqlite", "postgresql"])
def auth_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    url = str(tmp_path / "auth.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    db = Database(url)
    schema.metadata.create_all(db.engine)
    try:
        yield db
    finally:
        db.close()


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


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    storage = SqlStorage.open(str(tmp_path / "heron.db"))  # migrated as the platform does it
    yield storage.db
    storage.close()


@pytest.fixture
def plat(sqlite_db: Database, admin_hash: str) -> Iterator[AuthPlatform]:
    yield from make_platform(sqlite_db, admin_hash, PlatformConfig(retention_days=0))
