"""What the real-time file sources share: where to watch, and what happens to a raw change.

A mechanism (fanotify, inotify) turns kernel events into raw changes (path, action, writer pid
or 0) and hands them to ``FileCore.add``; everything after that is here:

- ``watch_plan``/``iter_watch_dirs``: the directories to watch for a policy. A recursive root is
  walked (no symlinks followed, not across mount points: the scan does the same) into every
  directory ``policy.covers_dir`` accepts; a root that is a file is watched through its
  directory (an editor or package manager replaces the file: a watch on the inode would be lost);
  a missing root through its nearest existing ancestor (its creation is then seen, and the new
  directory watched like any other).
- ``FileCore``: burst coalescing and the rate limit (``coalesce.py``) on the reading thread, then
  a builder thread per source for the rest: one lstat per record, old metadata from the
  baseline, sha256 when the rule hashes, the baseline updated (so the next event has old
  metadata and the next scan sees no difference), a ``FileChange`` emitted. Hashing on its own
  thread keeps a large file from stalling the kernel queue. The baseline scan (``fim.scan``) runs
  on a third thread: at start (after the watches are in place, so nothing falls between), every
  ``scan_interval_s``, and after a queue overflow (``request_rescan``).
- ``close_race``: a new directory may fill before it is watched; once watched, its entries that
  the baseline does not know are fed in as creates by an unknown writer (when the kernel's own
  event for the same file arrives within the window the record takes its writer).

Ignored: the agent's own process (the caller drops its pid) and the agent's state directory
(baseline database, spool). Counters are ``file.<mechanism>.<name>``: received (raw events),
records, emitted, filtered, rate_limited, overflows, rescans, marks, mark_errors, walk_errors,
unresolved, own, race_creates, roots_missing, build_dropped, scans, scan_changes.

Limits: real-time hashing is not throttled (the scan's IoBudget is for the scan): a storm of large
writes to hashed paths costs CPU on the builder thread, which is why hashing is off the reading
thread. A change made while a scan walks past it can be reported by both (the scan does not know
the real-time record is pending); rescans wait for the pending records first, so an overflow does
not double what was already read. A directory renamed out of the policy keeps its fanotify marks
until restart (its events are filtered out).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from heron.agent.config import FileConfig
from heron.agent.fim.baseline import BaselineStore
from heron.agent.fim.hashing import IoBudget, hash_file, meta_of
from heron.agent.fim.paths import display_path, is_below, join, parent_of
from heron.agent.fim.policy import READ, Policy, Rule
from heron.agent.sources.base import SourceContext
from heron.agent.sources.file.coalesce import Coalescer, Record, net_action
from heron.schema.events import Event, FileChange, FileMeta, ProcessRef

log = logging.getLogger(__name__)

BUILD_QUEUE_MAX = 200_000  # records waiting for the builder; past it they are dropped and a rescan runs
SCAN_EMIT_BATCH = 500
TRANSIENT_SKIPS = ("changed_while_hashing", "busy", "vanished")
_READS_MAX = 10_000  # (path, reader) pairs held for folding
RACE_ENTRIES_MAX = 100_000  # entries of new directories fed in per call (a huge moved-in tree: the scan finds the rest)


def watch_plan(policy: Policy) -> tuple[list[tuple[bytes, bool]], list[bytes]]:
    """(directories to watch with their recursive flag, policy roots that are missing)."""
    plan: dict[bytes, bool] = {}
    missing: list[bytes] = []
    for root, recursive in policy.roots():
        try:
            st = os.lstat(root)
        except OSError:
            missing.append(root)
            p = parent_of(root)
            while p != b"/" and not os.path.isdir(p):
                p = parent_of(p)
            plan.setdefault(p, False)
            continue
        if stat.S_ISDIR(st.st_mode):
            plan[root] = plan.get(root, False) or recursive
        else:
            plan.setdefault(parent_of(root), False)
    return list(plan.items()), missing


def iter_watch_dirs(root: bytes, recursive: bool, policy: Policy, stop: threading.Event | None = None,
                    errors: list[int] | None = None) -> Iterator[bytes]:
    """``root`` and (recursive) the directories below it that the policy covers, on root's device,
    without following symlinks. Unreadable directories are counted in ``errors[0]``."""
    try:
        dev = os.lstat(root).st_dev
    except OSError:
        if errors is not None:
            errors[0] += 1
        return
    yield root
    if not recursive:
        return
    stack = [root]
    while stack:
        if stop is not None and stop.is_set():
            return
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                subdirs = []
                for entry in it:
                    try:
                        if not entry.is_dir(follow_symlinks=False):
                            continue
                        path = entry.path
                        if not policy.covers_dir(path) or entry.stat(follow_symlinks=False).st_dev != dev:
                            continue
                    except OSError:
                        continue
                    subdirs.append(path)
        except OSError:
            if errors is not None:
                errors[0] += 1
            continue
        for path in subdirs:
            yield path
        stack.extend(reversed(subdirs))


class FileCore:
    """Coalescing on the caller's thread; stat/hash/baseline/emit on a builder thread; scans on a
    scan thread. ``start`` opens the baseline; ``start_threads`` after the watches are placed."""

    def __init__(self, ctx: SourceContext, mechanism: str) -> None:
        self.ctx = ctx
        self.mechanism = mechanism
        self.name = f"file.{mechanism}"
        cfg = ctx.options.get("config")
        self.config: FileConfig = cfg if isinstance(cfg, FileConfig) else FileConfig()
        self.state_dir = str(ctx.options.get("state_dir") or "/var/lib/heron/agent")
        self.policy = Policy.from_config(self.config)
        self.coalescer = Coalescer(self.config.coalesce_s, self.config.rate_per_path_per_min)
        self.store: BaselineStore | None = None
        self.ignore_root = os.path.realpath(os.fsencode(self.state_dir))
        self._queue: queue.Queue[list[Record] | None] = queue.Queue()
        self._queued = 0
        self._queued_lock = threading.Lock()
        self._rescan = threading.Event()
        self._threads: list[threading.Thread] = []
        self._stop_scan = threading.Event()
        self.counters: dict[str, int] = {}
        # (path, pid) -> [first_ts, last_ts, count, rule, due mono]: reads folded per reader and window
        self._reads: dict[tuple[bytes, int], list[Any]] = {}
        for c in ("received", "records", "emitted", "filtered", "rate_limited", "overflows", "rescans"):
            self.ctx.health.add(f"{self.name}.{c}", 0)

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> None:
        if self.store is None:
            self.store = BaselineStore.open(self.state_dir)
            if self.store.note:
                self.ctx.health.note(self.store.note)

    def count(self, counter: str, n: int = 1) -> None:
        self.ctx.health.add(f"{self.name}.{counter}", n)

    def start_threads(self, stop: threading.Event) -> None:
        builder = threading.Thread(target=self._build_loop, name=f"heron-{self.name}-build", daemon=True)
        scanner = threading.Thread(target=self._scan_loop, args=(stop,), name=f"heron-{self.name}-scan",
                                   daemon=True)
        self._threads = [builder, scanner]
        builder.start()
        scanner.start()

    def finish(self) -> None:
        """After the read loop: everything pending goes out, the threads end, the baseline is saved."""
        self.pump(time.monotonic_ns(), everything=True)
        self._stop_scan.set()
        self._rescan.set()
        self._queue.put(None)
        for th in self._threads:
            th.join(30)
        self._threads = []
        self.close()

    def close(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            try:
                store.close()
            except Exception:
                log.exception("closing the file baseline")

    # -- the reading thread ------------------------------------------------------------------
    def ignored(self, path: bytes) -> bool:
        return is_below(path, self.ignore_root)

    def wanted(self, path: bytes, old_path: bytes | None = None) -> bool:
        """Does some rule cover the path (or, for a rename, its old path)? Cheap: no syscalls."""
        if self.ignored(path):
            return False
        if self.policy.match(path) is not None:
            return True
        return old_path is not None and not self.ignored(old_path) and self.policy.match(old_path) is not None

    def add(self, path: bytes, actions: str | Sequence[str], ts: int, mono: int, pid: int = 0,
            is_dir: bool = False, old_path: bytes | None = None) -> None:
        self.coalescer.add(path, actions, ts, mono, pid, is_dir, old_path)

    def add_read(self, path: bytes, ts: int, mono: int, pid: int) -> None:
        """An open of a file a rule asks reads of (no stat, no hash, no baseline: nothing changed).
        Repeated opens by one process within the coalescing window become one record with a count."""
        if self.ignored(path):
            return
        known = self._reads.get((path, pid))
        if known is not None:
            known[1] = ts
            known[2] += 1
            return
        rule = self.policy.match_read(path)
        if rule is None:
            self.count("filtered")
            return
        if len(self._reads) >= _READS_MAX:  # a read storm: fold what is held now rather than grow
            self.count("read_flushes")
            self._flush_reads(mono, everything=True)
        window = int(self.config.coalesce_s * 1e9)
        self._reads[(path, pid)] = [ts, ts, 1, rule.name, mono + window, *_reader(pid)]

    def _flush_reads(self, mono: int, everything: bool = False) -> None:
        out: list[Event] = []
        for k, (first, last, n, rule, due, exe, comm, ppid) in list(self._reads.items()):
            if not everything and due > mono:
                continue
            del self._reads[k]
            path, pid = k
            shown, escaped = display_path(path)
            out.append(FileChange(
                ts=first, source=self.name, path=shown, path_escaped=escaped, action=READ, actions=[READ],
                attribution="process" if pid > 0 else "unknown",
                process=ProcessRef(pid=pid, exe=exe, comm=comm, ppid=ppid) if pid > 0 else None,
                rule=rule, count=n, first_ts=first if n > 1 else 0, last_ts=last if n > 1 else 0))
        if out:
            self.count("emitted", len(out))
            self._emit(out)

    def pump(self, mono: int, everything: bool = False) -> None:
        """Hand the records whose window is over to the builder."""
        if self._reads:
            self._flush_reads(mono, everything)
        co = self.coalescer
        limited = co.rate_limited
        records = co.due(mono, everything)
        if co.rate_limited != limited:
            self.count("rate_limited", co.rate_limited - limited)
        if not records:
            return
        with self._queued_lock:
            if self._queued + len(records) > BUILD_QUEUE_MAX:
                self.count("build_dropped", len(records))
                self.request_rescan()
                return
            self._queued += len(records)
        self._queue.put(records)

    def next_due_in(self, mono: int) -> float | None:
        due = self.coalescer.next_due_in(mono)
        if self._reads:
            reads = max(0.0, (min(v[4] for v in self._reads.values()) - mono) / 1e9)
            due = reads if due is None else min(due, reads)
        return due

    def request_rescan(self) -> None:
        self._rescan.set()

    def close_race(self, directories: list[bytes], mono: int) -> None:
        """Entries of newly watched directories that the baseline does not know: creates by an
        unknown writer (see the module doc)."""
        store = self.store
        if store is None:
            return
        ts = time.time_ns()
        n = 0
        for d in directories:
            try:
                with os.scandir(d) as it:
                    entries = [(e.path, e.is_dir(follow_symlinks=False)) for e in it]
            except OSError:
                continue
            for path, is_dir in entries:
                if n >= RACE_ENTRIES_MAX:
                    self.request_rescan()
                    return
                if self.wanted(path) and store.entry(path) is None:
                    n += 1
                    self.coalescer.add(path, "create", ts, mono, 0, is_dir)
        if n:
            self.count("race_creates", n)

    # -- the builder thread ------------------------------------------------------------------
    def _build_loop(self) -> None:
        while True:
            records = self._queue.get()
            if records is None:
                break
            out: list[Event] = []
            for rec in records:
                try:
                    ev = self.build(rec)
                except Exception:
                    log.exception("%s: building a record for %r", self.name, rec.path)
                    self.count("build_errors")
                    continue
                if ev is not None:
                    out.append(ev)
            self.count("records", len(records))
            if out:
                self.count("emitted", len(out))
                self._emit(out)
            with self._queued_lock:
                self._queued -= len(records)  # after the baseline saw them: see _wait_quiet
        store = self.store
        if store is not None:
            store.flush()

    def _emit(self, events: list[Event]) -> None:
        try:
            self.ctx.emit(events)
        except Exception:
            log.exception("%s: emit failed", self.name)
            self.count("emit_errors")

    def build(self, rec: Record) -> FileChange | None:
        """One coalesced record -> FileChange (None when no rule wants it); the baseline follows."""
        store = self.store
        if store is None:
            return None
        path, old_path = rec.path, rec.old_path
        try:
            st: os.stat_result | None = os.lstat(path)
        except OSError:
            st = None
        before = store.entry(path)
        action = net_action(rec, before is not None, st is not None)
        covering = self.policy.match(path)
        old_covering = self.policy.match(old_path) if old_path is not None else None
        rule: Rule | None = self.policy.match(path, action)
        if rule is None and old_path is not None:
            rule = self.policy.match(old_path, action)
        renamed = old_path is not None and not rec.replaced and action in ("rename", "create")
        moved = store.entry(old_path) if renamed and old_path is not None else None
        old_entry = moved if moved is not None else before
        is_dir = rec.is_dir or (st is not None and stat.S_ISDIR(st.st_mode))
        new: FileMeta | None = meta_of(st) if st is not None else None
        ctime = st.st_ctime_ns if st is not None else 0
        sha: str | None = None
        skipped: str | None = None
        hash_rule = rule or covering
        if st is not None and stat.S_ISREG(st.st_mode) and hash_rule is not None and hash_rule.hash:
            if (rec.actions == ["attrib"] and old_entry is not None and old_entry.sha256 is not None
                    and old_entry.meta.inode == st.st_ino and old_entry.meta.size == st.st_size
                    and old_entry.meta.mtime_ns == st.st_mtime_ns):
                # Metadata only by every sign, but a write through a shared mmap with the mtime put
                # back also looks like this: keep the hash and make the next scan hash it again.
                sha, ctime = old_entry.sha256, -1
            else:
                res = hash_file(path, hash_rule.hash_max_bytes)
                sha, skipped = res.sha256, res.skipped
                if res.meta is not None:
                    new, ctime = res.meta, res.ctime_ns or ctime
                elif skipped == "vanished":
                    new = None
                if skipped in TRANSIENT_SKIPS:
                    ctime = -1  # the next scan hashes it again
        # The baseline follows the disk for every covered path, reported or not.
        if old_path is not None and old_path != path and old_covering is not None and not rec.replaced:
            if is_dir and covering is not None and new is not None:
                store.rename(old_path, path)
            else:
                self._forget(store, old_path, is_dir)
        elif rec.replaced and old_path is not None:
            self._forget(store, old_path, False)
        if covering is not None:
            if new is None:
                self._forget(store, path, is_dir)
            else:
                store.put(path, new, sha, ctime)
        if rule is None:
            self.count("filtered")
            return None
        shown, escaped = display_path(path)
        old_shown = display_path(old_path)[0] if old_path is not None else None
        pid = rec.pid
        return FileChange(
            ts=rec.first_ts, source=self.name, path=shown, path_escaped=escaped, action=action,
            actions=rec.shown_actions(), old_path=old_shown, is_dir=is_dir,
            attribution="process" if pid > 0 else "unknown",
            process=ProcessRef(pid=pid) if pid > 0 else None,
            old=old_entry.meta if old_entry is not None else None, new=new,
            sha256=sha, hash_skipped=skipped, rule=rule.name, count=rec.count,
            first_ts=rec.first_ts if rec.count > 1 else 0, last_ts=rec.last_ts if rec.count > 1 else 0,
        )

    @staticmethod
    def _forget(store: BaselineStore, path: bytes, is_dir: bool) -> None:
        if is_dir:
            for p in list(store.paths_under(path)):
                store.delete(p)
        else:
            store.delete(path)

    # -- the scan thread ---------------------------------------------------------------------
    def _scan_loop(self, stop: threading.Event) -> None:
        interval = self.config.scan_interval_s
        first = interval >= 0
        next_at = time.monotonic()
        while not stop.is_set() and not self._stop_scan.is_set():
            if first or self._rescan.is_set() or (interval > 0 and time.monotonic() >= next_at):
                if self._rescan.is_set() and not first:
                    self.count("rescans")
                    self._wait_quiet()
                self._rescan.clear()
                first = False
                self.scan_once(stop)
                next_at = time.monotonic() + max(interval, 0.0)
                continue
            timeout = max(0.05, next_at - time.monotonic()) if interval > 0 else 1.0
            self._rescan.wait(min(timeout, 1.0))

    def _wait_quiet(self, limit_s: float = 120.0) -> None:
        """Before a rescan, let what the kernel already delivered reach the baseline (coalescing
        window, then the builder): the scan must not report those changes a second time. After an
        overflow the builder may hold ~16,000 records to stat and hash, which takes many seconds on a
        loaded host, so the wait is long; only writes that never pause for two minutes cut it short
        (and may then be reported twice)."""
        deadline = time.monotonic() + limit_s
        self._stop_scan.wait(self.config.coalesce_s + 0.02)
        while time.monotonic() < deadline and not self._stop_scan.is_set():
            with self._queued_lock:
                busy = self._queued > 0
            if not busy and not len(self.coalescer):
                return
            self._stop_scan.wait(0.02)

    def scan_once(self, stop: threading.Event) -> int:
        """One baseline scan over the policy: its differences are emitted (source file.scan)."""
        from heron.agent.fim.scan import scan

        store = self.store
        if store is None:
            return 0
        budget = IoBudget(self.config.scan_max_mb_per_s, self.config.scan_cpu_percent)
        batch: list[Event] = []
        n = 0
        try:
            for change in scan(self.policy, store, stop=self._stop_scan, budget=budget):
                if change.path and self.ignored(os.fsencode(change.path)):
                    continue
                batch.append(change)
                n += 1
                if len(batch) >= SCAN_EMIT_BATCH:
                    self._emit(batch)
                    batch = []
        except Exception:
            log.exception("%s: scan failed", self.name)
            self.count("scan_errors")
        if batch:
            self._emit(batch)
        self.count("scan_changes", n)
        self.count("scans")
        with contextlib.suppress(Exception):
            store.flush()
        return n


def _reader(pid: int) -> tuple[str, str, int]:
    """(exe, comm, ppid) of a process that opened a read-watched file, read at once: readers of
    credentials are often forked children that never exec (cron's job runner, PAM helpers in a
    daemon), so the agent's exec table does not know them and they are gone 300 ms later. A few
    syscalls per (file, reader) pair, on the rare files a read watch names."""
    if pid <= 0:
        return "", "", 0
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read(4096)
    except OSError:
        return "", "", 0
    head, _, tail = stat_line.rpartition(b")")
    comm = head.partition(b"(")[2].decode("utf-8", "replace")
    fields = tail.split()
    ppid = int(fields[1]) if len(fields) > 1 and fields[1].isdigit() else 0
    return exe, comm, ppid  # a deleted binary keeps its " (deleted)": no allow-list excuses it


def entry_path(directory: bytes, name: bytes) -> bytes:
    """directory + name, where name b"." or b"" stands for the directory itself."""
    return directory if not name or name == b"." else join(directory, name)


READ_BYTES = 256 * 1024
MAX_READS_PER_CYCLE = 64
RawEvent = TypeVar("RawEvent")


def drain_queue(read: Callable[[int], bytes], parse: Callable[[bytes], tuple[list[RawEvent], int]],
                handle: Callable[[list[RawEvent], int, int], None], core: FileCore) -> int:
    """Reads what a notification queue holds (bounded per cycle, so a flood cannot starve the
    pump) and feeds it to ``handle``; returns how many events were read."""
    total = 0
    for _ in range(MAX_READS_PER_CYCLE):
        buf = read(READ_BYTES)
        if not buf:
            break
        events, bad = parse(buf)
        if bad:
            core.count("decode_errors", bad)
        total += len(events)
        handle(events, time.time_ns(), time.monotonic_ns())
        if len(buf) < READ_BYTES // 2:
            break  # a short read: the queue is empty
    if total:
        core.count("received", total)
    return total
