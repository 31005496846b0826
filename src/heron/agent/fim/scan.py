"""Baseline scan: walk every policy root, compare with the stored baseline, report differences.

How it walks:
- Depth-first through directory file descriptors (openat with O_NOFOLLOW|O_DIRECTORY, fstatat
  without following): symlinks are recorded as links and never followed, so a symlink loop cannot
  trap the scan; a directory swapped for a symlink mid-walk fails to open instead of leading
  elsewhere; paths longer than PATH_MAX work (every syscall is relative to the parent's fd). At
  most ``FD_LIMIT`` directory fds are held; deeper, the oldest is closed and reopened through
  ".." on the way back (checked by inode). A bind mount looping back on an ancestor is detected
  and skipped.
- Entries are visited in name order, which is the baseline's key order (see baseline.py), so the
  walk and the stored entries are merged in one pass without holding the tree in memory.
- It stays on the file system of each root (a root itself may be a mount point): mount points
  below a root are recorded but not entered, like ``find -xdev``. Directories it cannot enter
  (other file system, unreadable, too deep) keep their stored entries untouched: not-seen is not
  deleted. Only directories ``Policy.covers_dir`` allows are entered, so a glob rule's root is not
  walked beyond what the glob can match.

What it reports (``FileChange`` with source "file.scan", attribution "unknown"):
- An entry whose (type, inode, size, mtime, ctime, mode, uid, gid, nlink) equal the stored ones is
  unchanged and not read. Otherwise a hashed rule re-hashes it; new content (or, unhashed, a new
  inode/size/mtime) is "modify", other metadata only (same content) is "attrib". The device
  number is stored but not compared: it can change across reboots for the same file system.
  Directories are compared on type, inode, mode and owner only (their mtime moves with every entry).
- Not stored: "create" (hashed). Stored but gone (checked again by lstat, as the real-time source
  may have recorded it meanwhile): "delete". A delete and a create of the same inode with the same
  size and mtime (and hash) are one "rename" (path, old_path); the entries of a renamed directory
  are folded into the directory's rename. Pairing holds up to ``PAIR_LIMIT`` creates and deletes
  until the end of the scan; beyond that they are reported unpaired.
- The first scan of a root (one the store has never completed) records quietly and reports
  nothing: a fresh install or a new watch must not produce one "create" per file. Its totals are
  in ``ScanProgress.baseline_files``.
- A rule's ``actions`` filter what is reported; the baseline is updated either way.
- A change is written to the baseline only after it has been handed to the consumer (creates and
  deletes held for rename pairing are written when settled): a scan that dies or is interrupted
  loses no report; the next one reports what was not handed over (the last one may come twice).
Throttled by an ``IoBudget`` (bytes hashed and the thread's CPU); ``stop`` ends the walk early and
then reports nothing as deleted, since the walk did not finish.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from heron.agent.fim.baseline import BaselineStore, Entry
from heron.agent.fim.hashing import HashResult, IoBudget, hash_file, meta_of
from heron.agent.fim.paths import display_path, is_below, parent_of
from heron.agent.fim.policy import Policy, Rule
from heron.schema.events import FileChange, FileMeta

SOURCE = "file.scan"
FD_LIMIT = 64
MAX_DEPTH = 4096
PAIR_LIMIT = 10_000
PROGRESS_EVERY_S = 0.25
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_TRANSIENT = ("changed_while_hashing", "busy", "vanished")


@dataclass
class ScanProgress:
    """Counters of one scan, passed to the progress callback (the same object, updated in place)."""

    files_seen: int = 0  # entries the policy covers: files, directories, links
    files_hashed: int = 0
    bytes_hashed: int = 0
    changes: int = 0
    errors: int = 0
    current: bytes = b""
    elapsed_s: float = 0.0
    baseline_files: int = 0  # recorded quietly by a root's first scan
    roots: int = 0
    done: bool = False
    by_action: dict[str, int] = field(default_factory=dict)
    hash_skipped: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)  # the first few, for the operator


@dataclass
class _Frame:
    path: bytes
    fd: int | None
    dev: int
    ino: int
    names: list[bytes]
    is_dir: list[bool]
    i: int = 0


@dataclass
class _Pending:
    path: bytes
    rule: Rule
    meta: FileMeta
    sha256: str | None
    skipped: str | None
    ts: int
    ctime_ns: int = 0


def _fs_error(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


class _Scanner:
    def __init__(self, policy: Policy, store: BaselineStore, stop: threading.Event | None, budget: IoBudget | None,
                 progress: Callable[[ScanProgress], None] | None, now_ns: Callable[[], int]) -> None:
        self.policy = policy
        self.store = store
        self.stop = stop
        self.budget = budget
        self.report = progress
        self.now_ns = now_ns
        self.p = ScanProgress()
        self.t0 = time.monotonic()
        self.next_report = self.t0 + PROGRESS_EVERY_S
        self.kept: set[bytes] = set()  # directories not entered: their stored entries stay
        self.baselined = set(store.baselined_roots())
        self.creates: dict[int, list[_Pending]] = {}
        self.deletes: dict[int, list[_Pending]] = {}
        self.n_pending = 0
        self.root = b"/"

    # -- bookkeeping -------------------------------------------------------------------------
    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def error(self, path: bytes, what: str) -> None:
        self.p.errors += 1
        if len(self.p.error_samples) < 20:
            self.p.error_samples.append(f"{display_path(path)[0]}: {what}")

    def tick(self, path: bytes) -> None:
        p = self.p
        p.files_seen += 1
        p.current = path
        if p.files_seen & 255 == 0:
            if self.budget is not None:
                self.budget.spend(0)
            now = time.monotonic()
            if self.report is not None and now >= self.next_report:
                self.next_report = now + PROGRESS_EVERY_S
                p.elapsed_s = now - self.t0
                self.report(p)

    def quiet(self, path: bytes) -> bool:
        """Inside no root with a completed baseline: record, do not report."""
        if not self.baselined:
            return True
        q = path
        while True:
            if q in self.baselined:
                return False
            if q == b"/":
                return True
            q = parent_of(q)

    def is_kept(self, path: bytes) -> bool:
        if not self.kept:
            return False
        q = parent_of(path)
        while True:
            if q in self.kept:
                return True
            if q == b"/":
                return False
            q = parent_of(q)

    def event(self, action: str, path: bytes, rule: Rule, *, old: FileMeta | None = None,
              new: FileMeta | None = None, sha256: str | None = None, skipped: str | None = None,
              old_path: bytes | None = None, ts: int | None = None) -> FileChange | None:
        """The record for a change, or None when no rule reports this action on this path."""
        reporting = rule if action in rule.actions else self.policy.match(path, action)
        if reporting is None:
            return None
        ts = ts if ts is not None else self.now_ns()
        text, escaped = display_path(path)
        meta = new or old
        ev = FileChange(ts=ts, source=SOURCE, path=text, path_escaped=escaped, action=action, actions=[action],
                        old_path=display_path(old_path)[0] if old_path is not None else None,
                        is_dir=meta is not None and stat.S_ISDIR(meta.mode), attribution="unknown", process=None,
                        old=old, new=new, sha256=sha256, hash_skipped=skipped, rule=reporting.name,
                        first_ts=ts, last_ts=ts)
        self.p.changes += 1
        self.p.by_action[action] = self.p.by_action.get(action, 0) + 1
        return ev

    # -- hashing -----------------------------------------------------------------------------
    def hash(self, path: bytes, name: bytes, dir_fd: int | None, rule: Rule, st: os.stat_result) -> HashResult | None:
        """Hash when the rule wants it for this file; None when it does not."""
        if not (rule.hash and stat.S_ISREG(st.st_mode)):
            return None
        if st.st_size > rule.hash_max_bytes:
            res = HashResult(None, "too_large", meta_of(st), st.st_ctime_ns)
        else:
            res = hash_file(name, rule.hash_max_bytes, budget=self.budget, dir_fd=dir_fd)
        if res.sha256 is not None and res.meta is not None:
            self.p.files_hashed += 1
            self.p.bytes_hashed += res.meta.size
        elif res.skipped is not None:
            self.p.hash_skipped[res.skipped] = self.p.hash_skipped.get(res.skipped, 0) + 1
            if res.skipped == "unreadable" or res.skipped.startswith("error:"):
                self.error(path, f"cannot hash: {res.skipped}")
        return res

    # -- the walk ----------------------------------------------------------------------------
    def open_dir(self, name: bytes, dir_fd: int | None, st: os.stat_result, path: bytes) -> _Frame | None:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):  # gone or swapped: not an error
                self.error(path, f"cannot open directory: {_fs_error(e)}")
            self.kept.add(path)
            return None
        try:
            fst = os.fstat(fd)
            if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                raise InterruptedError("replaced while opened")  # treated as: not entered this time
            names: list[bytes] = []
            dirs: list[bool] = []
            with os.scandir(fd) as it:
                listing = sorted((os.fsencode(e.name), e.is_dir(follow_symlinks=False)) for e in it)
            for n, d in listing:
                names.append(n)
                dirs.append(d)
        except OSError as e:
            os.close(fd)
            self.error(path, f"cannot list directory: {e.strerror or e}")
            self.kept.add(path)
            return None
        return _Frame(path, fd, st.st_dev, st.st_ino, names, dirs)

    def walk(self, root: bytes) -> Iterator[tuple[bytes, bytes, int | None, os.stat_result, Rule]]:
        """(path, name, dir_fd, lstat, rule) of every entry a rule covers, in key order."""
        policy = self.policy
        try:
            st = os.stat(root, follow_symlinks=False)
        except FileNotFoundError:
            return
        except OSError as e:
            self.error(root, f"cannot stat: {_fs_error(e)}")
            self.kept.add(root)
            return
        rule = policy.match(root)
        if rule is not None:
            yield root, root, None, st, rule
        if not stat.S_ISDIR(st.st_mode) or not policy.covers_dir(root):
            return
        top = self.open_dir(root, None, st, root)
        if top is None:
            return
        root_dev = st.st_dev
        stack = [top]
        on_stack = {(top.dev, top.ino)}
        try:
            while stack:
                if self.stopped():
                    return
                f = stack[-1]
                if f.i >= len(f.names):
                    self.leave(stack, on_stack)
                    continue
                name, maybe_dir = f.names[f.i], f.is_dir[f.i]
                f.i += 1
                path = f.path + b"/" + name if f.path != b"/" else b"/" + name
                rule = policy.match(path)
                descend = maybe_dir and policy.covers_dir(path)
                if rule is None and not descend:
                    continue
                try:
                    st = os.stat(name, dir_fd=f.fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # vanished since the listing: the merge reports it if it was stored
                except OSError as e:
                    self.error(path, f"cannot stat: {_fs_error(e)}")
                    self.kept.add(path)
                    continue
                if rule is not None:
                    yield path, name, f.fd, st, rule
                if not (stat.S_ISDIR(st.st_mode) and (descend or policy.covers_dir(path))):
                    continue
                if st.st_dev != root_dev:
                    self.kept.add(path)  # a mount point: not entered (see module doc)
                    continue
                if (st.st_dev, st.st_ino) in on_stack:
                    self.error(path, "directory loop (bind mount?) not entered")
                    self.kept.add(path)
                    continue
                if len(stack) >= MAX_DEPTH:
                    self.error(path, "too deep, not entered")
                    self.kept.add(path)
                    continue
                child = self.open_dir(name, f.fd, st, path)
                if child is None:
                    continue
                stack.append(child)
                on_stack.add((child.dev, child.ino))
                self.limit_fds(stack)
        finally:
            for fr in stack:
                if fr.fd is not None:
                    os.close(fr.fd)

    def limit_fds(self, stack: list[_Frame]) -> None:
        """Hold at most FD_LIMIT directory fds: close the oldest but the root's (reopened on return)."""
        if sum(1 for fr in stack if fr.fd is not None) <= FD_LIMIT:
            return
        for fr in stack[1:]:
            if fr.fd is not None:
                os.close(fr.fd)
                fr.fd = None
                return

    def leave(self, stack: list[_Frame], on_stack: set[tuple[int, int]]) -> None:
        done = stack.pop()
        on_stack.discard((done.dev, done.ino))
        parent = stack[-1] if stack else None
        if parent is not None and parent.fd is None and parent.i < len(parent.names) and done.fd is not None:
            try:  # the parent's fd was closed (FD_LIMIT): ".." from here is one syscall
                fd = os.open(b"..", _DIR_FLAGS, dir_fd=done.fd)
                fst = os.fstat(fd)
                if (fst.st_dev, fst.st_ino) == (parent.dev, parent.ino):
                    parent.fd = fd
                else:
                    os.close(fd)
            except OSError:
                pass
        if done.fd is not None:
            os.close(done.fd)
        if parent is not None and parent.fd is None and parent.i < len(parent.names):
            self.reopen(stack)

    def reopen(self, stack: list[_Frame]) -> None:
        """Reopen the top frame's directory from the nearest open ancestor, one component at a time
        (each checked by inode): when ".." led elsewhere (the directory was moved). If the tree
        moved, the rest of that directory is left for the next scan (its stored entries kept)."""
        target = stack[-1]
        j = max(i for i, fr in enumerate(stack) if fr.fd is not None)  # the root's fd is never closed
        base = stack[j].fd
        assert base is not None
        fd = base
        try:
            for fr in stack[j + 1:]:
                nfd = os.open(fr.path.rsplit(b"/", 1)[1], _DIR_FLAGS, dir_fd=fd)
                if fd != base:
                    os.close(fd)
                fd = nfd
                fst = os.fstat(fd)
                if (fst.st_dev, fst.st_ino) != (fr.dev, fr.ino):
                    raise FileNotFoundError(errno.ENOENT, "moved during the scan")
        except OSError as e:
            if fd != base:
                os.close(fd)
            self.error(target.path, f"cannot return to directory: {e.strerror or _fs_error(e)}")
            self.kept.add(target.path)
            target.i = len(target.names)
            return
        target.fd = fd

    # -- the merge ---------------------------------------------------------------------------
    def scan_root(self, root: bytes) -> Iterator[FileChange]:
        self.root = root
        stored = self.store.entries_under(root)
        head = next(stored, None)
        for path, name, dir_fd, st, rule in self.walk(root):
            self.tick(path)
            key = path.replace(b"/", b"\0")
            while head is not None and head[0].replace(b"/", b"\0") < key:
                yield from self.gone(*head)
                head = next(stored, None)
            if head is not None and head[0] == path:
                yield from self.compare(path, name, dir_fd, st, rule, head[1])
                head = next(stored, None)
            else:
                yield from self.found(path, name, dir_fd, st, rule)
        if self.stopped():
            return
        while head is not None:
            yield from self.gone(*head)
            head = next(stored, None)

    def found(self, path: bytes, name: bytes, dir_fd: int | None, st: os.stat_result,
              rule: Rule) -> Iterator[FileChange]:
        res = self.hash(path, name, dir_fd, rule, st)
        if res is not None and res.skipped == "vanished":
            return
        meta, sha, skipped, ctime = _state(res, st)
        if self.quiet(path):
            self.store.put(path, meta, sha, ctime)
            self.p.baseline_files += 1
            return
        # Reported first, recorded after: a scan that dies in between reports it again next time.
        pend = _Pending(path, rule, meta, sha, skipped, self.now_ns(), ctime)
        if self.n_pending < PAIR_LIMIT:
            self.creates.setdefault(meta.inode, []).append(pend)
            self.n_pending += 1
        else:
            yield from _present(self.event("create", path, rule, new=meta, sha256=sha, skipped=skipped, ts=pend.ts))
            self.store.put(path, meta, sha, ctime)

    def gone(self, path: bytes, old: Entry) -> Iterator[FileChange]:
        if self.is_kept(path):
            return
        rule = self.policy.match(path)
        if rule is None:  # the policy no longer covers it
            self.store.delete(path)
            return
        if _exists_below(self.root, path):
            return  # there after all: created after our listing (the real-time source recorded it)
        if self.quiet(path):
            self.store.delete(path)
            return
        pend = _Pending(path, rule, old.meta, old.sha256, None, self.now_ns())
        if self.n_pending < PAIR_LIMIT:
            self.deletes.setdefault(old.meta.inode, []).append(pend)
            self.n_pending += 1
        else:
            yield from _present(self.event("delete", path, rule, old=old.meta, ts=pend.ts))
            self.store.delete(path)

    def compare(self, path: bytes, name: bytes, dir_fd: int | None, st: os.stat_result, rule: Rule,
                old: Entry) -> Iterator[FileChange]:
        om = old.meta
        type_changed = stat.S_IFMT(st.st_mode) != stat.S_IFMT(om.mode)
        attr_changed = (st.st_mode != om.mode or st.st_uid != om.uid or st.st_gid != om.gid)
        if stat.S_ISDIR(st.st_mode) and not type_changed:
            if st.st_ino != om.inode:
                action: str | None = "modify"
            elif attr_changed:
                action = "attrib"
            else:
                action = None
            if action is not None and not self.quiet(path):
                yield from _present(self.event(action, path, rule, old=om, new=meta_of(st)))
            if action is not None or st.st_mtime_ns != om.mtime_ns or st.st_nlink != om.nlink:
                self.store.put(path, meta_of(st), None, st.st_ctime_ns)
            return
        attr_changed = attr_changed or st.st_nlink != om.nlink
        content_meta = type_changed or st.st_ino != om.inode or st.st_size != om.size or st.st_mtime_ns != om.mtime_ns
        wants_hash = rule.hash and stat.S_ISREG(st.st_mode) and st.st_size <= rule.hash_max_bytes
        unchanged = not (content_meta or attr_changed or st.st_ctime_ns != old.ctime_ns)
        if unchanged and (not wants_hash or old.sha256 is not None):
            return  # the common case: nothing read or written
        res = self.hash(path, name, dir_fd, rule, st)
        if res is not None and res.skipped == "vanished":
            yield from self.gone(path, old)
            return
        new, sha, skipped, ctime = _state(res, st)
        # Compare what was hashed: the file may have changed between the lstat and the read.
        content_meta = (stat.S_IFMT(new.mode) != stat.S_IFMT(om.mode) or new.inode != om.inode
                        or new.size != om.size or new.mtime_ns != om.mtime_ns)
        attr_changed = new.mode != om.mode or new.uid != om.uid or new.gid != om.gid or new.nlink != om.nlink
        if sha is not None and old.sha256 is not None:
            content_changed = sha != old.sha256 or stat.S_IFMT(new.mode) != stat.S_IFMT(om.mode)
        else:
            content_changed = content_meta
        if content_changed:
            action = "modify"
        elif attr_changed or content_meta:
            action = "attrib"
        else:
            action = None  # only ctime moved (or a first hash): recorded, nothing to report
        if action is not None and not self.quiet(path):
            yield from _present(self.event(action, path, rule, old=om, new=new, sha256=sha, skipped=skipped))
        self.store.put(path, new, sha, ctime)

    # -- renames -----------------------------------------------------------------------------
    def settle(self) -> Iterator[FileChange]:
        """Pair deletes with creates of the same inode into renames, then report the rest."""
        renames: list[tuple[_Pending, _Pending]] = []
        for ino, dels in self.deletes.items():
            cands = self.creates.get(ino)
            if not cands:
                continue
            for d in list(dels):
                for c in cands:
                    if _same_object(d, c):
                        renames.append((d, c))
                        dels.remove(d)
                        cands.remove(c)
                        break
        moved_dirs = {d.path: c.path for d, c in renames if stat.S_ISDIR(d.meta.mode)}
        for d, c in sorted(renames, key=lambda dc: dc[1].path):
            if _inside_moved_dir(d.path, c.path, moved_dirs):
                self._record(d, c)
                continue
            ev = self.event("rename", c.path, c.rule, old=d.meta, new=c.meta, sha256=c.sha256, skipped=c.skipped,
                            old_path=d.path, ts=c.ts)
            if ev is None:  # no rule reports renames here: report the two halves
                yield from _present(self.event("delete", d.path, d.rule, old=d.meta, ts=d.ts))
                ev = self.event("create", c.path, c.rule, new=c.meta, sha256=c.sha256, skipped=c.skipped, ts=c.ts)
            yield from _present(ev)
            self._record(d, c)
        for c in sorted((c for cs in self.creates.values() for c in cs), key=lambda c: c.path):
            yield from _present(self.event("create", c.path, c.rule, new=c.meta, sha256=c.sha256, skipped=c.skipped,
                                           ts=c.ts))
            self._record(None, c)
        for d in sorted((d for ds in self.deletes.values() for d in ds), key=lambda d: d.path):
            yield from _present(self.event("delete", d.path, d.rule, old=d.meta, ts=d.ts))
            self._record(d, None)
        self.creates.clear()
        self.deletes.clear()

    def _record(self, gone: _Pending | None, found: _Pending | None) -> None:
        """Write a reported delete/create to the baseline (only now: see found)."""
        if gone is not None:
            self.store.delete(gone.path)
        if found is not None:
            self.store.put(found.path, found.meta, found.sha256, found.ctime_ns)

    # -- all of it ---------------------------------------------------------------------------
    def run(self) -> Iterator[FileChange]:
        tops: list[bytes] = []
        for root, _ in self.policy.roots():
            if not any(is_below(root, t) for t in tops):
                tops.append(root)
        try:
            for root in tops:
                if self.stopped():
                    break
                yield from self.scan_root(root)
                if self.stopped():
                    break
                self.p.roots += 1
                if root not in self.baselined:
                    self.store.mark_baselined(root)
            yield from self.settle()
        finally:
            self.store.flush()
            self.p.elapsed_s = time.monotonic() - self.t0
            self.p.done = not self.stopped()
            if self.report is not None:
                self.report(self.p)


