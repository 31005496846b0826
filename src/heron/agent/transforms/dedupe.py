"""De-duplication: identical execs in a time window become one record with a count.

"Identical" means same exe, argv, cwd, user, container and parent process. Events are held in
arrival order for ``window_s`` and released oldest first, so the stream keeps its order (an exit
never overtakes its exec). A repeat inside the window is folded into the held record:
``count`` rises and ``first_ts``/``last_ts`` bound the folded execs. The held set is bounded:
past ``max_entries`` the oldest are released early rather than growing memory.
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
        self.held: deque[tuple[int, Event, DedupeKey | None]] = deque()  # (arrival ns, event, key)
        self.index: dict[DedupeKey, ProcessExec] = {}
        self.folded = 0

    def push(self, events: Sequence[Event], now_ns: int) -> list[Event]:
        """Take new events; return those whose window has passed."""
        if self.window_ns == 0:
            return list(events)
        for ev in events:
            # The start-up snapshot lists what runs, one record per process: never folded.
            if isinstance(ev, ProcessExec) and ev.source != SNAPSHOT:
                k = exec_key(ev)
                held = self.index.get(k)
                if held is not None:
                    if held.count == 1:
                        held.first_ts = held.ts
                    held.count += ev.count
                    held.last_ts = max(held.last_ts, ev.last_ts or ev.ts)
                    self.folded += 1
                    continue
                self.index[k] = ev
                self.held.append((now_ns, ev, k))
            else:
                self.held.append((now_ns, ev, None))
        return self.release(now_ns)

    def release(self, now_ns: int, everything: bool = False) -> list[Event]:
        out: list[Event] = []
        cutoff = now_ns - self.window_ns
        held = self.held
        while held and (everything or held[0][0] <= cutoff or len(held) > self.max_entries):
            _, ev, k = held.popleft()
            if k is not None:
                self.index.pop(k, None)
            out.append(ev)
        return out

    def __len__(self) -> int:
        return len(self.held)
