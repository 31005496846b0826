"""Fixtures of the platform tests: an app over a temp data dir (helpers: platform_helpers.py), and
databases: a throwaway PostgreSQL database (``pg_url``), a migrated ``Database`` on either backend.

PostgreSQL: the server of ``HERON_TEST_PG`` (default: root over the local unix socket, as
scripts/ci-postgres.sh sets up). Without a reachable server the PostgreSQL tests skip, saying why,
except under ``CI=true``, where they fail: CI must run them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from platform_helpers import PG_SERVER, EnrolledAgent, Platform, enroll
from starlette.testclient import TestClient

from browser import chromium, console, page  # noqa: F401  (one session browser for every test directory)
from heron.platform.api.app import create_app
from heron.platform.api.context import PlatformConfig
from heron.platform.server import ServerHandle, open_data_dir, start_in_thread
from heron.platform.storage.db import Database
from heron.platform.storage.migrations import migrate

_pg_unreachable: list[str] = []  # the reason, once known (one connection attempt per session)


def _pg_admin() -> psycopg.Connection[tuple[object, ...]]:
    if not _pg_unreachable:
        try:
            return psycopg.connect(PG_SERVER, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as e:
            _pg_unreachable.append(str(e).strip().splitlines()[0] if str(e).strip() else repr(e))
    reason = f"no PostgreSQL server reachable at {PG_SERVER}: {_pg_unreachable[0]} (scripts/ci-postgres.sh)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def pg_database_url(name: str) -> str:
    """The URL of database ``name`` on the test server."""
    head, _, query = PG_SERVER.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{query}" if query else "")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """An empty throwaway PostgreSQL database (``heron_test_<random>``), dropped after the test."""
    name = f"heron_test_{secrets.token_hex(6)}"
    with _pg_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield pg_database_url(name)
    finally:
        with _pg_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def _pg_template() -> Iterator[str]:
    """A migrated database to copy (CREATE DATABASE ... TEMPLATE is much faster than migrating)."""
    name = f"heron_test_tpl_{secrets.token_hex(6)}"
    with _pg_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        db = Database(pg_database_url(name))
        try:
            migrate(db)
        finally:
            db.close()
        yield name
    finally:
        with _pg_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_migrated_url(_pg_template: str) -> Iterator[str]:
    """Like ``pg_url``, but already migrated (a copy of a migrated template)."""
    name = f"heron_test_{secrets.token_hex(6)}"
    with _pg_admin() as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{_pg_template}"')
    try:
        yield pg_database_url(name)
    finally:
        with _pg_admin() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated Database on a real SQLite file and on a throwaway PostgreSQL database."""
    url = str(tmp_path / "heron.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    db = Database(url)
    try:
        migrate(db)
        yield db
    finally:
        db.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test module with ``BOTH_BACKENDS = True`` (or a set of test names) runs its ``platform``
    tests (those tests) on both databases."""
    both = getattr(metafunc.module, "BOTH_BACKENDS", False)
    chosen = both is True or (both and metafunc.function.__name__ in both)
    if chosen and "backend" in metafunc.fixturenames:
        metafunc.parametrize("backend", ["sqlite", "postgresql"])


@pytest.fixture
def backend() -> str:
    """The database of ``platform``: parametrize a test (or module) over ["sqlite", "postgresql"]
    with this name to run it on both."""
    return "sqlite"


@pytest.fixture
def platform(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Iterator[Platform]:
    data_dir = tmp_path / "platform"
    url = request.getfixturevalue("pg_migrated_url") if backend == "postgresql" else None
    storage, creds = open_data_dir(data_dir, url)
    app = create_app(storage, PlatformConfig(retention_days=0, data_dir=data_dir))
    with TestClient(app) as client:
        yield Platform(client, storage, creds, data_dir)
    storage.close()


@pytest.fixture
def agent(platform: Platform) -> EnrolledAgent:
    return enroll(platform)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerHandle]:
    """The real platform on a loopback ephemeral port, in a thread."""
    handle = start_in_thread("127.0.0.1", 0, tmp_path / "platform")
    yield handle
    handle.stop()
