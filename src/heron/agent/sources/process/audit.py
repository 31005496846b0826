"""Process collection from kernel audit: the agent is the audit daemon (no auditd).

Rules (exit filter, execve/execveat, key "heron") make the kernel write, per successful exec,
SYSCALL + EXECVE (+ CWD, PATH, PROCTITLE) records sharing one serial and closed by EOE. The
argv comes from the kernel itself, so unlike /proc reads it is never lost to a fast exit. What
audit lacks: the start time (read from /proc/PID/stat at once; ``start_unknown`` when gone) and
exits, which come from the process connector opened alongside. Exits are held ~50 ms so the
exec of the same process, which audit delivers from a kernel thread, is emitted first.

``snapshot`` opens the audit session and the connector (``start``) before it reads /proc, so an
exec between the snapshot and ``run`` waits in the sockets (the 32 MiB receive buffer, then the
kernel's backlog) instead of being missed; the gap is meant to be short.

The session restores the audit state it found (rules, enabled flag, backlog limit, daemon pid)
when ``run`` returns, when it raises, on ``close`` (a source whose ``run`` never comes) and at
interpreter exit.
"""

from __future__ import annotations

import contextlib
import os
import select
import struct
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import ClassVar

from heron.agent.host import Host
from heron.agent.linux import audit
from heron.agent.linux.caps import has_cap
from heron.agent.linux.netlink import NLMSG_HDRLEN, NetlinkOverrun, parse
from heron.agent.linux.proc_connector import Exec, Exit, Fork, ProcConnector, parse_events
from heron.agent.linux.procfs import ARGV_MAX_ITEMS, ProcessGone, ProcFS, decode
from heron.agent.sources.base import Coalescer, ProbeResult, SourceContext
from heron.agent.sources.process.proc_connector import ExitConverter, KnownProcesses, wall_offset_ns
from heron.agent.sources.process.procfs import snapshot
from heron.schema.events import Event, Process, ProcessExec, ProcessExit, process_key

RULE_KEY = "heron"
ARGV_MAX_BYTES = 256 * 1024
_EXEC_PARTS = frozenset({audit.AUDIT_SYSCALL, audit.AUDIT_EXECVE, audit.AUDIT_CWD, audit.AUDIT_PATH,
                         audit.AUDIT_PROCTITLE, 1321})  # 1321: BPRM_FCAPS
_EXEC_SYSCALLS = frozenset({59, 322, 11, 358, 221, 281, 387})
_PROCTITLE_MAX = 128
_EXCLUDED = (audit.AUDIT_PATH, audit.AUDIT_PROCTITLE)
_LEN_TYPE = struct.Struct("=IH")
_EXIT_HOLD_NS = 50_000_000
_STATUS_EVERY_S = 2.0


@dataclass
class _Pending:
    first_seen: float
    records: list[audit.Record] = field(default_factory=list)


