"""Audit process source: the assembler against hostile records, and the real kernel.

Every privileged test checks afterwards, by reading AUDIT_GET and AUDIT_LIST_RULES itself, that
our rules are gone and the audit daemon pid and enabled flag are what they were.
"""

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
from heron.agent.linux import audit
from heron.agent.linux.procfs import ProcFS
from heron.agent.sources.base import SourceContext
from heron.agent.sources.process.audit import AuditProcessSource, ExecAssembler
from heron.schema.events import ProcessExec, ProcessExit, process_key

HDR = "audit(1700000000.250:{serial}): "
SYSCALL = ('arch=c000003e syscall=59 success=yes exit=0 items=2 ppid=10 pid=11 auid=4294967295 uid=0 '
           'gid=0 euid=0 suid=0 fsuid=0 egid=0 sgid=0 fsgid=0 tty=(none) ses=4294967295 comm="true" '
           'exe="/usr/bin/true" key="heron"')


def feed(asm: ExecAssembler, records: list[tuple[int, str]], serial: int = 7) -> list[object]:
    out = []
    for t, body in records:
        got = asm.add(t, (HDR.format(serial=serial) + body).encode(), 0.0)
        if got is not None:
            out.append(got)
    return out


def one_exec(asm: ExecAssembler, execve: str, extra: list[tuple[int, str]] | None = None) -> object:
    got = feed(asm, [(1300, SYSCALL), (1309, execve), *(extra or []), (1320, "")])
    assert len(got) == 1
    return got[0]


def test_assembles_syscall_execve_cwd() -> None:
    asm = ExecAssembler()
    ts, p = one_exec(asm, 'argc=4 a0="/bin/true" a1=612062 a2="" a3=FFFE',
                     [(1307, 'cwd="/root"'), (1327, "proctitle=2F62696E2F74727565")])  # type: ignore[misc]
    assert ts == 1700000000_250_000_000
    assert (p.pid, p.ppid, p.uid, p.euid, p.auid, p.comm, p.exe, p.cwd) == (
        11, 10, 0, 0, None, "true", "/usr/bin/true", "/root")
    assert p.argv == ["/bin/true", "a b", "", "\\xff\\xfe"] and not p.argv_truncated
    assert asm.parse_errors == 0 and asm.incomplete == 0


def test_long_argument_in_chunks_across_records() -> None:
    arg = b"x\xff" * 9000
    hexed = arg.hex().upper()
    chunks = [hexed[i:i + 7000] for i in range(0, len(hexed), 7000)]
    records = [(1300, SYSCALL), (1309, f'argc=3 a0="/bin/true" a1_len={len(hexed)} a1[0]={chunks[0]}')]
    records += [(1309, f" a1[{i}]={c}") for i, c in enumerate(chunks[1:], 1)]
    records += [(1309, 'a2="end"'), (1320, "")]
    [(_, p)] = feed(ExecAssembler(), records)  # type: ignore[misc]
    assert p.argv == ["/bin/true", arg.decode("utf-8", "backslashreplace"), "end"]


@pytest.mark.parametrize("execve,argv", [
    ('argc=999999999 a0="/bin/true" a1="x"', ["/bin/true", "x"]),    # huge argc: stops at the first gap
    ('argc=2 a0="/bin/true" a1=4G4G', ["/bin/true"]),                # bad hex
    ('argc=3 a0="/bin/true" a1_len=10 a1[0]=4141', ["/bin/true"]),   # chunks missing
    ("argc=-5 a0=41", []),
    ("argc=zz", []),
])
def test_hostile_execve_is_truncated_and_counted(execve: str, argv: list[str]) -> None:
    asm = ExecAssembler()
    _, p = one_exec(asm, execve)  # type: ignore[misc]
    assert p.argv == argv and p.argv_truncated
    assert asm.parse_errors >= 1


def test_argv_bound() -> None:
    asm = ExecAssembler(argv_max_bytes=20)
    _, p = one_exec(asm, 'argc=3 a0="/bin/true" a1="0123456789" a2="more"')  # type: ignore[misc]
    assert p.argv == ["/bin/true"] and p.argv_truncated


def test_missing_eoe_is_flushed_after_timeout_and_counted() -> None:
    asm = ExecAssembler(timeout_s=1.0)
    assert feed(asm, [(1300, SYSCALL), (1309, 'argc=1 a0="/bin/true"')]) == []
    assert asm.expire(0.5) == []
    [(_, p)] = asm.expire(1.5)  # type: ignore[misc]
    assert p.argv == ["/bin/true"] and asm.incomplete == 1 and asm.pending == {}


