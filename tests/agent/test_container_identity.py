"""A process started inside a real Docker container is reported with that container's id, by
every process collector this machine supports (through the whole agent pipeline)."""

from __future__ import annotations

import time
import uuid

import msgspec
import pytest

from containers import RunningContainer, docker_container, docker_daemon  # noqa: F401
from heron.agent.config import AgentConfig
from heron.agent.host import Host
from heron.agent.runtime import Agent
from heron.agent.sources.registry import LADDERS
from heron.schema.events import ProcessExec
from listsink import ListSink

pytestmark = pytest.mark.privileged


@pytest.mark.parametrize("mechanism", [s.mechanism for s in LADDERS["process"]])
def test_exec_in_container_carries_container_id(mechanism: str, host: Host,
                                                docker_container: RunningContainer) -> None:  # noqa: F811
    cls = next(s for s in LADDERS["process"] if s.mechanism == mechanism)
    if not (probe := cls.probe(host)).ok:
        pytest.skip(f"process={mechanism} cannot run here: {probe.reason}")
    cfg = AgentConfig(collectors={"process": mechanism, "network": "off", "file": "off", "package": "off"})
    cfg = msgspec.structs.replace(cfg, process=msgspec.structs.replace(cfg.process, poll_interval_s=0.2),
                                  dedupe=msgspec.structs.replace(cfg.dedupe, window_s=0.2))
    sink = ListSink()
    agent = Agent(cfg, [sink], host=host)
    agent.start()
    try:
        marker = f"heron-ctr-{uuid.uuid4().hex[:8]}"
        r = docker_container.exec("/bin/sh", "-c", f"sleep 1.5; echo {marker}")
        assert r.returncode == 0 and marker in r.stdout
        time.sleep(0.5)
    finally:
        agent.stop()
    # The docker CLI on the host carries the marker too: take the shell that ran inside.
    execs = [e for e in sink.events if isinstance(e, ProcessExec) and e.process.argv[:1] == ["/bin/sh"]
             and marker in " ".join(e.process.argv)]
    assert execs, f"{mechanism}: exec inside the container not seen"
    p = execs[0].process
    assert p.container_id == docker_container.id
    assert p.container_runtime == "docker"
    # The parent chain stops at the container boundary: nothing from the host side.
    assert all(a.pid != 1 for a in p.ancestors)
