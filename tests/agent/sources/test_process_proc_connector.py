"""Process-connector source against the real kernel, and its bounded identity cache."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from collect import Collector
from heron.agent.health import Health
from heron.agent.host import Host
from heron.agent.linux.proc_connector import Fork
from heron.agent.linux.procfs import ProcFS
from heron.agent.sources.base import SourceContext
from heron.agent.sources.process.proc_connector import KnownProcesses, ProcConnectorProcessSource
from heron.schema.events import ProcessExec, ProcessExit, process_key


def test_known_processes_is_bounded_and_fork_forgets_reused_pid() -> None:
    known = KnownProcesses(ProcFS("/nonexistent"), cap=3)
    for pid in range(10):
        known.remember(pid, 100 + pid, "/bin/x", "x")
    assert sorted(known.info) == [7, 8, 9]
    known.forked(Fork(0, 1, 1, 9, 9))  # pid 9 reused by a new process
    assert known.lookup(9) is None and known.parents[9] == 1
    assert known.start_ticks(9) is not None and known.estimated == 1  # from the fork time
    known.forked(Fork(0, 1, 1, 20, 21))  # a thread: nothing forgotten, no parent recorded
    assert 20 not in known.parents and 21 not in known.parents
    assert known.start_ticks(12345) is None


@pytest.fixture
def source(host: Host) -> Iterator[tuple[Collector, Health]]:
    assert ProcConnectorProcessSource.probe(host).ok
    col, health = Collector(), Health()
    src = ProcConnectorProcessSource(SourceContext(host, health, col, {}))
    assert any(p.pid == os.getpid() for p in src.snapshot())
    stop = threading.Event()
    th = threading.Thread(target=src.run, args=(stop,), daemon=True)
    th.start()
    time.sleep(0.2)
    yield col, health
    stop.set()
    th.join(10)
    assert not th.is_alive()


def as_nobody() -> None:
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)


@pytest.mark.privileged
def test_exec_identity_argv_and_exit_code(source: tuple[Collector, Health], host: Host) -> None:
    col, _ = source
    marker = f"heron-pc-{uuid.uuid4().hex[:8]}"
    # Lives 0.3 s so /proc can be read: argv of instant processes is the documented loss.
    argv = ["/bin/sh", "-c", f"sleep 0.3; exit 7 # {marker}", "arg with space", ""]
    child = subprocess.Popen([*argv, b"\xff\xfe"], preexec_fn=as_nobody)
    assert child.wait(10) == 7
    [ev] = col.wait_for(lambda e: isinstance(e, ProcessExec) and e.process.pid == child.pid)
    assert isinstance(ev, ProcessExec)
    p = ev.process
    assert p.argv == [*argv, "\\xff\\xfe"]
    assert (p.pid, p.ppid) == (child.pid, os.getpid())
    assert (p.uid, p.euid, p.gid, p.egid) == (65534, 65534, 65534, 65534)
    assert p.exe == "/usr/bin/dash" or p.exe.endswith("sh")
    assert p.cgroup and p.start_ticks
    assert p.key == process_key(host.boot_id, child.pid, p.start_ticks)
    me = ProcFS().stat(os.getpid())
    assert p.parent_key == process_key(host.boot_id, os.getpid(), me.start_ticks)
    [ex] = col.wait_for(lambda e: isinstance(e, ProcessExit) and e.pid == child.pid)
    assert isinstance(ex, ProcessExit)
    assert (ex.exit_code, ex.signal, ex.key, ex.exe) == (7, None, p.key, p.exe)
    assert ex.runtime_ns is not None and 250_000_000 < ex.runtime_ns < 5_000_000_000


@pytest.mark.privileged
def test_killed_by_signal(source: tuple[Collector, Health]) -> None:
    col, _ = source
    sleeper = subprocess.Popen(["/bin/sleep", "30"])
    assert col.wait_for(lambda e: isinstance(e, ProcessExec) and e.process.pid == sleeper.pid)
    sleeper.send_signal(signal.SIGKILL)
    sleeper.wait()
    [ex] = col.wait_for(lambda e: isinstance(e, ProcessExit) and e.pid == sleeper.pid)
    assert isinstance(ex, ProcessExit)
    assert ex.signal == signal.SIGKILL and ex.exit_code is None and ex.exe == "/usr/bin/sleep"


@pytest.mark.privileged
def test_thousand_quick_execs_all_seen(source: tuple[Collector, Health],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    col, health = source
    tag = uuid.uuid4().hex[:6]
    loop = f'i=0; while [ $i -lt 1000 ]; do /bin/true heron-marker-{tag}-$i; i=$((i+1)); done'
    shell = subprocess.Popen(["/bin/sh", "-c", loop])
    assert shell.wait(60) == 0
    # Every child of the loop shell is one /bin/true exec, whether or not its argv was read in time.
    seen = col.wait_for(lambda e: isinstance(e, ProcessExec) and e.process.ppid == shell.pid, 1000, 30)
    execs = [e for e in seen if isinstance(e, ProcessExec)]
    assert len(execs) == 1000
    with_argv = [e.process.argv for e in execs if e.process.argv]
    assert all(a[0] == "/bin/true" and a[1].startswith(f"heron-marker-{tag}-") for a in with_argv)
    assert len({a[1] for a in with_argv}) == len(with_argv)
    pids = {x.process.pid for x in execs}
    exits = col.wait_for(lambda e: isinstance(e, ProcessExit) and e.pid in pids, 1000)
    assert len(exits) == 1000
    keys = {e.process.pid: e.process.key for e in execs}
    assert all(x.key == keys[x.pid] for x in exits if isinstance(x, ProcessExit))
    lost = 1000 - len(with_argv)
    with capsys.disabled():
        print(f"\nproc_connector: argv lost for {lost}/1000 quick execs ({lost / 10:.1f}%), "
              f"argv_lost counter {health.get('process.proc_connector.argv_lost')}, "
              f"start estimated {health.get('process.proc_connector.start_estimated')}, "
              f"unknown {health.get('process.proc_connector.start_unknown')}")
    assert health.get("process.proc_connector.argv_lost") >= lost


def socket_fds() -> set[str]:
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own fd, closed by now
        if target.startswith("socket:"):
            out.add(f"{fd}={target}")
    return out


@pytest.mark.privileged
def test_process_between_snapshot_and_run_is_reported(host: Host) -> None:
    col = Collector()
    src = ProcConnectorProcessSource(SourceContext(host, Health(), col, {}))
    src.snapshot()
    # Forks, execs and exits before run() begins: only a subscription made by snapshot() sees it.
    child = subprocess.Popen(["/bin/sh", "-c", "exit 5"])
    assert child.wait(10) == 5
    stop = threading.Event()
    th = threading.Thread(target=src.run, args=(stop,), daemon=True)
    th.start()
    try:
        exits = col.wait_for(lambda e: isinstance(e, ProcessExit) and e.pid == child.pid)
        assert len(exits) == 1 and isinstance(exits[0], ProcessExit) and exits[0].exit_code == 5
        execs = col.find(lambda e: isinstance(e, ProcessExec) and e.process.pid == child.pid)
        assert len(execs) == 1 and isinstance(execs[0], ProcessExec)
        assert execs[0].process.ppid == os.getpid()
    finally:
        stop.set()
        th.join(10)
    assert not th.is_alive()


@pytest.mark.privileged
def test_run_without_snapshot_and_close_without_run(host: Host) -> None:
    before = socket_fds()
    col = Collector()
    src = ProcConnectorProcessSource(SourceContext(host, Health(), col, {}))
    stop = threading.Event()
    th = threading.Thread(target=src.run, args=(stop,), daemon=True)
    th.start()
    time.sleep(0.2)
    child = subprocess.Popen(["/bin/sh", "-c", "exit 4"])
    assert child.wait(10) == 4
    assert col.wait_for(lambda e: isinstance(e, ProcessExit) and e.pid == child.pid)
    stop.set()
    th.join(10)
    assert not th.is_alive() and socket_fds() == before  # run() closed its socket
    # A source whose run() never comes: close() releases what snapshot() opened.
    other = ProcConnectorProcessSource(SourceContext(host, Health(), Collector(), {}))
    other.snapshot()
    assert len(socket_fds() - before) == 1
    other.close()
    other.close()
    assert socket_fds() == before
