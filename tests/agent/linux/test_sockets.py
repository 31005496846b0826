"""Socket owners from /proc/PID/fd (real processes, and a fake /proc for the hostile cases), and
network namespace discovery."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from heron.agent.linux.sock_diag import SockDiag
from heron.agent.linux.sockets import NetnsWatch, SocketOwners, netns_of


def _ino(s: socket.socket) -> int:
    return os.fstat(s.fileno()).st_ino


def _live() -> set[int]:
    d = SockDiag()
    try:
        return {s.inode for s in d.dump_all(info=False).sockets if s.inode}
    finally:
        d.close()


def test_finds_own_and_child_sockets_then_answers_from_cache() -> None:
    owners = SocketOwners()
    owners.refresh()
    mine = socket.socket()
    mine.bind(("127.0.0.1", 0))
    mine.listen()
    code = ("import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); print(1, flush=True); "
            "sys.stdin.read()")
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"1"
        child_ino = int(os.readlink(f"/proc/{child.pid}/fd/3")[8:-1])
        owners.refresh()
        live = _live()
        found = owners.resolve({_ino(mine), child_ino}, live)
        assert found == {_ino(mine): os.getpid(), child_ino: child.pid}
        reads = owners.stats.readlinks
        assert owners.resolve({_ino(mine), child_ino}, live) == found
        assert owners.stats.readlinks == reads  # cached: no /proc read at all
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(5)
        mine.close()


def _listening() -> socket.socket:
    s = socket.socket()  # bound and listening: only sockets in the kernel's tables are dumped
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_incremental_scan_finds_new_and_reused_descriptors_cheaply() -> None:
    owners = SocketOwners()
    owners.refresh()
    first = _listening()
    owners.resolve({1}, _live())  # no such socket: every pid is scanned once
    assert owners.resolve({_ino(first)}, _live()) == {_ino(first): os.getpid()}
    fd = first.fileno()
    first.close()
    second = _listening()  # takes the same descriptor number
    assert second.fileno() == fd
    with second:
        reads = owners.stats.readlinks
        assert owners.resolve({_ino(second)}, _live()) == {_ino(second): os.getpid()}
        # Only changed descriptors are read again (ours, and those of processes that changed
        # meanwhile: other tests may run), far from every descriptor of every pid.
        everything = sum(len(st.fds) for st in owners.pids.values())
        assert owners.stats.readlinks - reads < everything / 2
        extra = _listening()
        with extra:
            reads = owners.stats.readlinks
            assert owners.resolve({_ino(extra)}, _live()) == {_ino(extra): os.getpid()}
            assert owners.stats.readlinks - reads < everything / 2


def test_socket_nobody_holds_is_given_up_after_a_full_pass() -> None:
    owners = SocketOwners(readlink_budget=50)  # several calls per pass
    owners.refresh()
    a, b = socket.socketpair()
    carrier = socket.socket()
    # The socket's only reference is a message in flight: no /proc/PID/fd points at it.
    socket.send_fds(a, [b"x"], [carrier.fileno()])
    ghost = _ino(carrier)
    carrier.close()
    try:
        gen = owners.generation()
        calls = 0
        while owners.rounds < gen:
            assert owners.resolve({ghost}, {ghost}) == {}
            calls += 1
            assert calls < 10_000
        assert calls > 1 and owners.owner(ghost) is None
    finally:
        a.close()
        b.close()


# -- a fake /proc: pids vanishing, huge tables, junk ------------------------------------------

def _fake_pid(root: Path, pid: int, fds: dict[int, str]) -> None:
    d = root / str(pid) / "fd"
    d.mkdir(parents=True)
    for n, target in fds.items():
        (d / str(n)).symlink_to(target)


@pytest.fixture
def fake_proc(tmp_path: Path) -> Iterator[Path]:
    _fake_pid(tmp_path, 10, {0: "/dev/null", 3: "socket:[1001]", 4: "pipe:[5]"})
    _fake_pid(tmp_path, 20, {n: f"socket:[{2000 + n}]" for n in range(50)})
    (tmp_path / "self").mkdir()
    (tmp_path / "30").mkdir()  # a pid without fd directory (exited between listing and scan)
    (tmp_path / "40" / "fd").mkdir(parents=True)
    (tmp_path / "40" / "fd" / "junk").symlink_to("socket:[x]")
    (tmp_path / "40" / "fd" / "7").symlink_to("socket:[notanumber]")
    yield tmp_path


def test_fake_proc_scan_survives_vanishing_pids_and_junk(fake_proc: Path) -> None:
    owners = SocketOwners(str(fake_proc))
    new, gone = owners.refresh()
    assert sorted(new) == [10, 20, 30, 40] and gone == []
    found = owners.resolve({1001, 2049, 99}, set())
    assert found == {1001: 10, 2049: 20}
    assert owners.stats.pids_gone == 1 and 30 not in owners.pids
    # pid 20 exits: its sockets are forgotten with it.
    for p in (fake_proc / "20" / "fd").iterdir():
        p.unlink()
    (fake_proc / "20" / "fd").rmdir()
    (fake_proc / "20").rmdir()
    _new, gone = owners.refresh()
    assert gone == [20] and owners.owner(2049) is None and owners.owner(1001) == 10


def test_fake_proc_huge_table_is_cut_and_counted(fake_proc: Path) -> None:
    owners = SocketOwners(str(fake_proc), max_fds_per_pid=10)
    owners.refresh()
    found = owners.resolve(set(range(2000, 2050)), set())
    assert 0 < len(found) <= 10
    assert owners.stats.truncated >= 1


def test_pids_exiting_during_scans_do_not_raise() -> None:
    owners = SocketOwners()
    children = [subprocess.Popen([sys.executable, "-c", "import socket,time; s=socket.socket(); time.sleep(0.05)"])
                for _ in range(20)]
    for _ in range(20):
        owners.refresh()
        owners.resolve({123456789}, set(), budget=500)
    for c in children:
        c.wait(10)
    owners.refresh()
    assert not any(c.pid in owners.pids for c in children)


# -- namespaces -----------------------------------------------------------------------------

def test_netns_watch_sees_own_namespace() -> None:
    owners = SocketOwners()
    new, gone = owners.refresh()
    refs = NetnsWatch().update(list(owners.pids), new, gone)
    mine = netns_of("/proc", os.getpid())
    assert mine and mine in refs
    assert os.stat(refs[mine].path).st_ino == mine


@pytest.mark.privileged
def test_netns_watch_finds_a_namespace_and_forgets_it() -> None:
    name = f"heron-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    child = None
    try:
        ns = os.stat(f"/run/netns/{name}").st_ino
        owners = SocketOwners()
        watch = NetnsWatch(refresh_s=3600)
        new, gone = owners.refresh()
        refs = watch.update(list(owners.pids), new, gone)
        assert refs[ns].pid == 0 and refs[ns].path == f"/run/netns/{name}"  # named, nobody in it
        child = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "30"])
        for _ in range(100):
            if netns_of("/proc", child.pid) == ns:
                break
            subprocess.run(["sleep", "0.02"], check=True)
        new, gone = owners.refresh()
        refs = watch.update(list(owners.pids), new, gone)
        assert refs[ns].pid == child.pid
        child.kill()
        child.wait(5)
        subprocess.run(["ip", "netns", "delete", name], check=True)
        watch._next_full = 0  # the next update re-reads /run/netns
        new, gone = owners.refresh()
        assert ns not in watch.update(list(owners.pids), new, gone)
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait(5)
        subprocess.run(["ip", "netns", "delete", name], check=False, stderr=subprocess.DEVNULL)
