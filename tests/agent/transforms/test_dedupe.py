from __future__ import annotations

from heron.agent.transforms.dedupe import Deduper
from heron.schema.events import Process, ProcessExec, ProcessExit

S = 1_000_000_000


def ex(ts: int, argv: list[str], parent: str = "p1", uid: int = 0) -> ProcessExec:
    return ProcessExec(ts=ts, process=Process(key=f"k{ts}", pid=ts, exe="/bin/true", argv=argv,
                                              uid=uid, parent_key=parent))


def execs(events: list[object]) -> list[tuple[list[str], int, int, int]]:
    return [(e.process.argv, e.count, e.first_ts, e.last_ts) for e in events if isinstance(e, ProcessExec)]


def test_first_exec_goes_out_at_once_and_repeats_fold_until_the_window_ends() -> None:
    d = Deduper(window_s=2)
    out = d.push([ex(1, ["true", "a"]), ex(2, ["true", "a"]), ex(3, ["true", "b"]), ex(4, ["true", "a"])], 0)
    assert execs(out) == [(["true", "a"], 1, 0, 0), (["true", "b"], 1, 0, 0)]  # no delay for either
    assert d.release(1 * S) == []
    assert execs(d.release(3 * S)) == [(["true", "a"], 2, 2, 4)]  # the two repeats, one record
    assert d.folded == 1
    # After the window the same exec is new again: out at once.
    assert execs(d.push([ex(5, ["true", "a"])], 4 * S)) == [(["true", "a"], 1, 0, 0)]


def test_a_single_repeat_is_its_own_record() -> None:
    d = Deduper(window_s=1)
    assert len(d.push([ex(1, ["x"]), ex(2, ["x"])], 0)) == 1
    assert execs(d.release(0, everything=True)) == [(["x"], 1, 0, 0)]


def test_different_parent_or_user_not_folded() -> None:
    d = Deduper(window_s=1)
    assert len(d.push([ex(1, ["x"]), ex(2, ["x"], parent="p2"), ex(3, ["x"], uid=1000)], 0)) == 3
    assert d.release(0, everything=True) == []


def test_order_kept_exit_never_overtakes_its_exec() -> None:
    d = Deduper(window_s=1)
    first = d.push([ex(1, ["x"])], 0)
    then = d.push([ProcessExit(ts=2, key="k1", pid=1)], S // 2)
    assert [type(e).__name__ for e in first + then] == ["ProcessExec", "ProcessExit"]


def test_window_zero_passes_through_and_the_bound_ends_windows_early() -> None:
    assert len(Deduper(window_s=0).push([ex(1, ["x"]), ex(2, ["x"])], 0)) == 2
    d = Deduper(window_s=100, max_entries=10)
    out = d.push([ex(i, ["x", str(i)]) for i in range(25)], 0)
    assert len(out) == 25 and len(d) == 10
    out = d.push([ex(100, ["x", "24"]), ex(101, ["x", "0"])], 0)  # 0's window ended early: new again
    assert execs(out) == [(["x", "0"], 1, 0, 0)]


def test_snapshot_records_are_never_folded() -> None:
    d = Deduper(window_s=1)
    workers = [ex(i, ["nginx: worker process"]) for i in range(4)]
    for w in workers:
        w.source = "process.snapshot"
    assert len(d.push(workers, 0) + d.release(0, everything=True)) == 4
