"""Process collection from the netlink process connector, with /proc reads at exec.

The connector says only "pid P executed"; everything else is read from /proc right away, and a
process that exits before we read it keeps its pid and parent but loses its argv
(``argv_lost``). To keep that race small, every exec of a burst has its cmdline read first,
before any other work. Exits come with their status, so exit codes and signals are exact.

``KnownProcesses`` (shared with the audit source, which takes exits from here too) remembers
what exits need: start time, exe and comm per pid, and parent per forked child. A fork of a new
process forgets whatever was remembered for its pid, so a reused pid never inherits an identity.

The connector socket is opened by ``snapshot`` (through ``start``) before /proc is read, so a
process that starts between the snapshot and ``run`` is queued in the socket, not missed.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections import OrderedDict
from typing import ClassVar, TypeVar

from heron.agent.host import Host
from heron.agent.linux.netlink import NetlinkOverrun
from heron.agent.linux.proc_connector import Exec, Exit, Fork, ProcConnector, ProcEvent, parse_event
from heron.agent.linux.proc_connector import probe as probe_connector
from heron.agent.linux.procfs import ARGV_MAX_BYTES, ProcessGone, ProcFS, split_argv
from heron.agent.sources.base import Coalescer, ProbeResult, SourceContext
from heron.agent.sources.process.procfs import snapshot
from heron.schema.events import Event, Process, ProcessExec, ProcessExit, process_key

_MAX_KNOWN = 32768
_MAX_RECENT = 4096


_V = TypeVar("_V")


def _put(d: OrderedDict[int, _V], key: int, value: _V, cap: int) -> None:
    d[key] = value
    d.move_to_end(key)  # a re-insert counts as new
    if len(d) > cap:
        # O(1); a plain dict's next(iter(d)) walks the holes deletions leave at its front.
        d.popitem(last=False)


class KnownProcesses:
    """pid -> (start_ticks, exe, comm) and child -> parent, bounded (oldest forgotten first)."""

    def __init__(self, procfs: ProcFS, clk_tck: int = 100, cap: int = _MAX_KNOWN) -> None:
        self.procfs = procfs
        self.clk_tck = clk_tck
        self.cap = cap
        self.info: OrderedDict[int, tuple[int, str, str]] = OrderedDict()
        self.recent_exits: OrderedDict[int, tuple[int, str, str]] = OrderedDict()
        self.parents: OrderedDict[int, int] = OrderedDict()
        self.fork_ticks: OrderedDict[int, int] = OrderedDict()
        self.estimated = 0  # start times taken from the fork event because /proc was too late

    def seed(self, procs: list[Process]) -> None:
        for p in procs:
            _put(self.info, p.pid, (p.start_ticks, p.exe, p.comm), self.cap)

    def remember(self, pid: int, start_ticks: int, exe: str, comm: str) -> None:
        _put(self.info, pid, (start_ticks, exe, comm), self.cap)

    def forked(self, ev: Fork) -> None:
        if ev.child_pid != ev.child_tgid:
            return  # a new thread, not a new process
        self.info.pop(ev.child_tgid, None)
        self.recent_exits.pop(ev.child_tgid, None)
        _put(self.parents, ev.child_tgid, ev.parent_tgid, self.cap)
        # The kernel stamps the child's start (boot clock) microseconds before this event
        # (monotonic clock): the same tick but for a boundary falling in between (~0.1%).
        boot_ns = ev.ts_ns + time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.monotonic_ns()
        _put(self.fork_ticks, ev.child_tgid, boot_ns * self.clk_tck // 1_000_000_000, self.cap)

    def lookup(self, pid: int) -> tuple[int, str, str] | None:
        return self.info.get(pid) or self.recent_exits.get(pid)

    def start_ticks(self, pid: int) -> int | None:
        """Remembered start time, else read now (a zombie still has its stat), else the fork
        event's estimate; None when none of these knows."""
        known = self.lookup(pid)
        if known is not None:
            return known[0]
        try:
            st = self.procfs.stat(pid)
        except (ProcessGone, OSError, ValueError, IndexError):
            return self.estimate(pid)
        self.remember(pid, st.start_ticks, "", st.comm)
        return st.start_ticks

    def estimate(self, pid: int) -> int | None:
        est = self.fork_ticks.get(pid)
        if est is not None:
            self.estimated += 1
            self.remember(pid, est, "", "")
        return est

    def exited(self, pid: int) -> tuple[int, str, str] | None:
        """Forget a process that exited; keep its identity briefly for late exec records."""
        info = self.info.pop(pid, None)
        self.parents.pop(pid, None)
        self.fork_ticks.pop(pid, None)
        if info is not None:
            _put(self.recent_exits, pid, info, _MAX_RECENT)
        return info

    def lost_events(self) -> None:
        """After an overrun a fork may have been missed: cached identities could be stale."""
        self.info.clear()
        self.recent_exits.clear()
        self.fork_ticks.clear()