def test_truncated_and_foreign_records() -> None:
    asm = ExecAssembler()
    assert asm.add(1300, b"audit(1700000000.2", 0.0) is None            # cut header
    assert asm.add(1309, b"\xff\xfe garbage", 0.0) is None
    assert feed(asm, [(1309, 'argc=1 a0="x"'), (1320, "")], serial=8) == []  # no SYSCALL
    assert feed(asm, [(1300, SYSCALL.replace('"heron"', '"other"')), (1320, "")], serial=9) == []
    assert feed(asm, [(1300, SYSCALL.replace("success=yes", "success=no")), (1320, "")], serial=10) == []
    assert feed(asm, [(1300, SYSCALL.replace('comm="true"', "comm=XYZ")), (1320, "")], serial=11) == []
    assert asm.parse_errors == 3 and asm.incomplete == 1 and asm.pending == {}


def test_proctitle_fallback_without_execve_and_pending_bound() -> None:
    asm = ExecAssembler(max_pending=2)
    got = feed(asm, [(1300, SYSCALL), (1327, "proctitle=2F62696E2F7472756500782079"), (1320, "")])
    assert got[0][1].argv == ["/bin/true", "x y"]  # type: ignore[index]
    for serial in range(100, 110):
        feed(asm, [(1300, SYSCALL)], serial=serial)
    assert len(asm.pending) == 2 and asm.incomplete == 8


# ---- real kernel ----------------------------------------------------------------------------


def assert_audit_restored(before: audit.AuditStatus) -> None:
    ctl = audit.AuditControl()
    try:
        now = ctl.status()
        assert (now.pid, now.enabled, now.backlog_limit) == (before.pid, before.enabled, before.backlog_limit)
        assert [r for r in ctl.rules() if r.key == "heron"] == []
    finally:
        ctl.close()


@pytest.fixture
def audit_before() -> Iterator[audit.AuditStatus]:
    ctl = audit.AuditControl()
    try:
        before = ctl.status()
    finally:
        ctl.close()
    yield before
    assert_audit_restored(before)


@pytest.fixture
def source(host: Host, audit_before: audit.AuditStatus) -> Iterator[tuple[Collector, Health]]:
    assert AuditProcessSource.probe(host).ok
    col, health = Collector(), Health()
    src = AuditProcessSource(SourceContext(host, health, col, {}))
    assert any(p.pid == os.getpid() for p in src.snapshot())
    stop = threading.Event()
    th = threading.Thread(target=src.run, args=(stop,), daemon=True)
    th.start()
    time.sleep(0.3)
    yield col, health
    stop.set()
    th.join(10)
    assert not th.is_alive()
    assert health.get("process.audit.lost") == 0


def execs_with(col: Collector, marker: str, count: int = 1, timeout: float = 10.0) -> list[ProcessExec]:
    found = col.wait_for(lambda e: isinstance(e, ProcessExec) and marker in " ".join(e.process.argv), count,
                         timeout)
    return [e for e in found if isinstance(e, ProcessExec)]


def as_nobody_with_loginuid() -> None:
    with open("/proc/self/loginuid", "w") as f:
        f.write("4242")
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)


@pytest.mark.privileged
def test_exec_identity_argv_auid_and_exit_code(source: tuple[Collector, Health], host: Host) -> None:
    col, health = source
    marker = f"heron-audit-{uuid.uuid4().hex[:8]}"
    argv = ["/bin/sh", "-c", f"exit 7 # {marker}", "arg with space", "", "tab\there", "\\xff"]
    child = subprocess.Popen([*argv[:6], b"\xff\xfe"], preexec_fn=as_nobody_with_loginuid)
    assert child.wait(10) == 7
    [ev] = execs_with(col, marker)
    p = ev.process
    assert p.argv == [*argv[:6], "\\xff\\xfe"] and not p.argv_truncated
    assert (p.pid, p.ppid) == (child.pid, os.getpid())
    assert (p.uid, p.euid, p.gid, p.egid, p.auid) == (65534, 65534, 65534, 65534, 4242)
    assert p.exe == "/usr/bin/dash" or p.exe.endswith("sh")
    assert p.cwd == os.getcwd()
    me = ProcFS().stat(os.getpid())
    assert p.parent_key == process_key(host.boot_id, os.getpid(), me.start_ticks)
    exits = col.wait_for(lambda e: isinstance(e, ProcessExit) and e.pid == child.pid)
    assert len(exits) == 1 and isinstance(exits[0], ProcessExit)
    assert exits[0].exit_code == 7 and exits[0].signal is None
    assert exits[0].key == p.key, "exec and exit of one process must share its key"
    if p.start_ticks == 0:
        assert health.get("process.audit.start_unknown") > 0
    assert health.get("process.audit.parse_errors") == 0


