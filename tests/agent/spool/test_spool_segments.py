"""The on-disk spool: order, acks, restart, recovery from torn and corrupt data, the size bound."""

from __future__ import annotations

import errno
import os
import resource
import struct
from pathlib import Path

import pytest

from heron.agent.health import Health
from heron.agent.spool.segments import HEADER_SIZE, Spool, SpoolError, parse_batch_id


def open_spool(d: Path, health: Health | None = None, **kw: float) -> Spool:
    kw.setdefault("max_bytes", 1 << 20)
    kw.setdefault("segment_bytes", 4096)
    return Spool(d, health=health or Health(), **kw)  # type: ignore[arg-type]


def drain(s: Spool) -> list[bytes]:
    out = []
    while (rec := s.read_next()) is not None:
        out.append(rec[1])
        s.ack(rec[0])
    return out


def crash(s: Spool) -> None:
    """What the process dying leaves: no close(), no final state write, the lock released."""
    os.close(s._fd)
    os.close(s._lock_fd)


def segment_files(d: Path) -> list[Path]:
    return sorted(d.glob("*.seg"))


def test_append_read_ack_in_order_and_deletes_acked_segments(tmp_path: Path) -> None:
    s = open_spool(tmp_path)
    payloads = [f"record-{i}".encode() * 40 for i in range(50)]  # ~400 B each: several 4 KiB segments
    ids = [s.append(p) for p in payloads]
    assert len(set(ids)) == 50
    assert s.pending_records == 50
    assert len(segment_files(tmp_path)) > 3
    # read_next keeps returning the oldest unacked record until it is acked
    first = s.read_next()
    assert first == (ids[0], payloads[0])
    assert s.read_next() == first
    s.ack(ids[0])
    assert s.pending_records == 49
    assert drain(s) == payloads[1:]
    assert s.pending_records == 0 and s.pending_bytes == 0
    assert s.read_next() is None
    assert len(segment_files(tmp_path)) == 1  # only the segment still being written
    s.ack(ids[3])  # an old id is ignored
    s.close()
    assert segment_files(tmp_path) == []  # empty active segment removed on close


def test_ack_must_follow_read_order(tmp_path: Path) -> None:
    s = open_spool(tmp_path)
    a = s.append(b"a")
    b = s.append(b"b")
    with pytest.raises(SpoolError):
        s.ack(b)  # not the oldest
    with pytest.raises(SpoolError):
        s.ack(a)  # not read yet
    with pytest.raises(SpoolError):
        s.ack("garbage")
    s.close()


def test_restart_resumes_from_cursor_and_ids_are_stable(tmp_path: Path) -> None:
    s = open_spool(tmp_path)
    ids = [s.append(f"r{i}".encode()) for i in range(10)]
    for i in range(4):
        rec = s.read_next()
        assert rec == (ids[i], f"r{i}".encode())
        s.ack(rec[0])
    s.close()

    s2 = open_spool(tmp_path)
    assert s2.pending_records == 6
    rec = s2.read_next()
    assert rec == (ids[4], b"r4")  # same batch id as before the restart
    new_ids = [s2.append(f"n{i}".encode()) for i in range(3)]
    assert not set(new_ids) & set(ids)
    # a new open writes into a new segment: same spool id, higher segment number
    assert parse_batch_id(new_ids[0])[0] == parse_batch_id(ids[0])[0]
    assert parse_batch_id(new_ids[0])[1] > parse_batch_id(ids[-1])[1]
    got = drain(s2)
    assert got == [f"r{i}".encode() for i in range(4, 10)] + [f"n{i}".encode() for i in range(3)]
    s2.close()


def test_restart_without_close_resends_only_unacked(tmp_path: Path) -> None:
    """A crash (no close): the cursor written at each ack still holds."""
    s = open_spool(tmp_path)
    ids = [s.append(f"r{i}".encode()) for i in range(5)]
    for _ in range(3):
        rec = s.read_next()
        assert rec is not None
        s.ack(rec[0])
    crash(s)
    s2 = open_spool(tmp_path)
    assert s2.read_next() == (ids[3], b"r3")
    assert drain(s2) == [b"r3", b"r4"]
    s2.close()


