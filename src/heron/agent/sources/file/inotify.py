"""File changes from inotify: the fallback rung of the file ladder. It cannot name the writer.

Works for any user on any kernel, but inotify reports no pid: every record has attribution
"unknown" and no process (never a guess). One watch per watched directory (walked from the
policy like fanotify's inode marks; new directories are watched when their creation is read and
their content listed to close the race), renames paired by cookie (``linux.inotify.MovePairer``:
a "from" whose "to" never comes is a move out of view), a directory rename rewrites the paths of
every watch below it. The kernel queue is bounded (fs.inotify.max_queued_events); on overflow
(IN_Q_OVERFLOW, counted as ``overflows``) the policy roots are rescanned.

Limits: a directory rename is one pass over the watch table (the fanotify resolver does it
lazily); watches pin directory inodes and count against fs.inotify.max_user_watches (the default
policy is ~7,600 directories here; a failed watch is counted in ``mark_errors`` and noted); a
watched root that is itself moved away is reported as deleted (its new place is unknown).
"""

from __future__ import annotations

import logging
import select
import threading
import time
from typing import ClassVar

from heron.agent.host import Host
from heron.agent.linux import inotify as ino
from heron.agent.sources.base import ProbeResult, SourceContext
from heron.agent.sources.file.common import FileCore, drain_queue, entry_path, iter_watch_dirs, watch_plan
from heron.schema.events import Process

log = logging.getLogger(__name__)

NAME = "file.inotify"
POLL_TIMEOUT_S = 0.25
MIN_CYCLE_S = 0.01
MOVE_HOLD_S = 0.02

MASK = (ino.IN_CREATE | ino.IN_DELETE | ino.IN_MOVED_FROM | ino.IN_MOVED_TO | ino.IN_ATTRIB | ino.IN_CLOSE_WRITE
        | ino.IN_MODIFY | ino.IN_DELETE_SELF | ino.IN_EXCL_UNLINK | ino.IN_ONLYDIR | ino.IN_DONT_FOLLOW)