@pytest.mark.privileged
def test_signal_and_64k_argument(source: tuple[Collector, Health]) -> None:
    col, _ = source
    big = "A" * 65536 + "\u00e9"
    # sh execs sleep in the same process: two execs, one pid, one key.
    sleeper = subprocess.Popen(["/bin/sh", "-c", "exec /bin/sleep 30", big])
    [ev] = execs_with(col, "A" * 100)
    assert ev.process.argv == ["/bin/sh", "-c", "exec /bin/sleep 30", big]
    [again] = col.wait_for(lambda e: isinstance(e, ProcessExec) and e.process.pid == sleeper.pid
                           and e.process.exe == "/usr/bin/sleep")
    assert isinstance(again, ProcessExec) and again.process.key == ev.process.key
    assert ev.process.start_ticks == ProcFS().stat(sleeper.pid).start_ticks
    assert ev.process.cgroup and "::" in ev.process.cgroup
    sleeper.send_signal(signal.SIGKILL)
    sleeper.wait()
    exits = col.wait_for(lambda e: isinstance(e, ProcessExit) and e.pid == sleeper.pid)
    assert isinstance(exits[0], ProcessExit)
    assert exits[0].signal == signal.SIGKILL and exits[0].exit_code is None
    assert exits[0].key == ev.process.key and exits[0].exe == "/usr/bin/sleep"


@pytest.mark.privileged
def test_thousand_quick_execs_all_seen_with_exact_argv(source: tuple[Collector, Health]) -> None:
    col, health = source
    tag = uuid.uuid4().hex[:6]
    loop = f'i=0; while [ $i -lt 1000 ]; do /bin/true heron-marker-{tag}-$i; i=$((i+1)); done'
    subprocess.run(["/bin/sh", "-c", loop], check=True)
    prefix = f"heron-marker-{tag}-"
    seen = col.wait_for(lambda e: isinstance(e, ProcessExec) and e.process.argv[:1] == ["/bin/true"]
                        and e.process.argv[-1].startswith(prefix), 1000, 30)
    argvs = sorted(tuple(e.process.argv) for e in seen if isinstance(e, ProcessExec))
    assert argvs == sorted(("/bin/true", f"heron-marker-{tag}-{i}") for i in range(1000))
    assert health.get("process.audit.incomplete") == 0


@pytest.mark.privileged
def test_cleanup_runs_when_the_source_thread_dies(host: Host, audit_before: audit.AuditStatus) -> None:
    src = AuditProcessSource(SourceContext(host, Health(), Collector(fail=True), {}))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            src.run(threading.Event())
        except BaseException as e:
            errors.append(e)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    time.sleep(0.3)
    subprocess.run(["/bin/true", "heron-dies"], check=True)
    th.join(10)
    assert not th.is_alive() and isinstance(errors[0], RuntimeError)
    # audit_before's teardown verifies that rules, pid and enabled flag were restored.


@pytest.mark.privileged
def test_refused_while_another_daemon_owns_audit(host: Host, audit_before: audit.AuditStatus) -> None:
    owner = audit.AuditSession([])
    try:
        probe = AuditProcessSource.probe(host)
        assert not probe.ok and f"owned by pid {os.getpid()}" in probe.reason
        src = AuditProcessSource(SourceContext(host, Health(), Collector(), {}))
        with pytest.raises(audit.AuditOwned):
            src.run(threading.Event())
    finally:
        owner.close()


@pytest.mark.privileged
def test_exec_between_snapshot_and_run_is_reported(host: Host, audit_before: audit.AuditStatus) -> None:
    col = Collector()
    src = AuditProcessSource(SourceContext(host, Health(), col, {}))
    src.snapshot()
    marker = f"heron-gap-{uuid.uuid4().hex[:8]}"
    # Execs and exits before run() begins: only a session opened by snapshot() sees it.
    child = subprocess.Popen(["/bin/sh", "-c", f"exit 6 # {marker}"])
    assert child.wait(10) == 6
    stop = threading.Event()
    th = threading.Thread(target=src.run, args=(stop,), daemon=True)
    th.start()
    try:
        [ev] = execs_with(col, marker)
        assert ev.process.pid == child.pid and ev.process.argv == ["/bin/sh", "-c", f"exit 6 # {marker}"]
        exits = col.wait_for(lambda e: isinstance(e, ProcessExit) and e.pid == child.pid)
        assert len(exits) == 1 and isinstance(exits[0], ProcessExit) and exits[0].exit_code == 6
        assert exits[0].key == ev.process.key
    finally:
        stop.set()
        th.join(10)
    assert not th.is_alive()
    # audit_before's teardown verifies that run() restored the audit state.


@pytest.mark.privileged
def test_close_without_run_restores_audit(host: Host, audit_before: audit.AuditStatus) -> None:
    src = AuditProcessSource(SourceContext(host, Health(), Collector(), {}))
    src.snapshot()
    ctl = audit.AuditControl()
    try:
        assert ctl.status().pid == os.getpid()  # the snapshot made us the daemon already
    finally:
        ctl.close()
    src.close()
    src.close()
    # audit_before's teardown verifies that rules, pid and enabled flag were restored.
