"""The process behind network and file events: from the table, held until its exec arrives, or
read once from /proc as a last resort."""

from __future__ import annotations

import os
import subprocess

from heron.agent.host import detect_host
from heron.agent.transforms.enrich import Enricher
from heron.agent.transforms.process_table import ProcessTable
from heron.schema.events import Ancestor, FileChange, NetFlow, Process, ProcessExec, ProcessExit, ProcessRef

MS = 1_000_000


def enricher() -> Enricher:
    return Enricher(ProcessTable(), boot_id=detect_host().boot_id, hold_s=0.3)


def file_change(pid: int, key: str = "") -> FileChange:
    return FileChange(ts=1, path="/etc/x", action="modify", process=ProcessRef(pid=pid, key=key))


def test_ref_filled_from_table_with_package_manager_from_ancestors() -> None:
    e = enricher()
    e([ProcessExec(ts=1, process=Process(key="b-10-1", pid=10, exe="/usr/bin/dpkg", uid=0))], 0)
    e([ProcessExec(ts=1, process=Process(key="b-11-2", pid=11, ppid=10, exe="/usr/bin/cp", uid=0, auid=1000,
                                         ancestors=[Ancestor(10, "b-10-1", "/usr/bin/dpkg")]))], 0)
    ev = file_change(11)
    assert e([ev], 0) == [ev]
    assert ev.process is not None
    assert (ev.process.key, ev.process.exe, ev.process.user, ev.process.auid) == ("b-11-2", "/usr/bin/cp", "root", 1000)
    assert ev.process.parent_exe == "/usr/bin/dpkg"
    assert ev.package_manager == "dpkg"


def test_event_before_its_exec_is_held_then_resolved() -> None:
    e = enricher()
    ev = NetFlow(ts=1, process=ProcessRef(pid=4242), direction="out", protocol="tcp", local_addr="127.0.0.1",
                 remote_addr="127.0.0.1", remote_port=80)
    assert e([ev], 0) == []
    assert e.release(100 * MS) == []  # still waiting for the exec
    e([ProcessExec(ts=1, process=Process(key="b-4242-9", pid=4242, exe="/usr/bin/curl", uid=0))], 150 * MS)
    assert e.release(150 * MS) == [ev]
    assert ev.process is not None and ev.process.exe == "/usr/bin/curl"
    assert e.unresolved == 0


def test_exited_writer_still_found_by_pid() -> None:
    e = enricher()
    e([ProcessExec(ts=1, process=Process(key="b-77-1", pid=77, exe="/bin/sh", uid=0))], 0)
    e([ProcessExit(ts=2, key="b-77-1", pid=77)], 0)
    ev = file_change(77)
    assert e([ev], 0) == [ev]
    assert ev.process is not None and ev.process.exe == "/bin/sh"


def test_after_the_hold_proc_is_read_once() -> None:
    e = enricher()
    child = subprocess.Popen(["/bin/sleep", "5"])
    try:
        ev = file_change(child.pid)
        assert e([ev], 0) == []
        out = e.release(400 * MS)
        assert out == [ev]
        assert ev.process is not None and ev.process.exe == "/usr/bin/sleep"
        assert ev.process.key.endswith(f"-{child.pid}-" + ev.process.key.rsplit("-", 1)[1])
        assert e.from_proc == 1 and e.unresolved == 0
    finally:
        child.kill()
        child.wait()


def test_gone_process_goes_out_unresolved_with_what_was_known() -> None:
    e = enricher()
    child = subprocess.Popen(["/bin/true"])
    child.wait()
    ev = FileChange(ts=1, path="/etc/x", action="modify", process=ProcessRef(pid=child.pid, uid=os.getuid()))
    e([ev], 0)
    assert e.release(0, everything=True) == [ev]
    assert e.unresolved == 1
    assert ev.process is not None and ev.process.user == "root" and ev.process.exe == ""


def test_key_mismatch_never_borrows_another_process() -> None:
    e = enricher()
    e([ProcessExec(ts=1, process=Process(key="b-5-1", pid=5, exe="/bin/a", uid=0))], 0)
    ev = file_change(5, key="b-5-999")  # the same pid, another process (reused pid)
    e([ev], 0)
    out = e.release(10**9)
    assert out == [ev] and ev.process is not None and ev.process.exe == ""
