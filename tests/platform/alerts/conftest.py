"""Fixtures of the alert tests: a Database with every table on a real SQLite file and on a throwaway
PostgreSQL database (dropped after), and an app whose storage carries that Database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alert_events import Api
from starlette.testclient import TestClient

from heron.platform.api.app import create_app
from heron.platform.api.auth import hash_token, new_token
from heron.platform.api.context import PlatformConfig
from heron.platform.storage.db import Database
from heron.platform.storage.sql import SqlStorage


@pytest.fixture
def adb(database: Database) -> Database:
    """The shared migrated ``database`` fixture (SQLite, then a throwaway PostgreSQL database)."""
    return database


@pytest.fixture
def api(adb: Database, tmp_path: Path) -> Iterator[Api]:
    storage = SqlStorage(adb)
    tokens = {}
    for kind in ("admin", "reader"):
        token = new_token()
        storage.add_token(hash_token(token), kind, None, time.time_ns())
        tokens[kind] = {"Authorization": f"Bearer {token}"}
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    cfg = PlatformConfig(retention_days=0, rule_paths=(str(rules_dir),), rules_check_interval_s=0.0,
                         notify_poll_s=0)
    with TestClient(create_app(storage, cfg)) as client:
        yield Api(client, adb, tokens["admin"], tokens["reader"], rules_dir)