def test_batch_ids_unique_across_many_restarts(tmp_path: Path) -> None:
    seen: set[str] = set()
    for round_ in range(5):
        s = open_spool(tmp_path)
        for i in range(20):
            seen.add(s.append(f"{round_}-{i}".encode()))
        if round_ % 2:
            drain(s)  # acked segments get deleted: their numbers must still never come back
        s.close()
    assert len(seen) == 100


def test_truncated_tail_is_cut_back_to_last_good_record(tmp_path: Path) -> None:
    health = Health()
    s = open_spool(tmp_path, health)
    payloads = [bytes([i]) * 100 for i in range(5)]
    for p in payloads:
        s.append(p)
    crash(s)
    seg = segment_files(tmp_path)[-1]
    size = seg.stat().st_size
    assert size == 5 * (HEADER_SIZE + 100)
    os.truncate(seg, size - 37)  # the last record torn mid-payload

    s2 = open_spool(tmp_path, health)
    assert health.get("spool.truncated_tails") == 1
    assert seg.stat().st_size == 4 * (HEADER_SIZE + 100)
    assert s2.pending_records == 4
    s2.append(b"after")
    assert drain(s2) == [*payloads[:4], b"after"]
    s2.close()


def test_torn_header_is_cut(tmp_path: Path) -> None:
    health = Health()
    s = open_spool(tmp_path, health)
    s.append(b"x" * 10)
    s.append(b"y" * 10)
    crash(s)
    seg = segment_files(tmp_path)[-1]
    os.truncate(seg, HEADER_SIZE + 10 + 5)  # only part of the second header made it
    s2 = open_spool(tmp_path, health)
    assert health.get("spool.truncated_tails") == 1
    assert drain(s2) == [b"x" * 10]
    s2.close()


def test_corrupt_record_in_the_middle_skips_to_next_segment(tmp_path: Path) -> None:
    health = Health()
    s = open_spool(tmp_path, health)
    payloads = [bytes([65 + i]) * 500 for i in range(20)]  # ~7 records per 4 KiB segment
    ids = [s.append(p) for p in payloads]
    s.close()
    _, seq0, _ = parse_batch_id(ids[0])
    first_seg = [i for i in ids if parse_batch_id(i)[1] == seq0]
    assert len(first_seg) >= 4
    # flip payload bytes of the third record of the first segment: its CRC no longer matches
    _, _, off = parse_batch_id(first_seg[2])
    path = segment_files(tmp_path)[0]
    with open(path, "r+b") as f:
        f.seek(off + HEADER_SIZE + 10)
        f.write(b"\x00\x01\x02")

    s2 = open_spool(tmp_path, health)
    got = drain(s2)
    lost = len(first_seg) - 2
    assert got == payloads[:2] + payloads[len(first_seg):]
    assert health.get("spool.corrupt_skips") == 1
    assert health.get("spool.dropped_records") == lost
    s2.close()


def test_bad_magic_in_middle_of_older_segment_is_counted(tmp_path: Path) -> None:
    health = Health()
    s = open_spool(tmp_path, health)
    payloads = [bytes([65 + i]) * 500 for i in range(20)]
    for p in payloads:
        s.append(p)
    s.close()
    path = segment_files(tmp_path)[0]
    with open(path, "r+b") as f:
        f.seek(HEADER_SIZE + 500)  # second record's header
        f.write(b"JUNK")
    s2 = open_spool(tmp_path, health)
    got = drain(s2)
    assert got[0] == payloads[0]
    assert payloads[1] not in got and payloads[-1] in got
    assert health.get("spool.corrupt_skips") == 1
    s2.close()


