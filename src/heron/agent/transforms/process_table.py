"""The agent's process table: pid -> what enrichment needs, updated from events.

Filled once from the source's snapshot, then kept current by exec and exit events, so
enrichment never re-reads /proc on the hot path. Exited processes stay in a bounded
"recently exited" ring, because a child's exec often arrives after its parent's exit. Memory is
bounded by live processes + that ring; ``sweep`` drops entries whose pid no longer exists, which
bounds growth when a collector misses exits (procfs polling, lost events).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

from heron.schema.events import Ancestor, Process


@dataclass(slots=True)
class Entry:
    key: str
    pid: int
    ppid: int
    start_ticks: int
    exe: str
    comm: str
    uid: int
    container_id: str | None
    parent_key: str | None
    ancestors: list[Ancestor]
    auid: int | None = None


class ProcessTable:
    def __init__(self, ancestors_max: int = 16, recent_max: int = 4096) -> None:
        self.live: dict[int, Entry] = {}
        self.by_key: dict[str, Entry] = {}
        self.recent: OrderedDict[str, Entry] = OrderedDict()
        # pid -> the last process with that pid that exited: a file or network event read after
        # its writer exited (the exit came first through another source) still finds it.
        self.recent_pid: OrderedDict[int, Entry] = OrderedDict()
        self.ancestors_max = ancestors_max
        self.recent_max = recent_max

    def __len__(self) -> int:
        return len(self.live)

    def lookup_pid(self, pid: int) -> Entry | None:
        return self.live.get(pid)

    def lookup_key(self, key: str) -> Entry | None:
        return self.by_key.get(key) or self.recent.get(key)

    def resolve(self, pid: int, key: str = "") -> Entry | None:
        """The process behind an event that names a pid (and maybe its key): live first, then
        recently exited. With a key, only that exact process is returned (pid reuse)."""
        if key:
            return self.lookup_key(key)
        return self.live.get(pid) or self.recent_pid.get(pid)

    def chain_for(self, parent: Entry | None) -> list[Ancestor]:
        """Ancestors of a child of ``parent``: the parent first, stopping at a container boundary."""
        if parent is None:
            return []
        chain = [Ancestor(parent.pid, parent.key, parent.exe)]
        chain.extend(parent.ancestors[: self.ancestors_max - 1])
        return chain

    def add(self, p: Process) -> Entry:
        """Record a process (from exec or snapshot); fills p.parent_key/ancestors when missing."""
        parent = self.lookup_key(p.parent_key) if p.parent_key else self.live.get(p.ppid)
        if parent is not None and p.parent_key is None:
            p.parent_key = parent.key
        # The chain stops where the container boundary is crossed: a process in a container
        # is described up to the container's init, the host side is the runtime's business.
        if not p.ancestors and parent is not None and p.container_id == parent.container_id:
            p.ancestors = self.chain_for(parent)
        entry = Entry(
            p.key, p.pid, p.ppid, p.start_ticks, p.exe, p.comm, p.uid, p.container_id, p.parent_key,
            p.ancestors, p.auid,
        )
        old = self.live.get(p.pid)
        if old is not None and old.key != p.key:
            self._retire(old)
        self.live[p.pid] = entry
        self.by_key[p.key] = entry
        return entry

    def remove(self, pid: int, key: str | None = None) -> Entry | None:
        entry = self.live.get(pid)
        if entry is None or (key is not None and entry.key != key):
            return self.recent.get(key) if key else None
        del self.live[pid]
        self._retire(entry)
        return entry

    def _retire(self, entry: Entry) -> None:
        self.by_key.pop(entry.key, None)
        self.recent[entry.key] = entry
        self.recent_pid[entry.pid] = entry
        self.recent_pid.move_to_end(entry.pid)
        while len(self.recent) > self.recent_max:
            self.recent.popitem(last=False)
        while len(self.recent_pid) > self.recent_max:
            self.recent_pid.popitem(last=False)

    def sweep(self, proc_root: str = "/proc") -> int:
        """Drop entries whose pid is gone (missed exits). One listdir, no per-entry syscalls."""
        try:
            alive = {int(n) for n in os.listdir(proc_root) if n.isdigit()}
        except OSError:
            return 0
        gone = [pid for pid in self.live if pid not in alive]
        for pid in gone:
            self.remove(pid)
        return len(gone)
