"""Plain readers of /proc with an injectable root.

No policy here. This is the one place where racy /proc reads are translated: a process that
vanished (ENOENT, ESRCH) raises ``ProcessGone``; other OSErrors propagate. Text read from a
process (argv, comm, paths) is untrusted: bytes that are not UTF-8 are kept as backslash
escapes, so every string is valid for JSON and nothing is silently lost.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass

from heron.schema.events import Process, process_key

ARGV_MAX_BYTES = 32 * 1024
# The schema's bound on argv items (heron.schema.events.ArgvList): a longer argv is cut here and
# flagged, or the platform would refuse the whole batch it travels in.
ARGV_MAX_ITEMS = 65_536
_GONE = {errno.ENOENT, errno.ESRCH}


class ProcessGone(Exception):
    """The process exited (or was never there) while we read it."""


def decode(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def split_argv(raw: bytes, limit: int = ARGV_MAX_BYTES) -> tuple[list[str], bool]:
    """NUL-separated argv bytes -> (argv, truncated)."""
    truncated = len(raw) > limit
    if truncated:
        raw = raw[:limit]
    if raw.endswith(b"\0"):
        raw = raw[:-1]
    if not raw:
        return [], truncated
    parts = raw.split(b"\0", ARGV_MAX_ITEMS)
    if len(parts) > ARGV_MAX_ITEMS:
        parts, truncated = parts[:ARGV_MAX_ITEMS], True
    return [decode(a) for a in parts], truncated


@dataclass(frozen=True)
class Stat:
    comm: str
    state: str
    ppid: int
    start_ticks: int


class ProcFS:
    def __init__(self, root: str = "/proc") -> None:
        self.root = root

    def _path(self, pid: int, name: str) -> str:
        return f"{self.root}/{pid}/{name}"

    def _read(self, pid: int, name: str) -> bytes:
        try:
            with open(self._path(pid, name), "rb") as f:
                return f.read()
        except OSError as e:
            if e.errno in _GONE:
                raise ProcessGone(pid) from e
            raise

    def pids(self) -> list[int]:
        return [int(n) for n in os.listdir(self.root) if n.isdigit()]

    def stat(self, pid: int) -> Stat:
        raw = self._read(pid, "stat")
        # comm may contain spaces and parentheses: it ends at the last ')'.
        lpar, rpar = raw.find(b"("), raw.rfind(b")")
        if lpar < 0 or rpar < 0:
            raise ProcessGone(pid)
        rest = raw[rpar + 2 :].split()
        return Stat(decode(raw[lpar + 1 : rpar]), decode(rest[0]), int(rest[1]), int(rest[19]))

    def status_ids(self, pid: int) -> tuple[list[int], list[int]]:
        """(uids, gids): real, effective, saved, fs."""
        uids: list[int] = []
        gids: list[int] = []
        for line in self._read(pid, "status").splitlines():
            if line.startswith(b"Uid:"):
                uids = [int(x) for x in line.split()[1:]]
            elif line.startswith(b"Gid:"):
                gids = [int(x) for x in line.split()[1:]]
                break
        return uids, gids

    def cmdline(self, pid: int, limit: int = ARGV_MAX_BYTES) -> tuple[list[str], bool]:
        return split_argv(self._read(pid, "cmdline"), limit)

    def readlink(self, pid: int, name: str) -> str:
        try:
            target = os.readlink(self._path(pid, name).encode())
        except OSError as e:
            if e.errno in _GONE:
                raise ProcessGone(pid) from e
            return ""  # kernel threads have no exe; EACCES on other namespaces
        return decode(target.removesuffix(b" (deleted)"))

    def exe(self, pid: int) -> str:
        return self.readlink(pid, "exe")

    def cwd(self, pid: int) -> str:
        return self.readlink(pid, "cwd")

    def loginuid(self, pid: int) -> int | None:
        try:
            v = int(self._read(pid, "loginuid"))
        except (ProcessGone, OSError, ValueError):
            return None
        return None if v == 0xFFFFFFFF else v

    def cgroup(self, pid: int) -> str:
        return decode(self._read(pid, "cgroup"))

    def process(self, pid: int, boot_id: str, argv_limit: int = ARGV_MAX_BYTES) -> Process:
        """Everything /proc says about one process. Raises ProcessGone if it went away."""
        st = self.stat(pid)
        argv, truncated = self.cmdline(pid, argv_limit)
        uids, gids = self.status_ids(pid)
        exe = self.exe(pid)
        # Re-check identity: if the pid was reused between reads, the start time differs.
        if self.stat(pid).start_ticks != st.start_ticks:
            raise ProcessGone(pid)
        return Process(
            key=process_key(boot_id, pid, st.start_ticks),
            pid=pid,
            ppid=st.ppid,
            start_ticks=st.start_ticks,
            exe=exe,
            comm=st.comm,
            argv=argv,
            argv_truncated=truncated,
            cwd=self.cwd(pid) or None,
            uid=uids[0] if uids else -1,
            euid=uids[1] if len(uids) > 1 else -1,
            gid=gids[0] if gids else -1,
            egid=gids[1] if len(gids) > 1 else -1,
            auid=self.loginuid(pid),
            cgroup=self.cgroup(pid),
        )
