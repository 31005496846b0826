"""One set of assertions, run against every process collector this machine supports.

Each rung of the ladder must see a spawned child with its exact argv, pid, parent and user, and
its exit (with the exit code where the mechanism can know it). procfs polling only sees
processes that live longer than its interval, so the child here lives 1.5 s.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from collect import Collector
from heron.agent.health import Health
from heron.agent.host import Host
from heron.agent.linux.procfs import ProcFS
from heron.agent.sources.base import SourceContext
from heron.agent.sources.registry import LADDERS
from heron.schema.events import ProcessExec, ProcessExit, process_key

MECHANISMS = [s.mechanism for s in LADDERS["process"]]
EXIT_CODES_KNOWN = {"ebpf", "audit", "proc_connector"}


@pytest.fixture(params=MECHANISMS)
def running(request: pytest.FixtureRequest, host: Host) -> Iterator[tuple[str, Collector]]:
    cls = next(s for s in LADDERS["process"] if s.mechanism == request.param)
    probe = cls.probe(host)
    if not probe.ok:
        pytest.skip(f"process={request.param} cannot run here: {probe.reason}")
    col = Collector()
    src = cls(SourceContext(host, Health(), col, {"poll_interval_s": 0.2}))
    snap = src.snapshot()
    assert any(p.pid == os.getpid() for p in snap), "snapshot must include the test process"
    stop = threading.Event()
    th = threading.Thread(target=src.run, args=(stop,), daemon=True)
    th.start()
    time.sleep(0.3)
    yield request.param, col
    stop.set()
    th.join(10)
    assert not th.is_alive(), "source must return promptly after stop"


@pytest.mark.privileged
def test_exec_and_exit_seen_with_identity(running: tuple[str, Collector], host: Host) -> None:
    mech, col = running
    marker = f"heron-conf-{uuid.uuid4().hex[:8]}"
    script = f"sleep 1.5; exit 3 # {marker}"
    child = subprocess.Popen(["/bin/sh", "-c", script, "arg with space"],
                             preexec_fn=lambda: os.setresuid(65534, 65534, 65534))
    assert child.wait(10) == 3
    execs = col.wait_for(lambda e: isinstance(e, ProcessExec) and marker in " ".join(e.process.argv))
    assert execs, f"{mech}: exec of the child not seen"
    p = execs[0].process  # type: ignore[attr-defined]
    assert p.argv == ["/bin/sh", "-c", script, "arg with space"]
    assert p.pid == child.pid
    assert p.ppid == os.getpid()
    assert p.uid == 65534 and p.euid == 65534
    me = ProcFS().stat(os.getpid())
    assert p.key == process_key(host.boot_id, child.pid, p.start_ticks)
    if mech != "procfs":
        assert p.parent_key in (None, process_key(host.boot_id, os.getpid(), me.start_ticks))
    exits = col.wait_for(lambda e: isinstance(e, ProcessExit) and e.pid == child.pid)
    assert exits, f"{mech}: exit of the child not seen"
    ex = exits[0]
    assert isinstance(ex, ProcessExit)
    if mech in EXIT_CODES_KNOWN:
        assert ex.exit_code == 3 and ex.signal is None
