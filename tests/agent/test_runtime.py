"""The agent's pipeline end to end, on the procfs rung (runs everywhere /proc exists)."""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from typing import ClassVar

import msgspec
import pytest

from heron.agent.config import AgentConfig, FilterConfig, MatchRule
from heron.agent.host import Host
from heron.agent.runtime import Agent
from heron.agent.sources import ladder, registry
from heron.agent.sources.base import ProbeResult, SourceContext
from heron.agent.sources.process.procfs import ProcfsProcessSource
from heron.schema.events import AgentHealth, Process, ProcessExec
from listsink import ListSink

# These tests are about the pipeline: network and file collection stay off (they have their own).
OFF = {"network": "off", "file": "off", "package": "off"}


def config(**kw: object) -> AgentConfig:
    base = AgentConfig(collectors={"process": "procfs", **OFF})
    base = msgspec.structs.replace(base, process=msgspec.structs.replace(base.process, poll_interval_s=0.1))
    return msgspec.structs.replace(base, **kw)


def test_pipeline_enriches_filters_and_drains_on_stop(host: Host) -> None:
    sink = ListSink()
    cfg = config(filter=FilterConfig(exclude=[MatchRule(cmdline="re:heron-excluded")]))
    agent = Agent(cfg, [sink], host=host)
    agent.start()
    marker = uuid.uuid4().hex[:8]
    kept = subprocess.Popen(["/bin/sh", "-c", f"sleep 0.6 # heron-kept-{marker}"])
    dropped = subprocess.Popen(["/bin/sh", "-c", f"sleep 0.6 # heron-excluded-{marker}"])
    kept.wait()
    dropped.wait()
    time.sleep(0.3)
    agent.stop()
    assert sink.closed
    execs = [e for e in sink.events if isinstance(e, ProcessExec) and marker in " ".join(e.process.argv)]
    assert len(execs) == 1 and "heron-kept" in execs[0].process.argv[2]
    p = execs[0].process
    assert p.user == "root" and p.ancestors and p.ancestors[0].pid == p.ppid
    assert any(isinstance(e, ProcessExec) and e.source == "process.snapshot" for e in sink.events)
    health = [e for e in sink.events if isinstance(e, AgentHealth)]
    assert len(health) >= 2 and health[-1].collectors == {"process": "procfs"}
    assert health[-1].counters["filter.dropped"] >= 1


class ExplodingSource:
    capability: ClassVar[str] = "process"
    mechanism: ClassVar[str] = "exploding"

    @classmethod
    def probe(cls, host: Host) -> ProbeResult:
        return ProbeResult.yes()

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx

    def snapshot(self) -> list[Process]:
        return []

    def run(self, stop: threading.Event) -> None:
        raise OSError("ring buffer went away")

    def close(self) -> None:
        pass


def test_failing_rung_falls_back_and_says_so(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.LADDERS, "process", [ExplodingSource, ProcfsProcessSource])
    monkeypatch.setattr(ladder, "LADDERS", registry.LADDERS)
    sink = ListSink()
    agent = Agent(config(collectors=dict(OFF)), [sink], host=host)
    agent.start()
    deadline = time.monotonic() + 5
    while agent.collectors_in_use() != {"process": "procfs"} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert agent.collectors_in_use() == {"process": "procfs"}
    agent.stop()
    messages = [m for e in sink.events if isinstance(e, AgentHealth) for m in e.messages]
    assert any("process.exploding failed" in m and "falling back to process.procfs" in m for m in messages)


def test_pinned_unavailable_is_an_error(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    class Never(ExplodingSource):
        mechanism: ClassVar[str] = "never"

        @classmethod
        def probe(cls, host: Host) -> ProbeResult:
            return ProbeResult.no("not on this kernel")

    monkeypatch.setitem(registry.LADDERS, "process", [Never, ProcfsProcessSource])
    with pytest.raises(ladder.PinnedMechanismUnavailable, match="not on this kernel"):
        ladder.choose("process", host, "never")
    assert ladder.choose("process", host).selected is ProcfsProcessSource


class FailsToStart(ExplodingSource):
    mechanism: ClassVar[str] = "fails_to_start"

    def snapshot(self) -> list[Process]:
        raise OSError("ring buffer map could not be created")


def test_rung_that_fails_to_start_falls_back(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.LADDERS, "process", [FailsToStart, ProcfsProcessSource])
    sink = ListSink()
    agent = Agent(config(collectors=dict(OFF)), [sink], host=host)
    agent.start()
    assert agent.collectors_in_use() == {"process": "procfs"}
    agent.stop()
    messages = [m for e in sink.events if isinstance(e, AgentHealth) for m in e.messages]
    assert any("fails_to_start failed to start" in m and "falling back to process.procfs" in m for m in messages)


def test_a_batch_that_breaks_the_pipeline_costs_only_that_batch(host: Host) -> None:
    sink = ListSink()
    agent = Agent(config(), [sink], host=host, emit_snapshot=False)
    agent.start()
    bad = ProcessExec(ts=1, process=Process(key="k", pid=1))
    bad.process.argv = None  # type: ignore[assignment]  # a record no transform expects
    agent._emit([bad])
    marker = uuid.uuid4().hex[:8]
    # procfs polls every 0.1 s: 1.5 s of life leaves room for a loaded machine (CI once missed a 0.6 s one)
    subprocess.run(["/bin/sh", "-c", f"sleep 1.5 # heron-after-{marker}"], check=True)
    time.sleep(0.3)
    agent.stop()
    assert any(isinstance(e, ProcessExec) and marker in " ".join(e.process.argv) for e in sink.events)
    health = [e for e in sink.events if isinstance(e, AgentHealth)]
    assert health[-1].counters.get("pipeline.errors", 0) >= 1


def test_a_capability_pinned_off_is_not_collected_and_says_so(host: Host) -> None:
    sink = ListSink()
    agent = Agent(config(), [sink], host=host)
    agent.start()
    agent.stop()
    health = [e for e in sink.events if isinstance(e, AgentHealth)]
    notes = [m for h in health for m in h.messages]
    assert "network collection is off (configuration)" in notes
    assert "file collection is off (configuration)" in notes
    assert "package collection is off (configuration)" in notes
    assert health[-1].collectors == {"process": "procfs"}
