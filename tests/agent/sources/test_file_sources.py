"""One set of assertions, run against every file collector in LADDERS["file"] this machine supports.

A known child process (uid 65534 where the directory is writable by it; root for chown) changes
files in a watched temporary directory; each operation must come out as one record with the right
path(s) and action, the new content's sha256, and the writer: its pid for fanotify, "unknown"
with no process for inotify. Operations are spaced beyond the coalescing window so each is its
own record; the coalescing, rate limit, overflow and race tests set up the bursts on purpose.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from collect import Collector
from heron.agent.config import AgentConfig, FileConfig, FileWatch
from heron.agent.health import Health
from heron.agent.host import Host
from heron.agent.runtime import Agent
from heron.agent.sources.base import Source, SourceContext
from heron.agent.sources.file.coalesce import Coalescer, Record, net_action
from heron.agent.sources.registry import LADDERS
from heron.schema.events import FileChange
from listsink import ListSink

MECHANISMS = [s.mechanism for s in LADDERS["file"]]
NOBODY = 65534
WINDOW_S = 0.1
GAP_S = 0.3  # between operations: beyond the window, so each is its own record
# The children run as nobody: the system interpreter (the venv's lives below /root, mode 0700).
CHILD_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def source_class(mech: str) -> type[Source]:
    return next(s for s in LADDERS["file"] if s.mechanism == mech)


@dataclass
class Running:
    mech: str
    src: Source
    col: Collector
    health: Health
    stop: threading.Event
    thread: threading.Thread | None = None

    def changes(self, pred: Callable[[FileChange], bool] = lambda e: True) -> list[FileChange]:
        return [e for e in self.col.find(lambda e: isinstance(e, FileChange)) if pred(e)]  # type: ignore[misc]

    def wait(self, pred: Callable[[FileChange], bool], count: int = 1, timeout: float = 5.0) -> list[FileChange]:
        got = self.col.wait_for(lambda e: isinstance(e, FileChange) and pred(e), count, timeout)
        return got  # type: ignore[return-value]

    def counter(self, name: str) -> int:
        return self.health.get(f"file.{self.mech}.{name}")

    def wait_counter(self, name: str, at_least: int, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while self.counter(name) < at_least and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.counter(name)

    def begin(self) -> None:
        self.thread = threading.Thread(target=self.src.run, args=(self.stop,), daemon=True)
        self.thread.start()
        self.wait_counter("scans", 1)  # watches placed, start scan done: a steady state

    def end(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(15)
            assert not self.thread.is_alive(), "source must return promptly after stop"
        else:
            self.src.close()


def _workdir(parent: str | None) -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="heron-fim-", dir=parent))
    watched = base / "watched"
    watched.mkdir()
    os.chown(watched, NOBODY, NOBODY)
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def workdir() -> Iterator[Path]:
    yield from _workdir(None)


@pytest.fixture
def fast_workdir() -> Iterator[Path]:
    """On tmpfs when there is one: creating 20,000 files on this VM's ext4 takes ~10 s, on tmpfs 0.2 s."""
    shm = "/dev/shm"
    yield from _workdir(shm if os.access(shm, os.W_OK) else None)


def make_source(mech: str, host: Host, base: Path, watches: list[FileWatch] | None = None,
                options: dict[str, object] | None = None, **cfg: object) -> Running:
    cls = source_class(mech)
    probe = cls.probe(host)
    if not probe.ok:
        pytest.skip(f"file={mech} cannot run here: {probe.reason}")
    config = FileConfig(default_policy=False, watches=watches or [FileWatch(path=str(base / "watched"))],
                        coalesce_s=WINDOW_S, scan_interval_s=0)
    config = msgspec.structs.replace(config, **cfg)
    col, health = Collector(), Health()
    opts: dict[str, object] = {"config": config, "state_dir": str(base / "state"), **(options or {})}
    src = cls(SourceContext(host, health, col, opts))
    src.snapshot()
    return Running(mech, src, col, health, threading.Event())


