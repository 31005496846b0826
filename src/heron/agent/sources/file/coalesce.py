"""Burst coalescing and a per-path rate limit for real-time file changes (both mechanisms).

Raw changes to one path within ``window_s`` of the first become one ``Record``: the raw actions in
order (consecutive repeats folded), how many raw events, first/last time. A change by another
process flushes the pending record first, so a record always has one writer (a change with no known
writer, pid 0, joins the pending record; a pending one without a writer takes the writer of a later
create, the kernel's event for the same creation, and is closed as another writer's otherwise: a
later writer is not the creator). Kernel events already merged by the kernel arrive as one call with
several actions (their order is lost: create, modify, attrib, delete is assumed). Renames fold: when
``old -> new`` happens while ``old`` has a pending record of the same writer, that record moves onto
``new`` (its actions first, then "rename"); when the file at ``old`` was created within the window
(an editor's save: write a temp file, rename it onto the target) the record is marked ``replaced``
and the temp file gets no record of its own. The reported action is decided from the record and the
file's state by ``net_action`` (see there).

With ``window_s`` 0 every raw event is its own record (the kernel may still have merged a few
into one event). Rate limit: at most ``rate_per_min`` records per path per minute; a record over
the limit is held back and counted (``rate_limited``): the held-back records of a path fold into
one deferred record (all their actions, their raw event count, the last writer's pid) that is
released when the path's minute ends, so a change is late by at most a minute, never lost.
Memory is bounded: past ``max_pending`` records the oldest is flushed early (``forced``), at most
one deferred record per path in the rate table, and the table forgets idle paths first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# Actions a source feeds in. "moved_out": renamed to a place nothing watches (shown as "rename").
ACTIONS = ("create", "modify", "attrib", "delete", "rename", "moved_out")
MAX_ACTIONS = 64  # the schema's bound on FileChange.actions
_MINUTE_NS = 60_000_000_000


@dataclass(slots=True)
class Record:
    path: bytes
    pid: int  # 0: unknown (inotify, scans)
    is_dir: bool
    first_ts: int  # wall clock ns
    last_ts: int
    due_ns: int  # monotonic ns: flush time
    actions: list[str] = field(default_factory=list)
    count: int = 0
    old_path: bytes | None = None
    replaced: bool = False  # a file born in the window was renamed onto path
    dropped_before: int = 0  # raw events held back by the rate limit (a deferred record: all of count)

    def add(self, action: str, ts: int, n: int = 1) -> None:
        acts = self.actions
        if not acts or acts[-1] != action:
            if len(acts) >= MAX_ACTIONS:
                acts[-1] = action  # keep the latest: it decides what the path is now
            else:
                acts.append(action)
        self.count += n
        self.last_ts = ts

    def shown_actions(self) -> list[str]:
        out: list[str] = []
        for a in self.actions:
            a = "rename" if a == "moved_out" else a
            if not out or out[-1] != a:
                out.append(a)
        return out


# Most significant first: a record's action is the first of these among its actions, except
# for the cases net_action documents.
PRECEDENCE = ("create", "rename", "delete", "modify", "attrib")


def net_action(rec: Record, existed_before: bool, exists_now: bool) -> str:
    """The action a record reports.

    - an editor-style save (a file born in the window renamed onto ``path``): "modify" when
      ``path`` existed before (the baseline knows it), else "create";
    - a file renamed to somewhere nothing watches ("moved_out"): "delete" of the old path, unless
      it was also created within the window ("create");
    - otherwise the most significant action: create > rename > delete > modify > attrib. A file
      created and deleted within one window is a "create" whose new metadata is absent. A
      create the kernel merged with a delete (order lost) of a path that existed before and
      exists now is a "modify" (deleted and re-created).
    """
    acts = rec.actions
    if rec.replaced:
        return "modify" if existed_before else "create"
    if "create" in acts and "delete" in acts and existed_before and exists_now:
        return "modify"
    if acts and acts[-1] == "moved_out" and "create" not in acts:
        return "delete"
    for a in PRECEDENCE:
        if a in acts:
            return a
    return "modify"


class Coalescer:
    def __init__(self, window_s: float, rate_per_min: int, max_pending: int = 50_000,
                 max_rate_paths: int = 100_000) -> None:
        self.window_ns = int(window_s * 1e9)
        self.rate_per_min = rate_per_min
        self.max_pending = max_pending
        self.max_rate_paths = max_rate_paths
        # Insertion order is due order (every record is due window_ns after it was opened).
        self.pending: dict[bytes, Record] = {}
        self.ready: list[Record] = []
        # path -> [minute window start (mono ns), records in it]
        self.rate: dict[bytes, list[int]] = {}
        # path -> the records held back by the rate limit, folded; due_ns: when the path's minute ends
        self.deferred: dict[bytes, Record] = {}
        self.rate_limited = 0  # records held back
        self.forced = 0  # records flushed before their window ended (bound, other writer)

    def __len__(self) -> int:
        return len(self.pending) + len(self.ready) + len(self.deferred)

    def _open(self, path: bytes, pid: int, is_dir: bool, ts: int, mono: int, acts: Sequence[str] = ()) -> Record:
        rec = self.pending.get(path)
        if rec is not None:
            if rec.pid == pid or pid == 0:
                return rec
            if rec.pid == 0 and "create" in acts:  # a create found by listing: the kernel's event names the creator
                rec.pid = pid
                return rec
            del self.pending[path]  # another writer: close the record of the first one
            self.ready.append(rec)
            self.forced += 1
        if len(self.pending) >= self.max_pending:
            first = next(iter(self.pending))
            self.ready.append(self.pending.pop(first))
            self.forced += 1
        rec = Record(path, pid, is_dir, ts, ts, mono + self.window_ns)
        self.pending[path] = rec
        return rec

    def add(self, path: bytes, actions: str | Sequence[str], ts: int, mono: int, pid: int = 0,
            is_dir: bool = False, old_path: bytes | None = None) -> None:
        """One raw kernel event (``actions``: one, or several the kernel merged into it). A rename
        names the new path in ``path`` and the old one in ``old_path`` (None: it came from a place
        nothing watches)."""
        acts = (actions,) if isinstance(actions, str) else actions
        if not acts:
            return
        if self.window_ns <= 0:
            rec = Record(path, pid, is_dir, ts, ts, mono, old_path=old_path)
            for a in acts:
                rec.add(a, ts, 0)
            rec.count = 1
            self.ready.append(rec)
            return
        if "rename" in acts and old_path is not None:
            prev = self.pending.get(old_path)
            if prev is not None and (prev.pid == pid or not prev.pid or not pid):
                del self.pending[old_path]
            else:
                prev = None
            rec = self._open(path, pid, is_dir, ts, mono, acts)
            if prev is not None:
                for a in prev.actions:
                    rec.add(a, ts, 0)
                rec.count += prev.count
                rec.first_ts = min(rec.first_ts, prev.first_ts)
                rec.old_path = prev.old_path if prev.old_path is not None else old_path
                rec.replaced = rec.replaced or "create" in prev.actions
            else:
                rec.old_path = old_path
            rec.is_dir = is_dir
        else:
            rec = self._open(path, pid, is_dir, ts, mono, acts)
            rec.is_dir = rec.is_dir or is_dir
        for a in acts:
            rec.add(a, ts, 0)
        rec.count += 1

    def next_due_in(self, mono: int) -> float | None:
        """Seconds until the oldest pending record is due (0 when some are ready), None if idle."""
        if self.ready:
            return 0.0
        due = min((r.due_ns for r in self.deferred.values()), default=None)
        for rec in self.pending.values():
            due = rec.due_ns if due is None else min(due, rec.due_ns)
            break
        return None if due is None else max(0.0, (due - mono) / 1e9)

    def due(self, mono: int, everything: bool = False) -> list[Record]:
        """Records whose window is over (all of them when ``everything``), after the rate limit."""
        out: list[Record] = []
        if self.deferred:  # first: older than anything pending for the same path
            for path in [p for p, r in self.deferred.items() if everything or r.due_ns <= mono]:
                out.append(self.deferred.pop(path))
        out += self.ready
        self.ready = []
        while self.pending:
            path, rec = next(iter(self.pending.items()))
            if not everything and rec.due_ns > mono:
                break
            del self.pending[path]
            out.append(rec)
        return [r for r in out if self._admit(r, mono, everything)]

    def _admit(self, rec: Record, mono: int, everything: bool = False) -> bool:
        st = self.rate.get(rec.path)
        if st is None:
            if len(self.rate) >= self.max_rate_paths:
                self._trim(mono)
            st = self.rate[rec.path] = [mono, 0]
        elif mono - st[0] >= _MINUTE_NS:
            st[0], st[1] = mono, 0
        if rec.dropped_before or everything:  # a deferred record whose minute is over, or the last flush
            st[1] += 1
            return True
        if st[1] >= self.rate_per_min:
            self.rate_limited += 1
            self._defer(rec, st[0] + _MINUTE_NS)
            return False
        st[1] += 1
        return True

    def _defer(self, rec: Record, due_ns: int) -> None:
        held = self.deferred.get(rec.path)
        if held is None:
            rec.due_ns = due_ns
            rec.dropped_before = rec.count
            self.deferred[rec.path] = rec
            return
        for a in rec.actions:
            held.add(a, rec.last_ts, 0)
        held.count += rec.count
        held.dropped_before = held.count
        held.pid = rec.pid  # the last writer
        held.is_dir = rec.is_dir
        held.replaced = held.replaced or rec.replaced
        if rec.old_path is not None:
            held.old_path = rec.old_path

    def _trim(self, mono: int) -> None:
        """Forget paths idle for a minute with nothing owed; if that is not enough, the oldest half."""
        idle = [p for p, st in self.rate.items() if mono - st[0] >= _MINUTE_NS and p not in self.deferred]
        for p in idle:
            del self.rate[p]
        if len(self.rate) >= self.max_rate_paths:
            for p in list(self.rate)[: len(self.rate) // 2]:
                del self.rate[p]
