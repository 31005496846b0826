"""Which process holds a socket (inode -> pid), and which network namespaces processes use.

The kernel does not say who owns a socket; /proc/PID/fd does, one readlink per descriptor, so
``SocketOwners`` scans incrementally and only when asked about inodes it does not know:

1. pids never scanned (new processes): every descriptor;
2. scanned pids whose descriptor count changed (one stat of /proc/PID/fd: its size is the
   count on kernel 6.2+; older kernels report 0, so every pid is listed), or that held a
   socket which has since closed (the number is likely reused): a table of at most
   ``SMALL_TABLE`` descriptors is read again whole, a bigger one only where descriptors are
   new or pointed at a dead socket;
3. what is still unknown: a round-robin re-read of every descriptor of every pid, bounded by
   ``readlink_budget`` per call, resumed at the next call. In a big table, a file's descriptor
   number reused by a socket while the count stays the same is only found here.

Every socket found on the way is cached, so most calls find everything in step 1 or 2. A socket
shared by several processes (fork, descriptor passing) is attributed to the first one found.
``rounds`` counts completed round-robin passes: an inode still unknown once ``rounds`` reaches
``generation()`` taken when it was first asked for (a full pass that began after that) has no
owner we can see (it was closed, its owner is in another
pid namespace we cannot list, or, as non-root, belongs to another user: EACCES is counted).

Hostile input: pids exiting mid-scan, descriptors closing between listing and readlink, huge
descriptor tables (only ``max_fds_per_pid`` are read, the pid is counted as truncated) are
counted, never raised. ``NetnsWatch`` reads /proc/PID/ns/net for new pids (and every pid every
``refresh_s``, to catch a process that moved with unshare/setns) plus the names in /run/netns.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

_GONE = (FileNotFoundError, ProcessLookupError)
SMALL_TABLE = 64
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


@dataclass(slots=True)
class _PidFds:
    count: int = -1  # descriptor count at the last listing; -1: never scanned
    fds: dict[int, int] = field(default_factory=dict)  # fd -> socket inode, 0 for anything else
    # Inodes among fds that were live TCP/UDP sockets when read: when one of them is gone, its
    # descriptor number is read again. Other sockets (unix, netlink) are not re-read.
    sockets: frozenset[int] = frozenset()
    denied: bool = False


@dataclass(slots=True)
class OwnerStats:
    readlinks: int = 0
    listings: int = 0
    pids_gone: int = 0  # exited while we scanned them
    denied: int = 0  # EACCES on /proc/PID/fd (non-root: another user's process)
    truncated: int = 0  # descriptor tables longer than max_fds_per_pid
    errors: int = 0


class SocketOwners:
    def __init__(self, proc_root: str = "/proc", max_fds_per_pid: int = 100_000,
                 readlink_budget: int = 20_000) -> None:
        self.root = proc_root
        self.max_fds_per_pid = max_fds_per_pid
        self.readlink_budget = readlink_budget
        self.owners: dict[int, int] = {}  # socket inode -> pid
        self.pids: dict[int, _PidFds] = {}
        self.stats = OwnerStats()
        self.rounds = 0  # completed round-robin passes (step 3)
        self._rr: list[int] = []
        self._rr_pos = 0
        self._budget = 0
        self._fresh: set[int] = set()
        self._self_pid = os.getpid()

    # -- process list ----------------------------------------------------------------------

    def refresh(self) -> tuple[list[int], list[int]]:
        """Re-list /proc: (new pids, gone pids). Sockets cached for gone pids are forgotten."""
        current = {int(n) for n in os.listdir(self.root) if n.isdigit()}
        known = self.pids
        gone = [p for p in known if p not in current]
        new = [p for p in current if p not in known]
        for p in gone:
            self._forget_pid(p)
        for p in new:
            known[p] = _PidFds()
        return new, gone

    def _forget_pid(self, pid: int) -> None:
        st = self.pids.pop(pid, None)
        if st is None:
            return
        owners = self.owners
        for ino in st.fds.values():
            if ino and owners.get(ino) == pid:
                del owners[ino]

    def prune(self, live: set[int]) -> None:
        """Forget owners of sockets that no longer exist (those found since the last prune are
        kept once: they may have been created after ``live`` was read)."""
        fresh = self._fresh
        dead = [ino for ino in self.owners if ino not in live and ino not in fresh]
        for ino in dead:
            del self.owners[ino]
        self._fresh = set()

    def owner(self, inode: int) -> int | None:
        return self.owners.get(inode)

    # -- lookups ---------------------------------------------------------------------------

    def resolve(self, wanted: Iterable[int], live: set[int] | None = None, budget: int | None = None,
                round_robin: bool = True) -> dict[int, int]:
        """Owners of ``wanted`` inodes that could be found now (inode -> pid). ``live`` is every
        socket inode that exists now: a cached descriptor pointing elsewhere is read again.
        ``budget`` overrides ``readlink_budget``; ``round_robin`` False skips step 3."""
        live = live if live is not None else set()
        found: dict[int, int] = {}
        remaining: set[int] = set()
        for ino in wanted:
            pid = self.owners.get(ino)
            if pid is None:
                remaining.add(ino)
            else:
                found[ino] = pid
        if not remaining:
            return found
        total = self.readlink_budget if budget is None else budget
        # Steps 1 and 2 get three quarters: under heavy churn step 3 still advances, so an
        # unknown inode is given up in bounded time.
        self._budget = total - total // 4
        # 1. never-scanned pids, newest (highest) first: the likeliest owners of new sockets.
        for pid in sorted((p for p, st in self.pids.items() if st.count < 0), reverse=True):
            if self._budget <= 0 or not remaining:
                break
            self._scan(pid, full=True, live=live)
            self._take(remaining, found)
        # 2. pids whose table changed: socket holders first.
        if remaining and self._budget > 0:
            scanned = [p for p, st in self.pids.items() if st.count >= 0 and not st.denied]
            scanned.sort(key=lambda p: -len(self.pids[p].sockets))
            for pid in scanned:
                if self._budget <= 0 or not remaining:
                    break
                if self._changed(pid, live):
                    # A small table is read whole: a closed file's number reused by a socket
                    # looks unchanged otherwise. A big one: only new and dead-socket numbers.
                    self._scan(pid, full=len(self.pids[pid].fds) <= SMALL_TABLE, live=live)
                    self._take(remaining, found)
        # 3. round robin over everything, re-reading every descriptor; at most one pass per call.
        self._budget += total // 4
        started = not round_robin
        while remaining and self._budget > 0 and round_robin:
            if self._rr_pos >= len(self._rr):
                if started or not self.pids:
                    break
                started = True
                self._rr, self._rr_pos = sorted(self.pids), 0
            pid = self._rr[self._rr_pos]
            self._rr_pos += 1
            st = self.pids.get(pid)
            if st is not None and not st.denied:
                self._scan(pid, full=True, live=live)
                self._take(remaining, found)
            if self._rr_pos >= len(self._rr):
                self.rounds += 1
                self._rr, self._rr_pos = [], 0
        return found

    def generation(self) -> int:
        """The value ``rounds`` reaches once every pid has been fully re-read after now: an inode
        asked for now and still unknown by then has no owner we can see."""
        return self.rounds + (2 if self._rr_pos else 1)

    def _take(self, remaining: set[int], found: dict[int, int]) -> None:
        owners = self.owners
        for ino in [i for i in remaining if i in owners]:
            found[ino] = owners[ino]
            remaining.discard(ino)

    def _changed(self, pid: int, live: set[int]) -> bool:
        st = self.pids[pid]
        if any(ino not in live for ino in st.sockets):
            return True  # a socket it held is gone: its descriptor number may hold a new one
        try:
            size = os.stat(f"{self.root}/{pid}/fd").st_size
        except _GONE:
            self.stats.pids_gone += 1
            self._forget_pid(pid)
            return False
        except OSError:
            return True
        if size == 0 and st.count > 0:
            return True  # kernel before 6.2: the size says nothing
        return size != st.count

    def _scan(self, pid: int, full: bool, live: set[int]) -> None:
        st = self.pids.get(pid)
        if st is None:
            return
        stats = self.stats
        try:
            dfd = os.open(f"{self.root}/{pid}/fd", _DIR_FLAGS)
        except _GONE:
            stats.pids_gone += 1
            self._forget_pid(pid)
            return
        except PermissionError:
            if not st.denied:
                stats.denied += 1
            st.denied, st.count = True, 0
            return
        except OSError:
            stats.errors += 1
            return
        try:
            stats.listings += 1
            names = self._list(dfd)
            old = st.fds
            fds: dict[int, int] = {}
            sockets: list[int] = []
            owners = self.owners
            old_inet = st.sockets
            readlink = os.readlink
            own = str(dfd) if pid == self._self_pid else ""
            for name in names:
                if name == own:
                    continue  # our own directory descriptor: closed right after this scan
                try:
                    fd = int(name)
                except ValueError:
                    continue
                prev = old.get(fd)
                if not full and prev is not None and (prev not in old_inet or prev in live):
                    fds[fd] = prev
                    if prev in old_inet:
                        sockets.append(prev)
                    continue
                self._budget -= 1
                stats.readlinks += 1
                try:
                    target = readlink(name, dir_fd=dfd)
                except FileNotFoundError:
                    continue  # closed since the listing
                except PermissionError:
                    raise  # the whole table is closed to us (ptrace access check): stop here
                except OSError as e:
                    if e.errno == errno.ESRCH:
                        raise ProcessLookupError(e.errno, e.strerror) from e
                    stats.errors += 1
                    continue
                if target.startswith("socket:["):
                    try:
                        ino = int(target[8:-1])
                    except ValueError:
                        ino = 0
                    fds[fd] = ino
                    if ino:
                        if ino in live:
                            sockets.append(ino)
                        holder = owners.get(ino)
                        if holder is None or holder not in self.pids:
                            owners[ino] = pid
                            self._fresh.add(ino)
                else:
                    fds[fd] = 0
            st.fds, st.count, st.sockets, st.denied = fds, len(names), frozenset(sockets), False
        except _GONE:
            stats.pids_gone += 1
            self._forget_pid(pid)
        except PermissionError:
            if not st.denied:
                stats.denied += 1
            st.denied, st.count = True, 0
        except OSError:
            stats.errors += 1
        finally:
            os.close(dfd)

    def _list(self, dfd: int) -> list[str]:
        size = os.fstat(dfd).st_size
        if size <= self.max_fds_per_pid:
            names = os.listdir(dfd)
            if len(names) <= self.max_fds_per_pid:
                return names
            names = names[: self.max_fds_per_pid]
        else:
            with os.scandir(dfd) as it:
                names = [e.name for e in itertools.islice(it, self.max_fds_per_pid)]
        self.stats.truncated += 1
        return names


@dataclass(frozen=True, slots=True)
class NetnsRef:
    inode: int
    path: str  # /proc/PID/ns/net or /run/netns/NAME: what setns opens
    pid: int  # a process in it (0 for a named namespace nobody runs in)


def netns_of(proc_root: str, pid: int) -> int:
    """The network namespace inode of ``pid``; 0 if it is gone or unreadable."""
    try:
        target = os.readlink(f"{proc_root}/{pid}/ns/net")
    except OSError:
        return 0
    if not target.startswith("net:["):
        return 0
    try:
        return int(target[5:-1])
    except ValueError:
        return 0


class NetnsWatch:
    """The distinct network namespaces of running processes (and of /run/netns names)."""

    def __init__(self, proc_root: str = "/proc", refresh_s: float = 10.0, named_dir: str = "/run/netns") -> None:
        self.root = proc_root
        self.refresh_s = refresh_s
        self.named_dir = named_dir
        self.pid_ns: dict[int, int] = {}
        self.named: dict[int, str] = {}
        self._next_full = 0.0

    def update(self, pids: Iterable[int], new: Iterable[int], gone: Iterable[int]) -> dict[int, NetnsRef]:
        """Namespaces in use now: inode -> how to enter it. ``pids`` is every pid, ``new`` and
        ``gone`` the changes since the last call (SocketOwners.refresh gives both)."""
        for p in gone:
            self.pid_ns.pop(p, None)
        now = time.monotonic()
        todo = new
        if now >= self._next_full:
            todo = pids
            self._next_full = now + self.refresh_s
            self.named = self._named()
        for p in todo:
            ns = netns_of(self.root, p)
            if ns:
                self.pid_ns[p] = ns
            else:
                self.pid_ns.pop(p, None)
        out: dict[int, NetnsRef] = {}
        for p, ns in self.pid_ns.items():
            ref = out.get(ns)
            if ref is None or p < ref.pid:
                out[ns] = NetnsRef(ns, f"{self.root}/{p}/ns/net", p)
        for ns, path in self.named.items():
            if ns not in out:
                out[ns] = NetnsRef(ns, path, 0)
        return out

    def _named(self) -> dict[int, str]:
        out: dict[int, str] = {}
        with contextlib.suppress(OSError), os.scandir(self.named_dir) as it:
            for e in it:
                with contextlib.suppress(OSError):
                    out[os.stat(e.path).st_ino] = e.path
        return out