class ExecAssembler:
    """Audit records -> (ts_ns, Process without start time/key), grouped by serial. Pure: no I/O."""

    def __init__(self, key: str = RULE_KEY, argv_max_bytes: int = ARGV_MAX_BYTES,
                 timeout_s: float = 2.0, max_pending: int = 4096) -> None:
        self.key = key.encode()
        self.argv_max = argv_max_bytes
        self.timeout = timeout_s
        self.max_pending = max_pending
        self.pending: OrderedDict[int, _Pending] = OrderedDict()
        self.received = 0
        self.parse_errors = 0
        self.incomplete = 0

    def add(self, msg_type: int, text: bytes, now: float) -> tuple[int, Process] | None:
        self.received += 1
        if msg_type != audit.AUDIT_EOE and msg_type not in _EXEC_PARTS:
            return None
        rec = audit.parse_record(msg_type, text.rstrip(b"\0\n"))
        if rec is None:
            self.parse_errors += 1
            return None
        if msg_type == audit.AUDIT_EOE:
            pend = self.pending.pop(rec.serial, None)
            return self._finish(pend.records) if pend else None
        pend = self.pending.get(rec.serial)
        if pend is None:
            if len(self.pending) >= self.max_pending:  # hostile or lost EOEs: bound the memory
                self.incomplete += 1
                self.pending.popitem(last=False)  # the oldest; O(1), unlike next(iter(dict))
            pend = self.pending[rec.serial] = _Pending(now)
        pend.records.append(rec)
        return None

    def expire(self, now: float, everything: bool = False) -> list[tuple[int, Process]]:
        """Record sets whose EOE never came (lost or cut): finish them as they are, counted."""
        out = []
        for serial in [s for s, p in self.pending.items() if everything or now - p.first_seen > self.timeout]:
            self.incomplete += 1
            done = self._finish(self.pending.pop(serial).records)
            if done is not None:
                out.append(done)
        return out

    def _finish(self, records: list[audit.Record]) -> tuple[int, Process] | None:
        sc = next((r for r in records if r.type == audit.AUDIT_SYSCALL), None)
        if sc is None:
            self.incomplete += 1
            return None
        f = sc.fields
        if f.get("success") != "yes" or audit.number(f.get("syscall")) not in _EXEC_SYSCALLS:
            return None
        try:
            if audit.untrusted(f.get("key")) != self.key:
                return None  # someone else's rule
            comm = decode(audit.untrusted(f.get("comm")) or b"")
            exe = decode(audit.untrusted(f.get("exe")) or b"")
        except ValueError:
            self.parse_errors += 1
            return None
        auid = audit.number(f.get("auid"))
        proc = Process(
            key="", pid=audit.number(f.get("pid"), 0), ppid=audit.number(f.get("ppid"), 0),
            comm=comm, exe=exe,
            uid=audit.number(f.get("uid")), gid=audit.number(f.get("gid")),
            euid=audit.number(f.get("euid")), egid=audit.number(f.get("egid")),
            auid=None if auid in (-1, audit.UNSET_ID) else auid,
        )
        execve: dict[str, str] = {}
        for r in records:
            if r.type == audit.AUDIT_EXECVE:
                execve.update(r.fields)
            elif r.type == audit.AUDIT_CWD:
                proc.cwd = self._text(r.fields.get("cwd"))
        if execve:
            proc.argv, proc.argv_truncated = self._argv(execve)
        else:
            title = next((r for r in records if r.type == audit.AUDIT_PROCTITLE), None)
            raw = self._bytes(title.fields.get("proctitle")) if title else None
            if raw is not None:
                proc.argv = [decode(a) for a in raw.split(b"\0")]
                proc.argv_truncated = len(raw) >= _PROCTITLE_MAX
            else:
                proc.argv_truncated = True
        return sc.ts_ns, proc

    def _bytes(self, raw: str | None) -> bytes | None:
        try:
            return audit.untrusted(raw)
        except ValueError:
            self.parse_errors += 1
            return None

    def _text(self, raw: str | None) -> str | None:
        b = self._bytes(raw)
        return None if b is None else decode(b)

    def _argv(self, f: dict[str, str]) -> tuple[list[str], bool]:
        """EXECVE fields -> argv. Long args come as aN_len + aN[0], aN[1]...; a missing or bad
        piece ends the argv there (truncated), so a hostile argc cannot make us loop."""
        argc = audit.number(f.get("argc"))
        if argc < 0:
            self.parse_errors += 1
            return [], True
        argv: list[str] = []
        total = 0
        for i in range(argc):
            whole = f.get(f"a{i}")
            if whole is not None:
                arg = self._bytes(whole)
            elif f"a{i}_len" in f:
                arg = self._chunks(f, i)
            else:
                arg = None
            if arg is None:
                self.parse_errors += 1
                return argv, True
            total += len(arg) + 1
            if total > self.argv_max or len(argv) >= ARGV_MAX_ITEMS:
                return argv, True
            argv.append(decode(arg))
        return argv, False

    def _chunks(self, f: dict[str, str], i: int) -> bytes | None:
        """aN[0], aN[1]... up to aN_len characters of record text (hex counts 2 per byte)."""
        want = audit.number(f.get(f"a{i}_len"))
        parts: list[bytes] = []
        text_len, n = 0, 0
        while text_len < want:
            raw = f.get(f"a{i}[{n}]")
            piece = self._bytes(raw)
            if raw is None or not piece:
                return None
            parts.append(piece)
            text_len += len(raw) - 2 if raw.startswith('"') else len(raw)
            n += 1
        return b"".join(parts) if text_len == want else None


