"""Enrichment: user names, container identity, parent chain, from caches not syscalls."""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Sequence

from heron.agent.linux.cgroups import container_of
from heron.agent.transforms.process_table import ProcessTable
from heron.schema.events import Event, Process, ProcessExec, ProcessExit


class UserNames:
    """uid -> name, re-read only when /etc/passwd changes (checked at most every 10 s)."""

    def __init__(self, passwd: str = "/etc/passwd") -> None:  # noqa: S107 (a path, not a secret)
        self.passwd = passwd
        self.cache: dict[int, str | None] = {}
        self._mtime = 0.0
        self._checked = 0.0

    def name(self, uid: int | None) -> str | None:
        if uid is None or uid < 0:
            return None
        now = time.monotonic()
        if now - self._checked > 10:
            self._checked = now
            try:
                mtime = os.stat(self.passwd).st_mtime
            except OSError:
                mtime = 0.0
            if mtime != self._mtime:
                self._mtime = mtime
                self.cache.clear()
        if uid not in self.cache:
            try:
                self.cache[uid] = pwd.getpwuid(uid).pw_name
            except (KeyError, OverflowError):
                self.cache[uid] = None
        return self.cache[uid]


class Enricher:
    def __init__(self, table: ProcessTable, users: UserNames | None = None) -> None:
        self.table = table
        self.users = users or UserNames()

    def process(self, p: Process) -> None:
        """Fill what the collector did not: user names, container, parent chain."""
        if p.user is None:
            p.user = self.users.name(p.uid)
        if p.login_user is None and p.auid is not None:
            p.login_user = self.users.name(p.auid)
        if p.cgroup and p.container_id is None:
            ref = container_of(p.cgroup)
            if ref is not None:
                p.container_id = ref.id
                p.container_runtime = ref.runtime
                p.pod_uid = ref.pod_uid
                p.cgroup = ref.path
            elif "\n" in p.cgroup:
                p.cgroup = None  # host process: the raw multi-line text says nothing useful
        self.table.add(p)

    def load_snapshot(self, procs: Sequence[Process]) -> None:
        # Parents first, so children find their parent's chain.
        for p in sorted(procs, key=lambda p: p.start_ticks):
            self.process(p)

    def __call__(self, events: Sequence[Event]) -> None:
        for ev in events:
            if isinstance(ev, ProcessExec):
                self.process(ev.process)
            elif isinstance(ev, ProcessExit):
                entry = self.table.remove(ev.pid, ev.key if ev.key else None)
                if entry is not None:
                    if not ev.exe:
                        ev.exe = entry.exe
                    if not ev.comm:
                        ev.comm = entry.comm
                    if ev.container_id is None:
                        ev.container_id = entry.container_id