@pytest.fixture(params=MECHANISMS)
def mech(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def child(script: str, uid: int = NOBODY) -> subprocess.Popen[bytes]:
    """A Python child running ``script`` as ``uid`` (its pid is the writer to expect)."""
    def drop() -> None:
        if uid != 0:
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
    return subprocess.Popen([CHILD_PYTHON, "-c", textwrap.dedent(script)], preexec_fn=drop)


def run_child(script: str, uid: int = NOBODY) -> int:
    p = child(script, uid)
    assert p.wait(30) == 0
    return p.pid


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def writer_ok(mech: str, ev: FileChange, pid: int) -> None:
    if mech == "fanotify":
        assert ev.attribution == "process" and ev.process is not None and ev.process.pid == pid, ev
    else:
        assert ev.attribution == "unknown" and ev.process is None, ev


@pytest.mark.privileged
def test_each_operation_is_one_record_with_its_writer(mech: str, host: Host, workdir: Path) -> None:
    fds = len(os.listdir("/proc/self/fd"))
    r = make_source(mech, host, workdir)
    w = workdir / "watched"
    f, g = w / "f.conf", w / "g.conf"
    try:
        r.begin()
        proc = child(f"""
            import os, time
            gap = {GAP_S}
            with open({str(f)!r}, "wb") as fh:
                fh.write(b"one\\n")
            time.sleep(gap)
            with open({str(f)!r}, "ab") as fh:
                fh.write(b"two\\n")
            time.sleep(gap)
            os.chmod({str(f)!r}, 0o600)
            time.sleep(gap)
            os.rename({str(f)!r}, {str(g)!r})
            time.sleep(gap)
        """)
        assert proc.wait(30) == 0
        chown = run_child(f"import os; os.chown({str(g)!r}, 0, 0)", uid=0)
        time.sleep(GAP_S)
        remover = run_child(f"import os; os.unlink({str(g)!r})")
        r.wait(lambda e: e.action == "delete" and e.path == str(g))
        time.sleep(WINDOW_S * 3)
        evs = r.changes(lambda e: e.source == f"file.{mech}")
        got = [(e.action, e.path) for e in evs]
        assert got == [("create", str(f)), ("modify", str(f)), ("attrib", str(f)), ("rename", str(g)),
                       ("attrib", str(g)), ("delete", str(g))], got
        create, modify, chmod, rename, own, delete = evs
        assert create.sha256 == sha(b"one\n") and create.new is not None and create.new.uid == NOBODY
        assert create.new.size == 4 and create.rule == str(w) and not create.is_dir
        assert modify.sha256 == sha(b"one\ntwo\n") and modify.old is not None and modify.old.size == 4
        assert chmod.new is not None and chmod.new.mode & 0o777 == 0o600 and chmod.sha256 == modify.sha256
        assert rename.old_path == str(f) and rename.new is not None and rename.old is not None
        assert rename.old.inode == rename.new.inode
        assert own.new is not None and own.new.uid == 0 and own.old is not None and own.old.uid == NOBODY
        assert delete.new is None and delete.old is not None
        for ev in (create, modify, chmod, rename):
            writer_ok(mech, ev, proc.pid)
        writer_ok(mech, own, chown)
        writer_ok(mech, delete, remover)
    finally:
        r.end()
    assert len(os.listdir("/proc/self/fd")) == fds, "the source left descriptors open"


@pytest.mark.privileged
def test_editor_save_is_one_modify_of_the_target(mech: str, host: Host, workdir: Path) -> None:
    target = workdir / "watched" / "app.conf"
    target.write_bytes(b"old\n")
    os.chown(target, NOBODY, NOBODY)
    r = make_source(mech, host, workdir, coalesce_s=0.3)
    try:
        r.begin()  # the start scan baselines the target: its old metadata is known
        tmp = target.with_name(".app.conf.tmp")
        pid = run_child(f"""
            import os
            with open({str(tmp)!r}, "wb") as fh:
                fh.write(b"new content\\n")
            os.rename({str(tmp)!r}, {str(target)!r})
        """)
        evs = r.wait(lambda e: e.path == str(target))
        time.sleep(0.5)
        evs = r.changes()
        assert len(evs) == 1, evs
        ev = evs[0]
        assert ev.action == "modify" and ev.actions == ["create", "modify", "rename"], ev
        assert ev.old_path == str(tmp) and ev.sha256 == sha(b"new content\n")
        assert ev.old is not None and ev.old.size == 4 and ev.new is not None and ev.new.size == 12
        assert ev.count >= 2  # raw kernel events: the kernel may have merged create+modify into one
        writer_ok(mech, ev, pid)
    finally:
        r.end()


@pytest.mark.privileged
def test_rate_limit_counts_and_folds_dropped(mech: str, host: Host, workdir: Path) -> None:
    path = workdir / "watched" / "hot"
    r = make_source(mech, host, workdir, coalesce_s=0.02, rate_per_path_per_min=3)
    try:
        r.begin()
        run_child(f"""
            import time
            for i in range(8):
                with open({str(path)!r}, "ab") as fh:
                    fh.write(b"x")
                time.sleep(0.08)
        """)
        time.sleep(0.3)
        evs = r.changes(lambda e: e.path == str(path))
        assert len(evs) == 3, evs
        assert r.counter("rate_limited") >= 4
    finally:
        r.end()


@pytest.mark.privileged
def test_new_directory_and_a_file_in_it_at_once(mech: str, host: Host, workdir: Path) -> None:
    sub = workdir / "watched" / "sub"
    r = make_source(mech, host, workdir)
    try:
        r.begin()
        pid = run_child(f"""
            import os, time
            os.mkdir({str(sub)!r})
            with open({str(sub / "first")!r}, "wb") as fh:
                fh.write(b"1")
            os.mkdir({str(sub / "deeper")!r})
            with open({str(sub / "deeper" / "x")!r}, "wb") as fh:
                fh.write(b"2")
            time.sleep(0.5)
            with open({str(sub / "deeper" / "later")!r}, "wb") as fh:
                fh.write(b"3")
        """)
        for name in ("sub", "sub/first", "sub/deeper", "sub/deeper/x", "sub/deeper/later"):
            p = str(workdir / "watched" / name)
            got = r.wait(lambda e, p=p: e.path == p)  # type: ignore[misc]
            assert len(got) == 1 and got[0].action == "create", (name, got)
            if got[0].attribution == "process":  # a race-closing listing has no writer: never a guess
                assert got[0].process is not None and got[0].process.pid == pid
        later = r.changes(lambda e: e.path.endswith("/later"))[0]
        writer_ok(mech, later, pid)  # watched by then: the kernel named the writer
        assert r.changes(lambda e: e.path == str(sub))[0].is_dir
    finally:
        r.end()


@pytest.mark.privileged
def test_non_recursive_watch_ignores_deeper_files(mech: str, host: Host, workdir: Path) -> None:
    w = workdir / "watched"
    (w / "deep").mkdir()
    os.chown(w / "deep", NOBODY, NOBODY)
    r = make_source(mech, host, workdir, watches=[FileWatch(path=str(w), recursive=False)])
    try:
        r.begin()
        run_child(f"""
            open({str(w / "deep" / "hidden")!r}, "w").write("x")
            open({str(w / "top")!r}, "w").write("y")
        """)
        r.wait(lambda e: e.path == str(w / "top"))
        time.sleep(0.3)
        assert not r.changes(lambda e: "hidden" in e.path)
    finally:
        r.end()


@pytest.mark.privileged
def test_hostile_names_and_vanishing_files(mech: str, host: Host, workdir: Path) -> None:
    w = workdir / "watched"
    loop = w / "loop"
    loop.mkdir()
    os.symlink("..", loop / "up")  # a symlink loop: never followed
    r = make_source(mech, host, workdir)
    wb = os.fsencode(w)
    names = [b"new\nline", b"bad-\xff\xfe-utf8", b"L" * 255]
    try:
        r.begin()
        script = f"""
            import os
            d = {wb!r}
            for n in {names!r}:
                with open(d + b"/" + n, "wb") as fh:
                    fh.write(b"x")
            for i in range(50):  # gone before anyone can stat or hash them
                p = d + b"/v%d" % i
                open(p, "wb").close()
                os.unlink(p)
        """
        pid = run_child(script, uid=0)
        for raw in names:
            text = os.fsdecode(wb + b"/" + raw)
            want = (wb + b"/" + raw).decode("utf-8", "backslashreplace")
            got = r.wait(lambda e, want=want: e.path == want)  # type: ignore[misc]
            assert len(got) == 1, (raw, text)
            assert got[0].path_escaped == (b"\xff" in raw) and got[0].sha256 == sha(b"x")
            writer_ok(mech, got[0], pid)
        time.sleep(0.5)
        vanished = r.changes(lambda e: "/v" in e.path)
        assert all(e.new is None and e.sha256 is None for e in vanished)
        assert r.counter("build_errors") == 0
    finally:
        r.end()


@pytest.mark.privileged
def test_queue_overflow_triggers_a_rescan_and_nothing_is_lost(mech: str, host: Host, fast_workdir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    workdir = fast_workdir
    w = workdir / "watched"
    (w / "old").mkdir()
    os.chown(w / "old", NOBODY, NOBODY)
    first = make_source(mech, host, workdir, coalesce_s=0.05)
    first.begin()  # the first scan makes the baseline: later scans report differences
    first.end()
    r = make_source(mech, host, workdir, coalesce_s=0.05, scan_cpu_percent=100.0)
    # Hold the reader while more events arrive than the kernel queue holds (16,384 by default).
    gate, held = threading.Event(), threading.Event()
    read_once = r.src.read_once  # type: ignore[attr-defined]

    def gated() -> int:
        if not gate.is_set():
            held.set()
            gate.wait(30)
        return int(read_once())

    monkeypatch.setattr(r.src, "read_once", gated)
    n = 20_000
    try:
        r.begin()
        run_child(f"open({str(w / 'trigger')!r}, 'w').close()")  # wakes the reader into the gate
        assert held.wait(5)
        run_child(f"""
            import os
            for i in range({n}):
                os.close(os.open({str(w)!r} + "/f%05d" % i, os.O_CREAT | os.O_WRONLY, 0o644))
            os.mkdir({str(w / "d")!r})  # lost in the overflow: the repair must watch it ...
            os.rename({str(w / "old")!r}, {str(w / "new")!r})  # ... and see the new name
        """)
        gate.set()
        assert r.wait_counter("overflows", 1) >= 1
        assert r.wait_counter("rescans", 1) >= 1
        deadline = time.monotonic() + 30
        seen: set[str] = set()
        while len(seen) < n and time.monotonic() < deadline:
            seen = {e.path for e in r.changes(lambda e: e.action == "create" and "/f" in e.path)}
            time.sleep(0.1)
        assert len(seen) == n
        by_scan = r.changes(lambda e: e.source == "file.scan")
        assert by_scan and all(e.attribution == "unknown" for e in by_scan)
        assert len(r.changes(lambda e: e.action == "create" and "/f" in e.path)) == n, "a file reported twice"
        run_child(f"open({str(w / 'd' / 'x')!r}, 'w').write('x'); open({str(w / 'new' / 'y')!r}, 'w').write('y')")
        live = {e.path for e in r.wait(lambda e: e.source != "file.scan" and e.path.endswith(("/x", "/y")), 2)}
        assert live == {str(w / "d" / "x"), str(w / "new" / "y")}
    finally:
        gate.set()
        r.end()


@pytest.mark.privileged
def test_scan_does_not_repeat_what_was_reported(mech: str, host: Host, workdir: Path) -> None:
    w = workdir / "watched"
    first = make_source(mech, host, workdir)
    first.begin()
    first.end()
    r = make_source(mech, host, workdir, scan_interval_s=0.3)
    try:
        r.begin()
        run_child(f"""
            import os
            open({str(w / "a")!r}, "w").write("a")
            os.mkdir({str(w / "d")!r})
            open({str(w / "d" / "b")!r}, "w").write("b")
        """)
        r.wait(lambda e: e.path.endswith("/d/b"))
        scans = r.counter("scans")
        r.wait_counter("scans", scans + 2)
        assert not r.changes(lambda e: e.source == "file.scan"), r.changes(lambda e: e.source == "file.scan")
        assert len(r.changes(lambda e: e.path == str(w / "a"))) == 1
    finally:
        r.end()


@pytest.mark.privileged
def test_own_state_dir_is_ignored(mech: str, host: Host, workdir: Path) -> None:
    w = workdir / "watched"
    cls = source_class(mech)
    if not cls.probe(host).ok:
        pytest.skip("not supported here")
    config = FileConfig(default_policy=False, watches=[FileWatch(path=str(workdir))], coalesce_s=WINDOW_S,
                        scan_interval_s=0)
    col, health = Collector(), Health()
    src = cls(SourceContext(host, health, col, {"config": config, "state_dir": str(workdir / "state")}))
    src.snapshot()
    r = Running(mech, src, col, health, threading.Event())
    try:
        r.begin()
        run_child(f"open({str(w / 'x')!r}, 'w').write('x')")
        (w / "mine").write_text("written by the agent's own process")
        r.wait(lambda e: e.path == str(w / "x"))
        time.sleep(0.3)
        assert not r.changes(lambda e: "/state" in e.path)
        mine = r.changes(lambda e: e.path == str(w / "mine"))
        if mech == "fanotify":
            assert not mine and r.counter("own") >= 1
        else:
            assert len(mine) == 1  # inotify cannot tell who wrote
    finally:
        r.end()


@pytest.mark.privileged
def test_through_the_agent_the_writer_has_exe_and_user(mech: str, host: Host, workdir: Path) -> None:
    cls = source_class(mech)
    if not cls.probe(host).ok:
        pytest.skip("not supported here")
    w = workdir / "watched"
    base = AgentConfig(state_dir=str(workdir / "state"), collectors={"file": mech, "network": "off", "package": "off"},
                       health_interval_s=3600, batch_max_delay_s=0.1)
    cfg = msgspec.structs.replace(base, file=FileConfig(default_policy=False, watches=[FileWatch(path=str(w))],
                                                        coalesce_s=WINDOW_S, scan_interval_s=0))
    sink = ListSink()
    agent = Agent(cfg, [sink], host=host, emit_snapshot=False)
    agent.start()
    try:
        time.sleep(0.5)
        pid = run_child(f"open({str(w / 'by-nobody')!r}, 'w').write('x')")
        deadline = time.monotonic() + 10
        found: list[FileChange] = []
        while not found and time.monotonic() < deadline:
            found = [e for e in list(sink.events) if isinstance(e, FileChange) and e.path.endswith("/by-nobody")]
            time.sleep(0.05)
    finally:
        agent.stop()
    assert len(found) == 1
    ev = found[0]
    assert ev.action == "create" and ev.source == f"file.{mech}"
    if mech == "fanotify":
        assert ev.process is not None and ev.process.pid == pid
        assert ev.process.exe in (CHILD_PYTHON, os.path.realpath(CHILD_PYTHON)), ev.process
        assert ev.process.user == "nobody" and ev.process.uid == NOBODY
    else:
        assert ev.attribution == "unknown" and ev.process is None


@pytest.mark.privileged
def test_overlayfs_merged_directory(mech: str, host: Host, workdir: Path) -> None:
    """A container-like overlay: changes made through the merged directory are reported under the
    merged path (fanotify: overlayfs handles cannot be opened; the marks' own handles resolve them)."""
    layers = {n: workdir / n for n in ("lower", "upper", "ovl-work", "merged")}
    for d in layers.values():
        d.mkdir()
    (layers["lower"] / "existing").write_text("from the image\n")
    opts = f"lowerdir={layers['lower']},upperdir={layers['upper']},workdir={layers['ovl-work']}"
    if subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(layers["merged"])]).returncode:
        pytest.skip("cannot mount overlayfs here")
    m = layers["merged"]
    try:
        r = make_source(mech, host, workdir, watches=[FileWatch(path=str(m))])
        try:
            r.begin()
            pid = run_child(f"""
                import os, time
                open({str(m / "existing")!r}, "a").write("changed\\n")
                open({str(m / "new")!r}, "w").write("n")
                time.sleep(0.2)
                os.mkdir({str(m / "sub")!r})
                time.sleep(0.3)
                open({str(m / "sub" / "f")!r}, "w").write("f")
            """, uid=0)
            for name, action in (("existing", "modify"), ("new", "create"), ("sub", "create"), ("sub/f", "create")):
                p = str(m / name)
                got = r.wait(lambda e, p=p: e.path == p)  # type: ignore[misc]
                assert len(got) == 1 and got[0].action == action, (name, got)
                writer_ok(mech, got[0], pid)
            assert r.changes(lambda e: e.path.endswith("/existing"))[0].sha256 == sha(b"from the image\nchanged\n")
            assert r.counter("unresolved") == 0
        finally:
            r.end()
    finally:
        subprocess.run(["umount", str(m)], check=True)


