"""Fixtures of the auth tests: a Database on SQLite and on a throwaway PostgreSQL database, and an
app whose storage carries that Database (as the SQLAlchemy storage does)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from authkit import PASSWORD, AuthPlatform, make_platform

from heron.platform.api.context import PlatformConfig
from heron.platform.auth import passwords
from heron.platform.storage import schema
from heron.platform.storage.db import Database
from heron.platform.storage.sql import SqlStorage


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


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    storage = SqlStorage.open(str(tmp_path / "heron.db"))  # migrated as the platform does it
    yield storage.db
    storage.close()


@pytest.fixture
def plat(sqlite_db: Database, admin_hash: str) -> Iterator[AuthPlatform]:
    yield from make_platform(sqlite_db, admin_hash, PlatformConfig(retention_days=0))
