"""Process execs and exits from eBPF (bpf/process.bpf.c): the first rung of the process ladder.

The kernel writes one record per exec (identity, credentials, cgroup names, exe, argv up to
``abi.ARGV_MAX`` bytes) and one per thread-group exit (wait status, start time) into one ring
buffer; this source maps that buffer, decodes records in place and emits one batch per poll.
Nothing is read from /proc per event: the parent's key comes from the parent's start time that
the kernel reports with the exec.

Options (``ctx.options``): ``exclude_comm`` (list of comm names dropped in the kernel),
``force_raw_tp`` (bool: use the raw_tp programs even where tp_btf works, for tests),
``resolve_relative_exe`` (bool, default True: a relative bprm->filename is joined to
/proc/PID/cwd, one readlink for those rare execs only), ``ring_buffer_bytes`` (power of two:
overrides the object's 8 MiB ring buffer).
"""

from __future__ import annotations

import os
import struct
import threading
import time
from typing import ClassVar

from heron.agent.ebpf import abi
from heron.agent.ebpf.build import unavailable_reason
from heron.agent.ebpf.libbpf import available as libbpf_unavailable
from heron.agent.ebpf.objects import OBJECT, LoadedProcessObject, load, trial_load
from heron.agent.ebpf.ringbuf import RingBuffer
from heron.agent.host import Host
from heron.agent.linux.procfs import ProcessGone, ProcFS, decode, split_argv
from heron.agent.sources.base import ProbeResult, SourceContext
from heron.agent.sources.process.procfs import snapshot as procfs_snapshot
from heron.schema.events import Event, Process, ProcessExec, ProcessExit, process_key

NAME = "process.ebpf"
POLL_TIMEOUT_S = 0.25
# After a drain, let records accumulate this long so a burst costs few wake-ups and big batches.
# 50 ms of the fastest exec storm is a few thousand records: far below the ring's size.
MIN_BATCH_INTERVAL_S = 0.05
# Kernel-side counters are read this often (a few map lookups), not every poll cycle.
STATS_INTERVAL_S = 1.0
MAX_BATCH = 4096
_NS = 1_000_000_000
_EXEC_SIZE = abi.EXEC.fmt.size
# What a malformed record can raise while decoding: counted as decode_errors, never fatal.
DECODE_ERRORS = (struct.error, ValueError, IndexError, TypeError, OverflowError)


