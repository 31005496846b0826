"""hash_file on real files: content, and every way a hostile or busy file system can get in the way
(FIFO, symlink, vanished, too large, replaced or rewritten while read, unreadable, beyond PATH_MAX);
and IoBudget's rate and CPU limits."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from heron.agent.fim.hashing import HashResult, IoBudget, hash_file, meta_of

MIB = 1 << 20


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b(p: Path) -> bytes:
    return os.fsencode(p)


def test_regular_files_small_and_large(tmp_path: Path) -> None:
    for size in (0, 1, 65_535, 65_536, 3 * MIB + 17):
        data = os.urandom(size)
        f = tmp_path / f"f{size}"
        f.write_bytes(data)
        res = hash_file(b(f), 64 * MIB)
        assert res.sha256 == sha(data), size
        assert res.skipped is None
        assert res.meta is not None and res.meta.size == size and res.meta.inode == f.stat().st_ino
        assert res.ctime_ns == f.stat().st_ctime_ns


def test_meta_of(tmp_path: Path) -> None:
    f = tmp_path / "m"
    f.write_bytes(b"abc")
    os.chmod(f, 0o640)
    st = os.lstat(f)
    m = meta_of(st)
    assert (m.mode, m.uid, m.gid, m.size, m.mtime_ns, m.inode, m.dev, m.nlink) == (
        st.st_mode, st.st_uid, st.st_gid, 3, st.st_mtime_ns, st.st_ino, st.st_dev, 1)
    assert stat.S_IMODE(m.mode) == 0o640


def test_fifo_is_not_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    box: list[HashResult] = []
    t = threading.Thread(target=lambda: box.append(hash_file(b(fifo), MIB)), daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "hash_file blocked on a FIFO"
    assert box[0].skipped == "not_regular" and box[0].sha256 is None
    assert box[0].meta is not None and stat.S_ISFIFO(box[0].meta.mode)


def test_symlink_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"secret")
    link = tmp_path / "link"
    link.symlink_to(target)
    res = hash_file(b(link), MIB)
    assert res.skipped == "not_regular" and res.sha256 is None
    assert res.meta is not None and stat.S_ISLNK(res.meta.mode)
    (tmp_path / "dir").mkdir()
    assert hash_file(b(tmp_path / "dir"), MIB).skipped == "not_regular"
    assert hash_file(b"/dev/null", MIB).skipped == "not_regular"


def test_vanished_and_too_large(tmp_path: Path) -> None:
    res = hash_file(b(tmp_path / "nope"), MIB)
    assert res == HashResult(None, "vanished", None, 0)
    assert hash_file(b(tmp_path / "nope" / "deeper"), MIB).skipped == "vanished"
    big = tmp_path / "big"
    big.write_bytes(b"x" * 1000)
    res = hash_file(b(big), 999)
    assert res.skipped == "too_large" and res.meta is not None and res.meta.size == 1000
    assert hash_file(b(big), 1000).sha256 == sha(b"x" * 1000)


class Hook(IoBudget):
    """A budget whose spend() runs an action on the n-th call: a change made mid-read, deterministically."""

    def __init__(self, action: object, on_calls: set[int]) -> None:
        super().__init__(10_000, 100)
        self.action = action
        self.on_calls = on_calls
        self.calls = 0

    def spend(self, nbytes: int) -> None:
        self.calls += 1
        if self.calls in self.on_calls:
            self.action()  # type: ignore[operator]


def test_replaced_under_its_name_while_hashed_is_hashed_again(tmp_path: Path) -> None:
    f, new = tmp_path / "f", tmp_path / "new"
    old_data, new_data = b"a" * (3 * MIB), b"b" * (2 * MIB)
    f.write_bytes(old_data)
    new.write_bytes(new_data)
    res = hash_file(b(f), 64 * MIB, budget=Hook(lambda: os.rename(new, f), {1}))
    assert res.skipped is None
    assert res.sha256 == sha(new_data)  # the second attempt read the file now at that name
    assert res.meta is not None and res.meta.inode == f.stat().st_ino


def test_modified_in_place_while_hashed(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"a" * (3 * MIB))

    def scribble() -> None:
        with open(f, "r+b") as fh:
            fh.write(b"z")

    # Changed during the first read only: the retry gets a consistent hash of the new content.
    res = hash_file(b(f), 64 * MIB, budget=Hook(scribble, {1}))
    assert res.skipped is None and res.sha256 == sha(f.read_bytes())
    # Changed during every read: reported, never a hash of a mix.
    res = hash_file(b(f), 64 * MIB, budget=Hook(scribble, {1, 5}))
    assert res.skipped == "changed_while_hashing" and res.sha256 is None


def test_deleted_while_hashed(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"a" * (2 * MIB))
    res = hash_file(b(f), 64 * MIB, budget=Hook(lambda: f.unlink(), {1}))
    assert res.skipped == "vanished" and res.sha256 is None


def test_rewritten_by_a_thread_never_yields_a_mixed_hash(tmp_path: Path) -> None:
    f = tmp_path / "f"
    versions = [bytes([c]) * (4 * MIB) for c in b"ABCD"]
    f.write_bytes(versions[0])
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            with open(f, "r+b") as fh:  # in place, in pieces: a reader can see a mix
                data = versions[i % 4]
                for off in range(0, len(data), MIB):
                    fh.write(data[off:off + MIB])

    t = threading.Thread(target=writer)
    t.start()
    try:
        outcomes = [hash_file(b(f), 64 * MIB) for _ in range(15)]
    finally:
        stop.set()
        t.join()
    good = {sha(v) for v in versions}
    for res in outcomes:
        assert res.skipped == "changed_while_hashing" or res.sha256 in good, res


@pytest.mark.privileged
def test_unreadable_as_nobody(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o755)
    f = tmp_path / "secret"
    f.write_bytes(b"root only")
    os.chmod(f, 0o600)
    code = ("import os, sys; from heron.agent.fim.hashing import hash_file;"  # import first: /root is 0700
            "os.setgid(65534); os.setuid(65534);"
            "print(hash_file(os.fsencode(sys.argv[1]), 1 << 20).skipped)")
    out = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3] / "src")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "unreadable"


def test_beyond_path_max_through_dir_fd(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    depth = 0
    try:
        for _ in range(20):  # 20 x 250 bytes: a path of 5,000+ bytes
            os.mkdir(b"d" * 250, dir_fd=fd)
            nfd = os.open(b"d" * 250, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
            depth += 1
        wfd = os.open(b"file", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(wfd, b"deep")
        os.close(wfd)
        full = b(tmp_path) + (b"/" + b"d" * 250) * depth + b"/file"
        assert len(full) > 4096
        assert hash_file(full, MIB).skipped == "error:ENAMETOOLONG"
        assert hash_file(b"file", MIB, dir_fd=fd).sha256 == sha(b"deep")
    finally:
        os.close(fd)


def test_budget_limits_rate() -> None:
    budget = IoBudget(mb_per_s=40, cpu_percent=100)
    t0 = time.monotonic()
    for _ in range(8):
        budget.spend(MIB)  # 8 MiB at 40 MiB/s: 0.2 s
    elapsed = time.monotonic() - t0
    assert 0.17 <= elapsed <= 0.6, elapsed
    assert budget.slept_s > 0.1


def test_budget_limits_cpu_share() -> None:
    budget = IoBudget(mb_per_s=1e9, cpu_percent=20)
    t0, c0 = time.monotonic(), time.thread_time()
    while time.thread_time() - c0 < 0.15:
        sum(range(2000))
        budget.spend(0)
    wall = time.monotonic() - t0
    cpu = time.thread_time() - c0
    assert cpu / wall < 0.3, (cpu, wall)


def test_budget_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        IoBudget(0, 50)
    with pytest.raises(ValueError):
        IoBudget(10, 0)