def _state(res: HashResult | None, st: os.stat_result) -> tuple[FileMeta, str | None, str | None, int]:
    """(meta, sha256, hash_skipped, ctime_ns) to store and report for a file seen with lstat st."""
    if res is None:
        return meta_of(st), None, None, st.st_ctime_ns
    meta, ctime = (res.meta, res.ctime_ns) if res.meta is not None else (meta_of(st), st.st_ctime_ns)
    if res.skipped in _TRANSIENT:
        ctime = -1  # the next scan tries again
    return meta, res.sha256, res.skipped, ctime


def _exists_below(root: bytes, path: bytes) -> bool:
    """Is there an entry at path, reached from root without following a symlink below root (a
    directory replaced by a link to a look-alike tree does not count) and at any length?"""
    if path == root:
        return os.path.lexists(path)
    parts = path[len(root):].lstrip(b"/").split(b"/")
    try:
        fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        for part in parts[:-1]:
            nfd = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _present(ev: FileChange | None) -> Iterator[FileChange]:
    if ev is not None:
        yield ev


def _same_object(d: _Pending, c: _Pending) -> bool:
    if stat.S_IFMT(d.meta.mode) != stat.S_IFMT(c.meta.mode):
        return False
    if stat.S_ISDIR(d.meta.mode):
        return True
    if d.meta.size != c.meta.size or d.meta.mtime_ns != c.meta.mtime_ns:
        return False
    return d.sha256 is None or c.sha256 is None or d.sha256 == c.sha256


def _inside_moved_dir(old: bytes, new: bytes, moved: dict[bytes, bytes]) -> bool:
    """old -> new is implied by the rename of a directory above it."""
    q = old
    while q != b"/":
        q = parent_of(q)
        target = moved.get(q)
        if target is not None and new == target + old[len(q):]:
            return True
    return False


def scan(policy: Policy, store: BaselineStore, *, stop: threading.Event | None = None, budget: IoBudget | None = None,
         progress: Callable[[ScanProgress], None] | None = None,
         now_ns: Callable[[], int] = time.time_ns) -> Iterator[FileChange]:
    """Scan every root of ``policy`` against ``store`` (updating it) and yield the differences.
    ``progress`` is called every quarter second and once at the end (``done`` set if complete)."""
    return _Scanner(policy, store, stop, budget, progress, now_ns).run()