def boottime_offset_ns() -> int:
    """Wall clock minus CLOCK_BOOTTIME, measured once: bpf_ktime_get_boot_ns() + this = wall ns."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def _cstr(raw: bytes) -> str:
    return decode(raw.split(b"\0", 1)[0])


class EbpfProcessSource:
    capability: ClassVar[str] = "process"
    mechanism: ClassVar[str] = "ebpf"

    @classmethod
    def probe(cls, host: Host) -> ProbeResult:
        reason = unavailable_reason(OBJECT)
        if reason:
            return ProbeResult.no(reason)
        reason = libbpf_unavailable()
        if reason:
            return ProbeResult.no(reason)
        if not os.path.exists("/sys/kernel/btf/vmlinux"):
            return ProbeResult.no("kernel BTF /sys/kernel/btf/vmlinux missing (CONFIG_DEBUG_INFO_BTF)")
        reason = trial_load()
        if reason:
            return ProbeResult.no(f"kernel refused the process programs: {reason}")
        return ProbeResult.yes("tp_btf/raw_tp sched_process_exec/exit into a BPF ring buffer")

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        self.name = NAME
        self.boot_id = ctx.host.boot_id
        self.clk_tck = ctx.host.clk_tck
        self.exclude_comm: list[str] = list(ctx.options.get("exclude_comm", []))
        self.force_raw_tp = bool(ctx.options.get("force_raw_tp", False))
        self.resolve_relative_exe = bool(ctx.options.get("resolve_relative_exe", True))
        ring = ctx.options.get("ring_buffer_bytes")
        self.ring_bytes = int(ring) if ring else None
        self.procfs = ProcFS(ctx.host.proc_root)
        self.loaded: LoadedProcessObject | None = None
        self._ring: RingBuffer | None = None
        self._offset_ns = 0
        self._kernel_stats = [0] * abi.STAT_COUNT
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Loads and attaches the programs (idempotent). Called by snapshot() so that nothing
        that starts between the snapshot and the stream is missed."""
        with self._lock:
            if self.loaded is not None:
                return
            loaded = load(self.force_raw_tp, self.exclude_comm, self.ring_bytes)
            try:
                fd, size = loaded.events_map()
                ring = RingBuffer(fd, size)
                self._offset_ns = boottime_offset_ns()
                loaded.attach()
            except BaseException:
                loaded.close()
                raise
            self.loaded, self._ring = loaded, ring
            for counter in ("received", "lost", "decode_errors"):
                self.ctx.health.add(f"{self.name}.{counter}", 0)
            for hook, why in loaded.fallback_reasons.items():
                self.ctx.health.note(f"{self.name}: {hook} hook uses raw_tp ({why})")

    def close(self) -> None:
        """Detaches and unloads everything (idempotent)."""
        with self._lock:
            ring, self._ring = self._ring, None
            loaded, self.loaded = self.loaded, None
        if ring is not None:
            ring.close()
        if loaded is not None:
            loaded.close()

    def snapshot(self) -> list[Process]:
        self.start()
        return procfs_snapshot(self.procfs, self.boot_id)

    def run(self, stop: threading.Event) -> None:
        self.start()
        ring = self._ring
        assert ring is not None
        try:
            next_stats = 0.0
            while not stop.is_set():
                if ring.wait(POLL_TIMEOUT_S) and self.poll_once():
                    stop.wait(MIN_BATCH_INTERVAL_S)
                now = time.monotonic()
                if now >= next_stats:
                    next_stats = now + STATS_INTERVAL_S
                    self.read_kernel_stats()
            # Detach first so nothing more arrives, then drain everything the kernel wrote.
            if self.loaded is not None:
                self.loaded.detach()
            while self.poll_once() >= MAX_BATCH:
                pass
            self.read_kernel_stats()
        finally:
            self.close()

    # -- the hot path ----------------------------------------------------------------------

    def poll_once(self) -> int:
        """Decodes up to MAX_BATCH records and emits them as one batch; returns how many."""
        ring = self._ring
        if ring is None:
            return 0
        events: list[Event] = []
        errors = 0
        decode_exec, decode_exit = self.decode_exec, self.decode_exit
        for rec in ring.records(MAX_BATCH):
            try:
                kind = rec[0]
                if kind == abi.EV_EXEC:
                    events.append(decode_exec(rec))
                elif kind == abi.EV_EXIT:
                    events.append(decode_exit(rec))
                else:
                    errors += 1
            except DECODE_ERRORS:
                errors += 1
        n = len(events) + errors
        if n:
            health = self.ctx.health
            health.add(f"{self.name}.received", n)
            if errors:
                health.add(f"{self.name}.decode_errors", errors)
        if events:
            self.ctx.emit(events)
        return n

    def decode_exec(self, raw: bytes) -> ProcessExec:
        (_kind, flags, ts, start, pstart, cgroup_id, pid, tid, ppid, uid, gid, euid, egid, loginuid,
         fn_len, c2_leaf, c2_parent, c1_leaf, c1_parent, argv_len, _pad, comm) = abi.EXEC.fmt.unpack_from(raw)
        off = _EXEC_SIZE
        exe = decode(raw[off : off + fn_len])
        off += fn_len + 1
        names = []
        for n in (c2_leaf, c2_parent, c1_leaf, c1_parent):
            names.append(raw[off : off + n])
            off += n + 1
        if len(raw) < off + argv_len:
            raise ValueError("exec record shorter than its lengths")
        argv, _ = split_argv(raw[off : off + argv_len], abi.ARGV_MAX)
        # The v2 names when the process is below the v2 root, else the v1 (pids/memory) ones.
        leaf, parent = (names[0], names[1]) if names[0] else (names[2], names[3])
        cgroup = decode(parent + b"/" + leaf if parent else leaf) if leaf else None
        if cgroup and flags & abi.F_USER_CGROUP:
            # Below a user manager the names are the user's: say so, so no container is inferred.
            cgroup = "user@0.service/" + cgroup
        if exe and exe[0] != "/" and self.resolve_relative_exe:
            exe = self._resolve(pid, exe)
        tck = self.clk_tck
        start_ticks = start * tck // _NS
        process = Process(
            key=process_key(self.boot_id, pid, start_ticks),
            pid=pid,
            tid=tid if tid != pid else 0,
            ppid=ppid,
            start_ticks=start_ticks,
            exe=exe,
            comm=_cstr(comm),
            argv=argv,
            argv_truncated=bool(flags & abi.F_ARGV_TRUNCATED),
            uid=uid,
            gid=gid,
            euid=euid,
            egid=egid,
            auid=None if loginuid == abi.LOGINUID_UNSET else loginuid,
            cgroup=cgroup,
            cgroup_id=cgroup_id,
            parent_key=process_key(self.boot_id, ppid, pstart * tck // _NS) if ppid else None,
        )
        return ProcessExec(ts=ts + self._offset_ns, source=NAME, process=process)

    def decode_exit(self, rec: bytes) -> ProcessExit:
        _kind, _flags, ts, start, pid, _tid, status, _pad, comm = abi.EXIT.fmt.unpack_from(rec)
        sig = status & 0x7F
        return ProcessExit(
            ts=ts + self._offset_ns,
            source=NAME,
            key=process_key(self.boot_id, pid, start * self.clk_tck // _NS),
            pid=pid,
            comm=_cstr(comm),
            exit_code=None if sig else (status >> 8) & 0xFF,
            signal=sig or None,
            runtime_ns=max(ts - start, 0),
        )

    def _resolve(self, pid: int, exe: str) -> str:
        """A relative filename (execve("./x")) against the process's cwd, if it is still there."""
        try:
            cwd = self.procfs.cwd(pid)
        except (ProcessGone, OSError):
            return exe
        return os.path.normpath(os.path.join(cwd, exe)) if cwd else exe

    def read_kernel_stats(self) -> None:
        """Kernel-side counters (drops, argv faults, excluded) into health: a few map lookups
        per poll cycle, never per event."""
        loaded = self.loaded
        if loaded is None:
            return
        health = self.ctx.health
        for slot, counter in ((abi.STAT_LOST, "lost"), (abi.STAT_ARGV_FAULT, "argv_faults"),
                              (abi.STAT_EXCLUDED, "excluded")):
            value = loaded.stat(slot)
            delta = value - self._kernel_stats[slot]
            if delta > 0:
                health.add(f"{self.name}.{counter}", delta)
                self._kernel_stats[slot] = value
