"""Fixtures of the platform tests: an app over a temp data dir (helpers: platform_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from platform_helpers import EnrolledAgent, Platform, enroll
from starlette.testclient import TestClient

from heron.platform.api.app import create_app
from heron.platform.api.context import PlatformConfig
from heron.platform.server import ServerHandle, open_data_dir, start_in_thread


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    data_dir = tmp_path / "platform"
    storage, creds = open_data_dir(data_dir)
    app = create_app(storage, PlatformConfig(retention_days=0))
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
