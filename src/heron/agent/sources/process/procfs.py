"""Process collection by polling /proc: the last rung of the ladder.

What it misses, plainly: any process that starts and exits between two polls is never seen,
exit codes are unknown (the parent reaps them), argv is whatever the process shows at poll
time (it may have rewritten it), and an exec without fork is seen only when the task name
changes (and only the last of several execs between two polls). It needs nothing but a readable /proc.
"""

from __future__ import annotations

import os
import threading
import time
from typing import ClassVar

from heron.agent.host import Host
from heron.agent.linux.procfs import ProcessGone, ProcFS
from heron.agent.sources.base import ProbeResult, SourceContext
from heron.schema.events import Event, Process, ProcessExec, ProcessExit, process_key


def snapshot(procfs: ProcFS, boot_id: str) -> list[Process]:
    """Every process that exists now (kernel threads included), read from /proc."""
    out: list[Process] = []
    for pid in procfs.pids():
        try:
            out.append(procfs.process(pid, boot_id))
        except (ProcessGone, OSError):
            continue
    return out


class ProcfsProcessSource:
    capability: ClassVar[str] = "process"
    mechanism: ClassVar[str] = "procfs"

    @classmethod
    def probe(cls, host: Host) -> ProbeResult:
        if not os.path.isdir(f"{host.proc_root}/self"):
            return ProbeResult.no(f"{host.proc_root} is not a mounted procfs")
        return ProbeResult.yes("polls /proc: misses processes shorter than the interval, no exit codes")

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        self.procfs = ProcFS(ctx.host.proc_root)
        self.interval = float(ctx.options.get("poll_interval_s", 1.0))
        self.name = "process.procfs"
        # pid -> (start_ticks, exe, comm): what we saw last poll.
        self._known: dict[int, tuple[int, str, str]] = {}

    def snapshot(self) -> list[Process]:
        procs = snapshot(self.procfs, self.ctx.host.boot_id)
        self._known = {p.pid: (p.start_ticks, p.exe, p.comm) for p in procs}
        return procs

    def poll_once(self) -> list[Event]:
        boot_id = self.ctx.host.boot_id
        now = time.time_ns()
        seen: dict[int, tuple[int, str, str]] = {}
        events: list[Event] = []
        for pid in self.procfs.pids():
            try:
                st = self.procfs.stat(pid)
            except (ProcessGone, OSError):
                continue
            old = self._known.get(pid)
            # Same start time and same task name: the same program. An exec without fork keeps
            # the start time but changes the name (two programs with one name are missed).
            if old is not None and old[0] == st.start_ticks and old[2] == st.comm:
                seen[pid] = old
                continue
            try:
                proc = self.procfs.process(pid, boot_id)
            except (ProcessGone, OSError):
                continue
            seen[pid] = (proc.start_ticks, proc.exe, proc.comm)
            events.append(ProcessExec(ts=now, source=self.name, process=proc))
        for pid, (start, exe, comm) in self._known.items():
            if seen.get(pid, (None,))[0] != start:  # an exec keeps its start time: no exit then
                events.append(
                    ProcessExit(ts=now, source=self.name, key=process_key(boot_id, pid, start), pid=pid,
                                exe=exe, comm=comm)
                )
        self._known = seen
        self.ctx.health.add(f"{self.name}.received", len(events))
        return events

    def close(self) -> None:
        pass  # holds nothing between polls

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            events = self.poll_once()
            if events:
                self.ctx.emit(events)
            stop.wait(self.interval)
        events = self.poll_once()
        if events:
            self.ctx.emit(events)