class AuditProcessSource:
    capability: ClassVar[str] = "process"
    mechanism: ClassVar[str] = "audit"

    @classmethod
    def probe(cls, host: Host) -> ProbeResult:
        if os.geteuid() != 0 and not has_cap("CAP_AUDIT_CONTROL"):
            return ProbeResult.no("needs root or CAP_AUDIT_CONTROL")
        try:
            ctl = audit.AuditControl()
        except OSError as e:
            return ProbeResult.no(f"audit netlink socket does not open: {e}")
        try:
            why = audit.owner(ctl.status(), host.proc_root)
        except OSError as e:
            return ProbeResult.no(f"audit status unreadable: {e}")
        finally:
            ctl.close()
        if why:
            return ProbeResult.no(why)
        return ProbeResult.yes("agent becomes the audit daemon; exits from the process connector")

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        self.name = "process.audit"
        self.procfs = ProcFS(ctx.host.proc_root)
        self.boot_id = ctx.host.boot_id
        self.known = KnownProcesses(self.procfs, ctx.host.clk_tck)
        self.exits = ExitConverter(self.known, self.boot_id, ctx.host.clk_tck, self.name)
        self.assembler = ExecAssembler(argv_max_bytes=int(ctx.options.get("argv_max_bytes", ARGV_MAX_BYTES)))
        self._held_exits: deque[tuple[int, ProcessExit]] = deque()  # (monotonic ns received, exit)
        self.out = Coalescer(ctx.emit)
        self._reported = {"received": 0, "parse_errors": 0, "incomplete": 0, "start_unknown": 0,
                          "start_estimated": 0}
        self._lost_base: int | None = None
        # Off by default: a wait lets short-lived processes vanish before /proc is read, so
        # their cgroup is lost and their start time estimated (see batch_ms in the report).
        self.batch_s = float(ctx.options.get("batch_ms", 0)) / 1000
        self._session: audit.AuditSession | None = None
        self._conn: ProcConnector | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Becomes the audit daemon with our rules and opens the connector (idempotent)."""
        with self._lock:
            if self._session is not None:
                return
            # PATH and PROCTITLE would be half of the records per exec: SYSCALL has exe=, EXECVE
            # the argv. Excluded in the kernel, they cost neither it nor us anything.
            session = audit.AuditSession(audit.exec_rules(RULE_KEY) + audit.exclude_rules(_EXCLUDED))
            self._lost_base = session.before.lost
            try:
                self._conn = ProcConnector()
            except OSError as e:
                self.ctx.health.note(f"{self.name}: no process connector, exits not collected: {e}")
            self._session = session

    def close(self) -> None:
        """Closes the sockets and restores the audit state (idempotent): for a source whose ``run``
        is never called."""
        with self._lock:
            session, self._session = self._session, None
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        if session is not None:
            for problem in session.close():
                self.ctx.health.note(f"{self.name}: cleanup: {problem}")

    def snapshot(self) -> list[Process]:
        # Subscribe first: what execs during or after the /proc walk is queued.
        # If the walk fails, the runtime calls close() (the Source contract), as for every source.
        self.start()
        procs = snapshot(self.procfs, self.boot_id)
        self.known.seed(procs)
        return procs

    def run(self, stop: threading.Event) -> None:
        try:
            self.start()
            session, conn = self._session, self._conn
            assert session is not None and session.records is not None
            next_status = time.monotonic() + _STATUS_EVERY_S
            while not stop.is_set():
                due = self.out.due_in(time.monotonic_ns())
                timeout = 0.05 if self._held_exits else 0.2
                if self._step(session, conn, timeout if due is None else max(min(due, timeout), 0.001)) \
                        and self.batch_s:
                    # A burst costs a few wake-ups, not one per exec: let records queue up.
                    stop.wait(self.batch_s)
                if self.out.due_in(time.monotonic_ns()) == 0:
                    self.out.flush()
                if time.monotonic() >= next_status:
                    next_status = time.monotonic() + _STATUS_EVERY_S
                    self._count_lost(session)
            self._step(session, conn, 0, final=True)
            self.out.flush()
            self._count_lost(session)
        finally:
            self.close()

    def _step(self, session: audit.AuditSession, conn: ProcConnector | None, timeout: float,
              final: bool = False) -> bool:
        """One read of both sockets; True if anything was read."""
        assert session.records is not None
        fds = [session.records.sock] + ([conn.nl.sock] if conn else [])
        if timeout:
            select.select(fds, [], [], timeout)
        out: list[Event] = []
        # Connector first: a fork that announces a reused pid is queued before audit writes the
        # exec record of the new process, so the cache never lends it the old identity.
        received = self.assembler.received
        if conn is not None:
            self._read_connector(conn)
        self._read_audit(session, out)
        now = time.monotonic_ns()
        held = self._held_exits  # in arrival order: release from the front
        while held and (final or now - held[0][0] >= _EXIT_HOLD_NS):
            out.append(held.popleft()[1])
        self._report()
        if out:
            self.out.add(out, now)
        return bool(out) or self.assembler.received != received

    def _read_connector(self, conn: ProcConnector) -> None:
        try:
            raw = conn.recv_many(0)
        except NetlinkOverrun:
            self.ctx.health.add(f"{self.name}.exits_lost")
            self.known.lost_events()
            return
        events, bad = parse_events(raw)
        self.assembler.parse_errors += bad
        offset, now = wall_offset_ns(), time.monotonic_ns()
        for ev in events:
            if isinstance(ev, Fork):
                self.known.forked(ev)
            elif isinstance(ev, Exec):
                # Audit delivers the exec later from a kernel thread: take the start time now,
                # while the process most likely still exists.
                self.known.start_ticks(ev.tgid)
            elif isinstance(ev, Exit):
                ex = self.exits.convert(ev, offset)
                if ex is not None:
                    self._held_exits.append((now, ex))

    def _read_audit(self, session: audit.AuditSession, out: list[Event], limit: int = 8192) -> None:
        assert session.records is not None
        nl = session.records
        buf, view, add = nl.buf, memoryview(nl.buf), self.assembler.add
        done: list[tuple[int, Process]] = []
        now = time.monotonic()
        for _ in range(limit):
            try:
                n = nl.recv_raw()
            except NetlinkOverrun:
                self.ctx.health.add(f"{self.name}.lost")
                continue
            if not n:
                break
            # One record per datagram, nlmsg_len counting the payload only: slice it in place.
            length, mtype = _LEN_TYPE.unpack_from(buf) if n >= NLMSG_HDRLEN else (0, 0)
            if n >= NLMSG_HDRLEN and length + NLMSG_HDRLEN == n:
                got = add(mtype, bytes(view[NLMSG_HDRLEN:n]), now)
                if got is not None:
                    done.append(got)
                continue
            msgs, bad = parse(bytes(buf[:n]), header_excluded_len=True)  # anything else: the general way
            self.assembler.parse_errors += bad
            for m in msgs:
                got = add(m.type, m.payload, now)
                if got is not None:
                    done.append(got)
        done.extend(self.assembler.expire(now))
        for ts, proc in done:
            self._complete(proc)
            out.append(ProcessExec(ts=ts, source=self.name, process=proc))

    def _complete(self, proc: Process) -> None:
        """Start time (cached, else /proc/PID/stat now), key, cgroup, parent key."""
        start = self.known.start_ticks(proc.pid)
        if start is None:
            self.exits.start_unknown += 1
            start = 0
        else:
            with contextlib.suppress(ProcessGone, OSError):
                proc.cgroup = self.procfs.cgroup(proc.pid)
            self.known.remember(proc.pid, start, proc.exe, proc.comm)
        proc.start_ticks = start
        proc.key = process_key(self.boot_id, proc.pid, start)
        parent = self.known.lookup(proc.ppid) if proc.ppid else None
        if parent is not None and parent[0]:
            proc.parent_key = process_key(self.boot_id, proc.ppid, parent[0])

    def _report(self) -> None:
        now = {"received": self.assembler.received, "parse_errors": self.assembler.parse_errors,
               "incomplete": self.assembler.incomplete, "start_unknown": self.exits.start_unknown,
               "start_estimated": self.known.estimated}
        for name, value in now.items():
            if value != self._reported[name]:
                self.ctx.health.add(f"{self.name}.{name}", value - self._reported[name])
                self._reported[name] = value

    def _count_lost(self, session: audit.AuditSession) -> None:
        try:
            lost = session.ctl.status().lost
        except OSError:
            return
        if self._lost_base is not None and lost > self._lost_base:
            self.ctx.health.add(f"{self.name}.lost", lost - self._lost_base)
        self._lost_base = lost