class ExitConverter:
    """Connector exit events of thread-group leaders -> ProcessExit."""

    def __init__(self, known: KnownProcesses, boot_id: str, clk_tck: int, source: str) -> None:
        self.known = known
        self.boot_id = boot_id
        self.clk_tck = clk_tck
        self.source = source
        self.start_unknown = 0

    def convert(self, ev: Exit, wall_offset_ns: int) -> ProcessExit | None:
        if ev.pid != ev.tgid:
            return None  # a thread ended, not the process
        start = self.known.start_ticks(ev.tgid)
        info = self.known.exited(ev.tgid)
        runtime: int | None = None
        if start is None:
            self.start_unknown += 1
            start = 0
        else:
            # Both the start time and the event time count from boot (no suspend on servers).
            runtime = max(0, ev.ts_ns - start * 1_000_000_000 // self.clk_tck)
        return ProcessExit(
            ts=ev.ts_ns + wall_offset_ns, source=self.source,
            key=process_key(self.boot_id, ev.tgid, start), pid=ev.tgid,
            exe=info[1] if info else "", comm=info[2] if info else "",
            exit_code=ev.exit_code, signal=ev.signal, runtime_ns=runtime,
        )


def wall_offset_ns() -> int:
    """Add to a CLOCK_MONOTONIC time to get wall-clock time."""
    return time.time_ns() - time.monotonic_ns()


class ProcConnectorProcessSource:
    capability: ClassVar[str] = "process"
    mechanism: ClassVar[str] = "proc_connector"

    @classmethod
    def probe(cls, host: Host) -> ProbeResult:
        why = probe_connector()
        if why:
            return ProbeResult.no(why)
        return ProbeResult.yes("argv read from /proc after exec: lost for very short-lived processes")

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        self.name = "process.proc_connector"
        self.procfs = ProcFS(ctx.host.proc_root)
        self.boot_id = ctx.host.boot_id
        self.known = KnownProcesses(self.procfs, ctx.host.clk_tck)
        self.exits = ExitConverter(self.known, self.boot_id, ctx.host.clk_tck, self.name)
        self.start_unknown = 0
        self._reported: dict[str, int] = {}
        self.out = Coalescer(ctx.emit)
        self._conn: ProcConnector | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Opens the connector socket (idempotent). From then on the kernel queues every event."""
        with self._lock:
            if self._conn is None:
                self._conn = ProcConnector()

    def close(self) -> None:
        """Closes the socket (idempotent): for a source whose ``run`` is never called."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def snapshot(self) -> list[Process]:
        # Subscribe first: what starts during or after the /proc walk is queued.
        # If the walk fails, the runtime calls close() (the Source contract), as for every source.
        self.start()
        procs = snapshot(self.procfs, self.boot_id)
        self.known.seed(procs)
        return procs

    def run(self, stop: threading.Event) -> None:
        try:
            self.start()
            conn = self._conn
            assert conn is not None
            while not stop.is_set():
                due = self.out.due_in(time.monotonic_ns())
                self._step(conn, 0.2 if due is None else max(due, 0.001))
                if self.out.due_in(time.monotonic_ns()) == 0:
                    self.out.flush()
            self._step(conn, 0)  # flush what the kernel already queued
            self.out.flush()
        finally:
            self.close()

    def _step(self, conn: ProcConnector, timeout: float, limit: int = 4096) -> None:
        # Each exec's cmdline is read the moment its datagram is received, before the rest of
        # the burst is drained: every microsecond here is argv saved from a fast exit.
        events: list[ProcEvent] = []
        argvs: dict[int, tuple[list[str], bool] | None] = {}
        bad = 0
        wait: float | None = timeout
        try:
            while len(events) < limit:
                raw = conn.nl.recv(wait)
                wait = 0
                if raw is None:
                    break
                try:
                    ev = parse_event(raw)
                except (ValueError, struct.error):
                    bad += 1
                    continue
                if isinstance(ev, Exec):
                    argvs[len(events)] = self._cmdline(ev.tgid)
                if ev is not None:
                    events.append(ev)
        except NetlinkOverrun:
            self.ctx.health.add(f"{self.name}.lost")
            self.known.lost_events()
        if bad:
            self.ctx.health.add(f"{self.name}.parse_errors", bad)
        if not events:
            return
        self.ctx.health.add(f"{self.name}.received", len(events))
        out = self.handle(events, argvs)
        if out:
            self.out.add(out, time.monotonic_ns())

    def _cmdline(self, pid: int) -> tuple[list[str], bool] | None:
        # os.open/os.read rather than a buffered file: fewer layers between the event and the read.
        try:
            fd = os.open(f"{self.procfs.root}/{pid}/cmdline", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            chunks: list[bytes] = []
            size = 0
            while size <= ARGV_MAX_BYTES:
                chunk = os.read(fd, ARGV_MAX_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        except OSError:
            return None
        finally:
            os.close(fd)
        return split_argv(b"".join(chunks))

    def handle(self, events: list[ProcEvent],
               argvs: dict[int, tuple[list[str], bool] | None] | None = None) -> list[Event]:
        """Events of one burst -> records. ``argvs`` holds cmdlines already read, by index."""
        if argvs is None:
            argvs = {i: self._cmdline(ev.tgid) for i, ev in enumerate(events) if isinstance(ev, Exec)}
        offset = wall_offset_ns()
        out: list[Event] = []
        for i, ev in enumerate(events):
            if isinstance(ev, Fork):
                self.known.forked(ev)
            elif isinstance(ev, Exec):
                out.append(ProcessExec(ts=ev.ts_ns + offset, source=self.name,
                                       process=self._process(ev.tgid, argvs[i])))
            elif isinstance(ev, Exit):
                ex = self.exits.convert(ev, offset)
                if ex is not None:
                    out.append(ex)
        self._report({"start_unknown": self.start_unknown + self.exits.start_unknown,
                      "start_estimated": self.known.estimated})
        return out

    def _report(self, counters: dict[str, int]) -> None:
        for name, value in counters.items():
            if value != self._reported.get(name, 0):
                self.ctx.health.add(f"{self.name}.{name}", value - self._reported.get(name, 0))
                self._reported[name] = value

    def _process(self, pid: int, argv: tuple[list[str], bool] | None) -> Process:
        """What /proc still says about a process that just executed."""
        proc = Process(key="", pid=pid, ppid=self.known.parents.get(pid, 0))
        # A zombie's cmdline reads empty: that is a loss too (the kernel gives every exec an argv[0]).
        if argv is None or not argv[0]:
            self.ctx.health.add(f"{self.name}.argv_lost")
        else:
            proc.argv, proc.argv_truncated = argv
        try:
            st = self.procfs.stat(pid)
            proc.start_ticks, proc.ppid, proc.comm = st.start_ticks, st.ppid, st.comm
            uids, gids = self.procfs.status_ids(pid)
            proc.exe = self.procfs.exe(pid)
            proc.uid, proc.euid = [*uids, -1, -1][:2]
            proc.gid, proc.egid = [*gids, -1, -1][:2]
            proc.auid = self.procfs.loginuid(pid)
            proc.cgroup = self.procfs.cgroup(pid)
        except (ProcessGone, OSError, ValueError, IndexError):
            pass  # gone mid-read: keep what we have
        if not proc.start_ticks:
            proc.start_ticks = self.known.estimate(pid) or 0
        if proc.start_ticks:
            self.known.remember(pid, proc.start_ticks, proc.exe, proc.comm)
        else:
            self.start_unknown += 1
        proc.key = process_key(self.boot_id, pid, proc.start_ticks)
        parent = self.known.lookup(proc.ppid) if proc.ppid else None
        if parent is not None and parent[0]:
            proc.parent_key = process_key(self.boot_id, proc.ppid, parent[0])
        return proc
