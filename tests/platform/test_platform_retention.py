"""The app runs retention in the background from its start."""

from __future__ import annotations

import time
from pathlib import Path

from platform_helpers import exec_event
from starlette.testclient import TestClient

from heron.platform.api.app import create_app
from heron.platform.api.context import PlatformConfig
from heron.platform.api.ingest import event_row
from heron.platform.server import open_data_dir
from heron.platform.storage.base import AgentRecord


def test_app_lifespan_runs_retention(tmp_path: Path) -> None:
    storage, _ = open_data_dir(tmp_path / "p")
    now = time.time_ns()
    storage.add_agent(AgentRecord("a1", "h", "{}", "h", "0", now, now, None), "hash")
    day = 86_400 * 10**9
    storage.ingest_batch("a1", "b", [event_row(exec_event(1, "/old", [], ts=now - 3 * day)),
                                     event_row(exec_event(2, "/new", [], ts=now))], None, now)
    app = create_app(storage, PlatformConfig(retention_days=2, retention_interval_s=3600))
    with TestClient(app):
        deadline = time.monotonic() + 5
        while storage.count_events() != 1 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert storage.count_events() == 1
    storage.close()