def test_bound_drops_oldest_segment_and_counts(tmp_path: Path) -> None:
    health = Health()
    s = open_spool(tmp_path, health, max_bytes=16384, segment_bytes=4096)
    rec = HEADER_SIZE + 1000
    per_seg = 4096 // rec  # 4 records per segment
    n = 40
    payloads = [struct.pack("<I", i) + b"z" * 996 for i in range(n)]
    for p in payloads:
        s.append(p)  # never blocks, never raises
    total = sum(f.stat().st_size for f in segment_files(tmp_path))
    assert total <= 16384
    dropped = health.get("spool.dropped_records")
    assert dropped > 0 and dropped % per_seg == 0
    assert s.pending_records == n - dropped
    got = drain(s)
    # the newest survive, in order, and exactly the oldest ones were dropped
    assert got == payloads[dropped:]
    s.close()


def test_bound_drop_of_segment_being_read(tmp_path: Path) -> None:
    """The reader holds a record of a segment that the bound drops: its late ack is harmless."""
    health = Health()
    s = open_spool(tmp_path, health, max_bytes=8192, segment_bytes=4096)
    first = s.append(b"a" * 1000)
    rec = s.read_next()
    assert rec is not None and rec[0] == first
    for _ in range(12):
        s.append(b"b" * 1000)
    s.ack(first)  # already dropped: ignored
    assert health.get("spool.dropped_records") >= 1
    got = drain(s)
    assert got and all(p == b"b" * 1000 for p in got)
    s.close()


def test_oversized_record_is_refused(tmp_path: Path) -> None:
    health = Health()
    s = open_spool(tmp_path, health, max_bytes=8192, segment_bytes=4096)
    with pytest.raises(SpoolError):
        s.append(b"x" * 5000)
    assert health.get("spool.rejected_records") == 1
    big = s.append(b"y" * 4000)  # larger than fits next to others, but within the bound
    assert s.read_next() == (big, b"y" * 4000)
    s.close()


def test_lost_state_picks_a_new_spool_id(tmp_path: Path) -> None:
    health = Health()
    s = open_spool(tmp_path, health)
    old = s.append(b"kept")
    s.close()
    (tmp_path / "state").write_bytes(b"{not json")
    s2 = open_spool(tmp_path, health)
    assert health.get("spool.state_resets") == 1
    rec = s2.read_next()
    assert rec is not None and rec[1] == b"kept"
    assert parse_batch_id(rec[0])[0] != parse_batch_id(old)[0]
    s2.close()


def test_writer_and_reader_threads(tmp_path: Path) -> None:
    import threading

    s = open_spool(tmp_path, max_bytes=1 << 22, segment_bytes=8192)
    n = 2000
    got: list[bytes] = []

    def reader() -> None:
        while len(got) < n:
            rec = s.read_next()
            if rec is None:
                continue
            got.append(rec[1])
            s.ack(rec[0])

    th = threading.Thread(target=reader)
    th.start()
    for i in range(n):
        s.append(b"%d" % i)
    th.join(20)
    assert got == [b"%d" % i for i in range(n)]
    s.close()


@pytest.mark.privileged
def test_disk_full_leaves_no_torn_record(tmp_path: Path) -> None:
    """On a real full filesystem (a tiny tmpfs): append raises, and what it accepted is intact."""
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], check=True)
    try:
        health = Health()
        s = Spool(mnt / "spool", max_bytes=1 << 20, segment_bytes=1 << 18, health=health)
        accepted = []
        with pytest.raises(OSError):
            for i in range(100):
                payload = bytes([i]) * 3001  # not page aligned: the failing write is a short one
                s.append(payload)
                accepted.append(payload)
        assert 5 < len(accepted) < 100
        crash(s)  # the agent dies with the disk full
        subprocess.run(["mount", "-o", "remount,size=1m", str(mnt)], check=True)
        s2 = Spool(mnt / "spool", max_bytes=1 << 20, segment_bytes=1 << 18, health=health)
        assert health.get("spool.truncated_tails") == 0  # the failed append was rolled back
        assert drain(s2) == accepted
        s2.close()
    finally:
        subprocess.run(["umount", "--lazy", str(mnt)], check=True)  # detaches even if a test left an fd


