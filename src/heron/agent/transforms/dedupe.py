"""De-duplication: identical execs in a time window become one record with a count.

"Identical" means same exe, argv, cwd, user, container and parent process. The first exec of a
kind goes out at once (alerts on it are not delayed by the window); repeats of it within
``window_s`` of that first one are folded into one record (the first repeat's, with ``count``
and ``first_ts``/``last_ts`` bounding the folded execs) that goes out when the window ends. A
steady stream of identical execs therefore costs two records per window, a single exec one and
no delay. Everything that is not a foldable exec passes at once, in order; only a folded repeat
record goes out after later events (its processes' exits may precede it). The set of windows is
bounded: past ``max_entries`` the oldest end early rather than growing memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

from heron.schema.events import Event, ProcessExec

SNAPSHOT = "process.snapshot"
DedupeKey = tuple[str, tuple[str, ...], str | None, int, str | None, str | None]


def exec_key(ev: ProcessExec) -> DedupeKey:
    p = ev.process
    return (p.exe, tuple(p.argv), p.cwd, p.uid, p.container_id, p.parent_key)


class Deduper:
    def __init__(self, window_s: float = 2.0, max_entries: int = 50_000) -> None:
        self.window_ns = int(window_s * 1e9)
        self.max_entries = max_entries
        self.windows: deque[tuple[int, DedupeKey]] = deque()  # (start ns, key), oldest first
        self.open: set[DedupeKey] = set()  # keys whose window is running
        self.repeats: dict[DedupeKey, ProcessExec] = {}  # the folded repeats of an open window
        self.folded = 0  # execs folded into another record (not sent on their own)

    def push(self, events: Sequence[Event], now_ns: int) -> list[Event]:
        """Take new events; return those to send now (ended windows' repeat records first)."""
        if self.window_ns == 0:
            return list(events)
        out = self.release(now_ns)
        for ev in events:
            # The start-up snapshot lists what runs, one record per process: never folded.
            if isinstance(ev, ProcessExec) and ev.source != SNAPSHOT:
                k = exec_key(ev)
                if k in self.open:
                    held = self.repeats.get(k)
                    if held is None:
                        self.repeats[k] = ev
                    else:
                        if held.count == 1:
                            held.first_ts = held.ts
                        held.count += ev.count
                        held.last_ts = max(held.last_ts, ev.last_ts or ev.ts)
                        self.folded += 1
                    continue
                self.open.add(k)
                self.windows.append((now_ns, k))
                if len(self.windows) > self.max_entries:
                    out += self._end_oldest()
            out.append(ev)
        return out

    def _end_oldest(self) -> list[Event]:
        _, k = self.windows.popleft()
        self.open.discard(k)
        held = self.repeats.pop(k, None)
        return [held] if held is not None else []

    def release(self, now_ns: int, everything: bool = False) -> list[Event]:
        """The repeat records of the windows that have ended (all of them with ``everything``)."""
        out: list[Event] = []
        cutoff = now_ns - self.window_ns
        while self.windows and (everything or self.windows[0][0] <= cutoff):
            out += self._end_oldest()
        return out

    @property
    def pending(self) -> int:
        """Repeat records waiting for their window to end."""
        return len(self.repeats)

    def __len__(self) -> int:
        return len(self.windows)
