"""The agent's real shipper (heron.agent.sinks.platform) against the real platform over loopback:
enrol, ship through the spool, events stored once and queryable."""

from __future__ import annotations

from pathlib import Path

import pytest
from platform_helpers import exec_event, exit_event

from heron.agent.host import detect_host
from heron.platform.client import list_agents, list_events
from heron.platform.server import ServerHandle

sinks = pytest.importorskip("heron.agent.sinks.platform")
pytestmark = pytest.mark.timeout(60)


def test_agent_ships_to_platform(server: ServerHandle, tmp_path: Path) -> None:
    host = detect_host().info
    sink = sinks.PlatformSink(url=server.url, enrollment_token=server.credentials.enrollment_token,
                              state_dir=tmp_path / "agent", host=host, batch_max_delay_s=0.05)
    try:
        sink.write([exec_event(321, "/usr/bin/e2e", ["e2e", "--flag"]), exit_event(321, "/usr/bin/e2e", 3)])
        assert sink.drain(timeout=10)
    finally:
        sink.close()
    admin = server.credentials.admin_token
    events = list_events(server.url, admin, pid=321)
    assert [e["event"]["type"] for e in events] == ["process.exit", "process.exec"]
    assert {e["host"] for e in events} == {host.hostname}
    agents = list_agents(server.url, admin)
    assert len(agents) == 1 and agents[0]["host"]["boot_id"] == host.boot_id
