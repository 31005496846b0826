"""Fixtures of the graph tests: a fresh schema on a real SQLite file and on a real PostgreSQL database."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from graph_events import GraphApi
from starlette.testclient import TestClient

from heron.platform.api.app import create_app
from heron.platform.api.auth import hash_token, new_token
from heron.platform.api.context import PlatformConfig
from heron.platform.storage.db import Database
from heron.platform.storage.sql import SqlStorage


@pytest.fixture
def gdb(database: Database) -> Database:
    """The shared migrated ``database`` fixture (SQLite, then a throwaway PostgreSQL database)."""
    return database


@pytest.fixture
def gapi(gdb: Database) -> Iterator[GraphApi]:
    """An app over SqlStorage on ``gdb`` with an admin and a reader token (learning window: 1 s)."""
    storage = SqlStorage(gdb)
    tokens = {}
    for kind in ("admin", "reader"):
        token = new_token()
        storage.add_token(hash_token(token), kind, None, time.time_ns())
        tokens[kind] = {"Authorization": f"Bearer {token}"}
    cfg = PlatformConfig(retention_days=0, baseline_learning_s=1.0, notify_poll_s=0)
    with TestClient(create_app(storage, cfg)) as client:
        yield GraphApi(client, gdb, tokens["admin"], tokens["reader"])