class InotifyFileSource:
    capability: ClassVar[str] = "file"
    mechanism: ClassVar[str] = "inotify"

    @classmethod
    def probe(cls, host: Host) -> ProbeResult:
        try:
            ino.Inotify().close()
        except (OSError, AttributeError) as e:
            return ProbeResult.no(f"inotify_init1 failed: {e}")
        return ProbeResult.yes("inotify: changes without their writer (attribution unknown)")

    def __init__(self, ctx: SourceContext) -> None:
        self.ctx = ctx
        self.name = NAME
        self.core = FileCore(ctx, self.mechanism)
        self.inotify: ino.Inotify | None = None
        self.watches = ino.Watches()
        self.moves = ino.MovePairer(int(MOVE_HOLD_S * 1e9))
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self.inotify is not None:
                return
            inotify = ino.Inotify()
            try:
                self.core.open()
                t0 = time.monotonic()
                plan, missing = watch_plan(self.core.policy)
                if missing:
                    self.core.count("roots_missing", len(missing))
                for root, recursive in plan:
                    self._watch_tree(inotify, root, recursive)
                self.ctx.health.set(f"{self.name}.marks", len(self.watches))
                self.ctx.health.set(f"{self.name}.mark_ms", int((time.monotonic() - t0) * 1000))
            except BaseException:
                inotify.close()
                self.core.close()
                raise
            self.inotify = inotify

    def _watch_tree(self, inotify: ino.Inotify, root: bytes, recursive: bool) -> list[bytes]:
        done: list[bytes] = []
        errors = [0]
        for d in iter_watch_dirs(root, recursive, self.core.policy, errors=errors):
            try:
                wd = inotify.add_watch(d, MASK)
            except OSError as e:
                self.core.count("mark_errors")
                if self.ctx.health.get(f"{self.name}.mark_errors") <= 3:
                    self.ctx.health.note(f"{self.name}: cannot watch {d!r}: {e}")
                continue
            self.watches.add(wd, d)
            done.append(d)
        if errors[0]:
            self.core.count("walk_errors", errors[0])
        return done

    def snapshot(self) -> list[Process]:
        self.start()
        return []

    def close(self) -> None:
        with self._lock:
            inotify, self.inotify = self.inotify, None
        if inotify is not None:
            inotify.close()
        self.core.close()

    def run(self, stop: threading.Event) -> None:
        self.start()
        inotify = self.inotify
        assert inotify is not None
        try:
            self.core.start_threads(stop)
            poller = select.poll()
            poller.register(inotify.fd, select.POLLIN)
            while not stop.is_set():
                mono = time.monotonic_ns()
                due = self.core.next_due_in(mono)
                timeout = POLL_TIMEOUT_S if due is None else min(POLL_TIMEOUT_S, due)
                if self.moves.pending:
                    timeout = min(timeout, MOVE_HOLD_S)
                if poller.poll(int(timeout * 1000) + 1) and self.read_once() and not stop.is_set():
                    stop.wait(MIN_CYCLE_S)
                mono = time.monotonic_ns()
                self._moved_out(self.moves.expired(mono), time.time_ns(), mono)
                self.core.pump(mono)
            self.read_once()
            self._moved_out(self.moves.expired(0, everything=True), time.time_ns(), time.monotonic_ns())
        finally:
            try:
                self.core.finish()
            finally:
                self.close()

    # -- the hot path ----------------------------------------------------------------------
    def read_once(self) -> int:
        """Reads what the queue holds (bounded per cycle) and feeds it to the core."""
        src = self.inotify
        if src is None:
            return 0
        return drain_queue(src.read, ino.parse_events, self.handle, self.core)

    def handle(self, events: list[ino.InotifyEvent], ts: int, mono: int) -> None:
        core = self.core
        add = core.add
        new_dirs: list[bytes] = []
        unresolved = early = 0
        for ev in events:
            m = ev.mask
            if m & ino.IN_Q_OVERFLOW:
                core.count("overflows")
                core.request_rescan()
                self._repair(mono)
                continue
            if m & ino.IN_IGNORED:
                self.watches.drop(ev.wd)
                continue
            d = self.watches.path(ev.wd)
            if d is None:
                unresolved += 1
                continue
            is_dir = bool(m & ino.IN_ISDIR)
            path = entry_path(d, ev.name)
            if m & ino.IN_MOVED_FROM:
                self._moved_out(self.moves.moved_from(ev.cookie, path, is_dir, mono), ts, mono)
                continue
            if m & ino.IN_MOVED_TO:
                src = self.moves.moved_to(ev.cookie)
                self._moved(src.path if src is not None else None, path, is_dir, ts, mono, new_dirs)
                continue
            if not core.wanted(path):
                if is_dir and m & ino.IN_CREATE and core.policy.covers_dir(path):
                    new_dirs.append(path)
                early += 1
                continue
            if not ev.name:
                is_dir = True  # an event on the watched directory itself
            if m & ino.IN_CREATE:
                add(path, "create", ts, mono, 0, is_dir)
                if is_dir and core.policy.covers_dir(path):
                    new_dirs.append(path)
            elif m & (ino.IN_MODIFY | ino.IN_CLOSE_WRITE):
                add(path, "modify", ts, mono, 0, is_dir)
            elif m & ino.IN_ATTRIB:
                add(path, "attrib", ts, mono, 0, is_dir)
            elif m & ino.IN_DELETE or (m & ino.IN_DELETE_SELF and not ev.name):
                add(path, "delete", ts, mono, 0, is_dir)
        if unresolved:
            core.count("unresolved", unresolved)
        if early:
            core.count("filtered", early)
        if new_dirs:
            self._watch_new(new_dirs, mono)

    def _moved(self, old: bytes | None, new: bytes, is_dir: bool, ts: int, mono: int, new_dirs: list[bytes]) -> None:
        core = self.core
        if is_dir:
            if old is not None:
                self.watches.moved(old, new)
                if not core.policy.covers_dir(new):
                    self._unwatch(new)
            elif core.policy.covers_dir(new):
                new_dirs.append(new)  # moved in from outside the watched tree: watch it, list it
        if core.wanted(new, old):
            core.add(new, "rename", ts, mono, 0, is_dir, old)
        elif old is not None and core.wanted(old):
            core.add(old, "moved_out", ts, mono, 0, is_dir)

    def _moved_out(self, gone: list[ino.PendingMove], ts: int, mono: int) -> None:
        for m in gone:
            if m.is_dir:
                self._unwatch(m.path)
            if self.core.wanted(m.path):
                self.core.add(m.path, "moved_out", ts, mono, 0, m.is_dir)

    def _unwatch(self, path: bytes) -> None:
        inotify = self.inotify
        for wd, _ in self.watches.below(path):
            self.watches.drop(wd)
            if inotify is not None:
                inotify.rm_watch(wd)

    def _repair(self, mono: int) -> None:
        """After a queue overflow: renames and new directories may have been lost. The watch plan is
        walked again: adding a watch is idempotent and returns the directory's descriptor, so
        renamed directories get their current path, and new ones are watched and listed
        (``close_race``)."""
        inotify = self.inotify
        if inotify is None:
            return
        known = set(self.watches.by_wd)
        fresh: list[bytes] = []
        plan, _ = watch_plan(self.core.policy)
        for root, recursive in plan:
            for d in self._watch_tree(inotify, root, recursive):
                if self.watches.by_path.get(d) not in known:
                    fresh.append(d)
        self.ctx.health.set(f"{self.name}.marks", len(self.watches))
        self.core.close_race(fresh, mono)

    def _watch_new(self, directories: list[bytes], mono: int) -> None:
        inotify = self.inotify
        if inotify is None:
            return
        added: list[bytes] = []
        for d in directories:
            if d not in self.watches.by_path:
                added += self._watch_tree(inotify, d, True)
        self.ctx.health.set(f"{self.name}.marks", len(self.watches))
        self.core.close_race(added, mono)