def test_sync_if_due_only_syncs_new_records(tmp_path: Path) -> None:
    s = open_spool(tmp_path, sync_interval_s=3600)
    assert not s.sync_if_due(force=True)  # nothing written yet
    s.append(b"a")
    assert not s.sync_if_due()  # not due for an hour
    assert s.sync_if_due(force=True)
    assert not s.sync_if_due(force=True)  # already synced
    s.close()
    assert not s.sync_if_due(force=True)


def test_one_process_per_spool(tmp_path: Path) -> None:
    import subprocess
    import sys

    s = open_spool(tmp_path)
    code = ("import sys\nfrom heron.agent.spool.segments import Spool, SpoolError\n"
            "try:\n    Spool(sys.argv[1], max_bytes=1 << 20, segment_bytes=4096)\n"
            "except SpoolError as e:\n    print(e)\n")
    def run() -> str:
        cmd = [sys.executable, "-c", code, str(tmp_path)]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    assert "in use by another process" in run()
    s.close()
    assert run() == ""


def test_emfile_on_read_skips_nothing(tmp_path: Path) -> None:
    health = Health()
    s = open_spool(tmp_path, health)
    payloads = [bytes([65 + i]) * 500 for i in range(20)]  # several segments
    for p in payloads:
        s.append(p)
    files = segment_files(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = len(os.listdir("/proc/self/fd")) + 16
    fillers: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        with pytest.raises(OSError) as full:  # a real EMFILE: every descriptor this process may have is taken
            for _ in range(limit + 1):
                fillers.append(os.open("/dev/null", os.O_RDONLY))
        assert full.value.errno == errno.EMFILE
        for _ in range(2):
            with pytest.raises(OSError) as e:
                s.read_next()
            assert e.value.errno == errno.EMFILE
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert segment_files(tmp_path) == files and s.pending_records == 20
    assert drain(s) == payloads  # the same records, from the first
    assert health.get("spool.corrupt_skips") == 0 and health.get("spool.dropped_records") == 0
    s.close()


def test_unreadable_segment_raises_until_it_is_readable_again(tmp_path: Path) -> None:
    health = Health()
    s = open_spool(tmp_path, health)
    payloads = [bytes([65 + i]) * 500 for i in range(20)]
    for p in payloads:
        s.append(p)
    first = s.read_next()
    assert first is not None
    s.ack(first[0])
    head = segment_files(tmp_path)[0]
    aside = head.with_suffix(".aside")
    head.rename(aside)
    head.mkdir()  # open() now fails with EISDIR: an I/O error, not corruption
    for _ in range(2):
        with pytest.raises(IsADirectoryError):
            s.read_next()
    assert s.pending_records == 19 and health.get("spool.corrupt_skips") == 0
    head.rmdir()
    aside.rename(head)
    assert drain(s) == payloads[1:]
    assert health.get("spool.corrupt_skips") == 0 and health.get("spool.dropped_records") == 0
    s.close()


def test_segment_deleted_behind_our_back_is_skipped_and_counted(tmp_path: Path) -> None:
    health = Health()
    s = open_spool(tmp_path, health)
    payloads = [bytes([65 + i]) * 500 for i in range(20)]
    ids = [s.append(p) for p in payloads]
    in_first = sum(1 for i in ids if parse_batch_id(i)[1] == parse_batch_id(ids[0])[1])
    segment_files(tmp_path)[0].unlink()  # waiting cannot bring it back: count the loss, go on
    assert drain(s) == payloads[in_first:]
    assert health.get("spool.corrupt_skips") == 1 and health.get("spool.dropped_records") == in_first
    s.close()
