from __future__ import annotations

from heron.agent.transforms.dedupe import Deduper
from heron.schema.events import Process, ProcessExec, ProcessExit

S = 1_000_000_000


def ex(ts: int, argv: list[str], parent: str = "p1", uid: int = 0) -> ProcessExec:
    return ProcessExec(ts=ts, process=Process(key=f"k{ts}", pid=ts, exe="/bin/true", argv=argv,
                                              uid=uid, parent_key=parent))


def test_identical_execs_fold_with_count_and_bounds() -> None:
    d = Deduper(window_s=2)
    out = d.push([ex(1, ["true", "a"]), ex(2, ["true", "a"]), ex(3, ["true", "b"]), ex(4, ["true", "a"])], 0)
    assert out == []
    out = d.release(3 * S)
    execs = [e for e in out if isinstance(e, ProcessExec)]
    assert [(e.process.argv, e.count, e.first_ts, e.last_ts) for e in execs] == [
        (["true", "a"], 3, 1, 4),
        (["true", "b"], 1, 0, 0),
    ]


def test_different_parent_or_user_not_folded() -> None:
    d = Deduper(window_s=1)
    d.push([ex(1, ["x"]), ex(2, ["x"], parent="p2"), ex(3, ["x"], uid=1000)], 0)
    assert len(d.release(0, everything=True)) == 3


def test_order_kept_exit_never_overtakes_exec() -> None:
    d = Deduper(window_s=1)
    d.push([ex(1, ["x"])], 0)
    d.push([ProcessExit(ts=2, key="k1", pid=1)], S // 2)
    first = d.release(S)
    assert [type(e).__name__ for e in first] == ["ProcessExec"]
    assert [type(e).__name__ for e in d.release(2 * S)] == ["ProcessExit"]


def test_window_zero_passes_through_and_bound_releases_early() -> None:
    assert len(Deduper(window_s=0).push([ex(1, ["x"]), ex(2, ["x"])], 0)) == 2
    d = Deduper(window_s=100, max_entries=10)
    out = d.push([ex(i, ["x", str(i)]) for i in range(25)], 0)
    assert len(out) == 15 and len(d) == 10


def test_snapshot_records_are_never_folded() -> None:
    d = Deduper(window_s=1)
    workers = [ex(i, ["nginx: worker process"]) for i in range(4)]
    for w in workers:
        w.source = "process.snapshot"
    assert len(d.push(workers, 0) + d.release(0, everything=True)) == 4
