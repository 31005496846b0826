from __future__ import annotations

import os
import subprocess

from heron.agent.transforms.process_table import ProcessTable
from heron.schema.events import Process


def proc(key: str, pid: int, ppid: int, exe: str, container: str | None = None) -> Process:
    return Process(key=key, pid=pid, ppid=ppid, exe=exe, container_id=container)


def test_chain_and_container_boundary() -> None:
    t = ProcessTable(ancestors_max=3)
    t.add(proc("k1", 1, 0, "/sbin/init"))
    t.add(proc("k2", 2, 1, "/usr/bin/containerd-shim"))
    c = proc("k3", 3, 2, "/bin/sh", container="c" * 64)
    t.add(c)
    assert c.parent_key == "k2" and c.ancestors == []  # container boundary: host side not shown
    d = proc("k4", 4, 3, "/bin/ls", container="c" * 64)
    t.add(d)
    assert [a.exe for a in d.ancestors] == ["/bin/sh"]
    h = proc("k5", 5, 2, "/bin/bash")
    t.add(h)
    e = proc("k6", 6, 5, "/bin/cat")
    t.add(e)
    assert [a.pid for a in e.ancestors] == [5, 2, 1]


def test_exit_moves_to_recent_and_pid_reuse() -> None:
    t = ProcessTable(recent_max=2)
    t.add(proc("a", 10, 1, "/a"))
    assert t.remove(10, "a") is not None and t.lookup_pid(10) is None
    assert t.lookup_key("a") is not None  # a late child still finds its parent
    t.add(proc("b", 11, 1, "/b"))
    t.add(proc("b2", 11, 1, "/b2"))  # pid reused: old identity retired
    assert t.lookup_pid(11).key == "b2" and t.lookup_key("b") is not None
    for i in range(5):
        t.add(proc(f"x{i}", 100 + i, 1, "/x"))
        t.remove(100 + i)
    assert len(t.recent) == 2


def test_sweep_drops_vanished_pids() -> None:
    t = ProcessTable()
    child = subprocess.Popen(["/bin/true"])
    child.wait()
    t.add(proc("me", os.getpid(), 1, "/py"))
    t.add(proc("gone", child.pid, os.getpid(), "/bin/true"))
    assert t.sweep() == 1
    assert t.lookup_pid(child.pid) is None and t.lookup_pid(os.getpid()) is not None