@pytest.mark.privileged
def test_a_directory_of_100000_files(mech: str, host: Host, fast_workdir: Path) -> None:
    w = fast_workdir / "watched"
    big = w / "big"
    big.mkdir()
    for i in range(100_000):
        os.close(os.open(big / f"f{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644))
    r = make_source(mech, host, fast_workdir, scan_cpu_percent=100.0)
    try:
        t0 = time.monotonic()
        r.begin()  # the start scan records all of them quietly
        baseline_s = time.monotonic() - t0
        pid = run_child(f"""
            open({str(big / "f050000")!r}, "w").write("changed")
            open({str(big / "extra")!r}, "w").write("new")
        """, uid=0)
        got = r.wait(lambda e: e.path.endswith("/extra"))
        changed = r.wait(lambda e: e.path.endswith("/f050000"))
        assert len(got) == 1 and got[0].action == "create" and len(changed) == 1 and changed[0].action == "modify"
        assert changed[0].old is not None and changed[0].old.size == 0 and changed[0].sha256 == sha(b"changed")
        writer_ok(mech, changed[0], pid)
        assert baseline_s < 60
    finally:
        r.end()


@pytest.mark.privileged
@pytest.mark.parametrize("marks,use_rename", [("filesystem", True), ("inode", False)])
def test_fanotify_filesystem_marks_and_rename_pairing(host: Host, workdir: Path, marks: str, use_rename: bool) -> None:
    """The other fanotify configurations: one filesystem mark (a rename from an unwatched directory
    has its old name; unrelated changes are read and dropped), and FROM/TO pairing (kernels
    without FAN_RENAME)."""
    if "fanotify" not in MECHANISMS:
        pytest.skip("no fanotify rung")
    w, outside = workdir / "watched", workdir / "outside"
    outside.mkdir()
    r = make_source("fanotify", host, workdir, options={"fanotify_marks": marks, "fanotify_rename": use_rename})
    try:
        r.begin()
        pid = run_child(f"""
            import os, time
            open({str(outside / "noise")!r}, "w").write("x")
            open({str(outside / "in")!r}, "w").write("x")
            time.sleep(0.2)
            os.rename({str(outside / "in")!r}, {str(w / "in")!r})
            open({str(w / "a")!r}, "w").write("a")
            time.sleep(0.2)
            os.rename({str(w / "a")!r}, {str(w / "b")!r})
            time.sleep(0.2)
            os.rename({str(w / "b")!r}, {str(outside / "gone")!r})
        """, uid=0)
        moved_in = r.wait(lambda e: e.path == str(w / "in"))
        assert len(moved_in) == 1 and moved_in[0].action == "rename" and moved_in[0].new is not None
        if marks == "filesystem":  # both names are known wherever they are: a rename out of the policy
            assert moved_in[0].old_path == str(outside / "in")
            gone = r.wait(lambda e: e.path == str(outside / "gone"))
            assert len(gone) == 1 and gone[0].action == "rename" and gone[0].old_path == str(w / "b")
            assert gone[0].rule == str(w) and gone[0].new is not None
        else:  # only the watched side is known: moved in from nowhere, moved out to nowhere
            assert moved_in[0].old_path is None
            gone = r.wait(lambda e: e.action == "delete" and e.path == str(w / "b"))
            assert len(gone) == 1 and gone[0].actions == ["rename"] and gone[0].new is None
        renamed = r.changes(lambda e: e.path == str(w / "b") and e.action == "rename")
        assert len(renamed) == 1 and renamed[0].old_path == str(w / "a")
        for ev in (moved_in[0], renamed[0], gone[0]):
            writer_ok("fanotify", ev, pid)
        assert not r.changes(lambda e: "noise" in e.path)
        if marks == "filesystem":
            assert r.counter("filtered") >= 1
    finally:
        r.end()


# -- coalescing and the rate limit, without a kernel ------------------------------------------------

MS = 1_000_000


def test_burst_becomes_one_record_after_the_window() -> None:
    c = Coalescer(window_s=0.1, rate_per_min=60)
    for i, a in enumerate(["create", "modify", "modify", "attrib"]):
        c.add(b"/w/f", a, ts=1000 + i, mono=i * MS, pid=5)
    assert c.due(50 * MS) == [] and c.next_due_in(50 * MS) == pytest.approx(0.05)
    (rec,) = c.due(100 * MS)
    assert rec.actions == ["create", "modify", "attrib"] and rec.count == 4 and rec.pid == 5
    assert (rec.first_ts, rec.last_ts) == (1000, 1003) and net_action(rec, False, True) == "create"
    assert len(c) == 0 and c.next_due_in(0) is None


def test_editor_save_folds_the_temp_file_into_the_target() -> None:
    c = Coalescer(window_s=1, rate_per_min=60)
    c.add(b"/w/.f.swp", "create", 1, 0, pid=7)
    c.add(b"/w/.f.swp", "modify", 2, 0, pid=7)
    c.add(b"/w/f", "rename", 3, 0, pid=7, old_path=b"/w/.f.swp")
    (rec,) = c.due(0, everything=True)
    assert rec.path == b"/w/f" and rec.old_path == b"/w/.f.swp" and rec.replaced and rec.count == 3
    assert rec.shown_actions() == ["create", "modify", "rename"]
    assert net_action(rec, existed_before=True, exists_now=True) == "modify"
    assert net_action(rec, existed_before=False, exists_now=True) == "create"


def test_a_plain_rename_and_a_move_out() -> None:
    c = Coalescer(window_s=1, rate_per_min=60)
    c.add(b"/w/a", "modify", 1, 0, pid=7)
    c.add(b"/w/b", "rename", 2, 0, pid=7, old_path=b"/w/a")
    c.add(b"/w/c", "moved_out", 3, 0, pid=7)
    b, out = c.due(0, everything=True)
    assert b.path == b"/w/b" and b.old_path == b"/w/a" and not b.replaced and net_action(b, True, True) == "rename"
    assert out.shown_actions() == ["rename"] and net_action(out, True, False) == "delete"


def test_another_writer_gets_its_own_record_and_a_listing_takes_the_kernels_writer() -> None:
    c = Coalescer(window_s=1, rate_per_min=60)
    c.add(b"/w/f", "modify", 1, 0, pid=7)
    c.add(b"/w/f", "modify", 2, 0, pid=8)
    c.add(b"/w/g", "create", 3, 0, pid=0)  # found by listing a new directory
    c.add(b"/w/g", "create", 4, 0, pid=9)  # the kernel's event for it
    recs = c.due(0, everything=True)
    assert [(r.path, r.pid) for r in recs] == [(b"/w/f", 7), (b"/w/f", 8), (b"/w/g", 9)]
    assert c.forced == 1


def test_a_listed_create_takes_only_the_creators_pid() -> None:
    c = Coalescer(window_s=1, rate_per_min=60)
    c.add(b"/w/g", "create", 1, 0, pid=0)  # found by listing a new directory
    c.add(b"/w/g", "modify", 2, 0, pid=9)  # a later writer, not the creator
    recs = c.due(0, everything=True)
    assert [(r.path, r.pid, r.actions) for r in recs] == [(b"/w/g", 0, ["create"]), (b"/w/g", 9, ["modify"])]


def test_rate_limit_holds_back_and_releases_one_folded_record_when_the_minute_ends() -> None:
    c = Coalescer(window_s=0, rate_per_min=2)
    kept = []
    for i in range(5):
        c.add(b"/w/hot", ("modify", "attrib"), i, i * MS, pid=100 + i)  # one kernel event with two actions
        kept += c.due(i * MS)
    assert len(kept) == 2 and c.rate_limited == 3 and kept[0].actions == ["modify", "attrib"] and kept[0].count == 1
    assert c.due(59_000 * MS) == [] and len(c) == 1
    assert c.next_due_in(59_000 * MS) == pytest.approx(1.0)
    (held,) = c.due(60_000 * MS)  # no further event needed: the minute is over
    assert held.count == 3 and held.dropped_before == 3 and held.pid == 104 and held.last_ts == 4
    assert held.actions == ["modify", "attrib"] * 3 and len(c) == 0
    c.add(b"/w/hot", "modify", 99, 60_001 * MS)
    (nxt,) = c.due(60_001 * MS)
    assert nxt.count == 1 and nxt.dropped_before == 0


def test_held_back_records_go_out_at_stop() -> None:
    c = Coalescer(window_s=0, rate_per_min=1)
    c.add(b"/w/f", "modify", 1, 0, pid=7)
    c.add(b"/w/f", "attrib", 2, 0, pid=8)
    assert len(c.due(0)) == 1 and len(c) == 1
    (held,) = c.due(1, everything=True)
    assert held.pid == 8 and held.actions == ["attrib"]


def test_memory_is_bounded() -> None:
    c = Coalescer(window_s=10, rate_per_min=60, max_pending=100, max_rate_paths=50)
    for i in range(1000):
        c.add(b"/w/f%d" % i, "create", i, i)
    assert len(c.pending) <= 100 and c.forced == 900
    out = c.due(0, everything=True)
    assert len(out) == 1000 and len(c.rate) <= 50
    r = Record(b"/x", 1, False, 0, 0, 0)
    for i in range(200):
        r.add("modify" if i % 2 else "attrib", i)
    assert len(r.actions) == 64 and r.actions[-1] == "modify" and r.count == 200


def test_net_action_precedence() -> None:
    def rec(*acts: str) -> Record:
        r = Record(b"/x", 1, False, 0, 0, 0)
        for a in acts:
            r.add(a, 0)
        return r
    assert net_action(rec("modify", "attrib"), True, True) == "modify"
    assert net_action(rec("attrib"), True, True) == "attrib"
    assert net_action(rec("modify", "delete"), True, False) == "delete"
    assert net_action(rec("create", "modify", "delete"), False, False) == "create"
    assert net_action(rec("create", "delete"), True, True) == "modify"  # merged by the kernel, order lost


@pytest.mark.privileged
def test_content_written_through_mmap_with_mtime_restored_is_found_by_the_next_scan(
        mech: str, host: Host, workdir: Path) -> None:
    # Only ATTRIB arrives (the mtime put back); the source keeps the old hash but the next scan must re-hash.
    f = workdir / "watched" / "lib.so"
    f.write_bytes(b"A" * 8192)
    first = make_source(mech, host, workdir)
    first.begin()
    first.end()
    st = f.stat()
    fd = os.open(f, os.O_RDWR)  # opened before the watch, closed after it: no CLOSE_WRITE is seen
    m = mmap.mmap(fd, 0)
    r = make_source(mech, host, workdir)
    try:
        r.begin()
        m[100:104] = b"EVIL"
        m.flush()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
        for ev in r.wait(lambda e: e.path == str(f), timeout=2):  # fanotify may report nothing at all
            assert ev.action == "attrib" and ev.sha256 == sha(b"A" * 8192), ev  # the real-time record cannot tell
        assert mech != "inotify" or r.changes(lambda e: e.path == str(f))
    finally:
        r.end()
        m.close()
        os.close(fd)
    third = make_source(mech, host, workdir)
    try:
        third.begin()
        (mod,) = third.wait(lambda e: e.path == str(f) and e.source == "file.scan")
        assert mod.action == "modify" and mod.sha256 == sha(f.read_bytes()), mod
    finally:
        third.end()


@pytest.mark.privileged
def test_fanotify_reports_reads_of_credential_files_with_the_reader(host: Host, workdir: Path) -> None:
    """A ``read`` watch marks each matching file: opens of it are reported with the reader's pid,
    repeated opens by one process fold into one record (the kernel merges some itself), other
    files in the directory stay quiet."""
    w = workdir / "watched"
    for name in ("id_test", "id_test.pub", "other"):
        (w / name).write_text("secret\n")
        os.chmod(w / name, 0o644)
    watches = [FileWatch(path=str(w / "id_*"), name="credential-read", actions=["read"], hash=False,
                         recursive=False, exclude=["*.pub"]),
               FileWatch(path=str(w), name="dir")]
    r = make_source("fanotify", host, workdir, watches=watches)
    try:
        r.begin()
        pid = run_child(f"""
            import time
            for _ in range(3):
                open({str(w / "id_test")!r}).read()
            open({str(w / "id_test.pub")!r}).read()
            open({str(w / "other")!r}).read()
            time.sleep(0.3)  # alive while the agent reads the queue (a reader gone within ~1 ms is named by pid only)
        """)
        got = r.wait(lambda e: e.action == "read")
        time.sleep(0.3)
        reads = r.changes(lambda e: e.action == "read")
        assert len(reads) == 1, reads
        ev = got[0]
        assert ev.path == str(w / "id_test") and ev.rule == "credential-read" and ev.count >= 1
        assert ev.process is not None and ev.process.pid == pid
        # Read at once from /proc: the reader may be gone before the enricher looks.
        assert ev.process.exe == os.path.realpath(CHILD_PYTHON) and ev.process.comm.startswith("python")
        assert not r.changes(lambda e: e.path.endswith(("other", ".pub")))
        assert r.counter("read_marks") == 1
        # Replaced by rename (as useradd/passwd replace /etc/shadow) and created anew: still watched.
        pid2 = run_child(f"""
            import os
            open({str(w / "new.tmp")!r}, "w").write("s2")
            os.rename({str(w / "new.tmp")!r}, {str(w / "id_test")!r})
            open({str(w / "id_new")!r}, "w").write("s3")
        """)
        r.wait(lambda e: e.path == str(w / "id_new") and e.action == "create")
        pid3 = run_child(f"""
            open({str(w / "id_test")!r}).read()
            open({str(w / "id_new")!r}).read()
        """)
        later = r.wait(lambda e: e.action == "read" and e.process is not None and e.process.pid == pid3, count=2)
        assert {e.path for e in later} == {str(w / "id_test"), str(w / "id_new")}
        assert pid2 != pid3
        # A forked child that never execs (cron's job runner, a daemon's PAM helper) reads and exits at
        # once: it is named by the binary it runs, its parent's.
        parent = run_child(f"""
            import os
            child = os.fork()
            if child == 0:
                import time
                open({str(w / "id_test")!r}).read()
                time.sleep(0.3)
                os._exit(0)
            os.waitpid(child, 0)
            print(child, flush=True)
        """)
        forked = r.wait(lambda e: e.action == "read" and e.process is not None and e.process.ppid == parent)
        assert forked[0].process is not None and forked[0].process.exe == os.path.realpath(CHILD_PYTHON)
        assert forked[0].process.pid != parent
    finally:
        r.end()
