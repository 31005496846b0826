"""Reading files of one scope's root file system (the host "/" or a container's /proc/PID/root).

A container's files are hostile input: an absolute symlink inside it (``/var/lib/dpkg -> /etc``)
walked through /proc/PID/root would be followed from the *agent's* root, and a FIFO or /dev/zero
planted as a package database would block or never end a read. So every open here:

- resolves the path inside the scope's root: openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
  on a directory fd of the root (kernel >= 5.6); where openat2 is missing, a component-wise
  walk that re-roots absolute symlinks (racy against a container that swaps a directory for a
  symlink mid-walk: documented limit of the fallback);
- opens with O_NONBLOCK | O_NOCTTY, then reads only a regular file (fstat), up to a size bound.

``resolve`` (a realpath inside the root) is for naming files the way the kernel names them in
/proc/PID/maps of the scope's processes; it never opens anything.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import posixpath
import stat
from collections.abc import Iterator

_SYS_OPENAT2 = 437  # the same number on every architecture (unified syscall table)
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_MAX_LINKS = 40
DEFAULT_MAX_BYTES = 64 << 20


class NotRegular(OSError):
    """The path names something other than a regular file (FIFO, device, directory...)."""


class TooBig(OSError):
    """The file is larger than the caller allows."""


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


_libc: ctypes.CDLL | None
try:
    _libc = ctypes.CDLL(None, use_errno=True)
    _syscall = _libc.syscall
    _syscall.restype = ctypes.c_long
except (OSError, AttributeError):  # pragma: no cover - no libc symbol table
    _libc = None

_openat2_works: bool | None = None  # learnt at first use


def _openat2(dirfd: int, path: str, flags: int) -> int:
    global _openat2_works
    if _libc is None:
        raise OSError(errno.ENOSYS, "no libc")
    how = _OpenHow(flags | os.O_CLOEXEC, 0, _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS)
    fd = _syscall(_SYS_OPENAT2, ctypes.c_int(dirfd), os.fsencode(path), ctypes.byref(how),
                  ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        if err == errno.ENOSYS and _openat2_works is None:  # old kernel, or a seccomp filter
            _openat2_works = False
        raise OSError(err, os.strerror(err), path)
    _openat2_works = True
    return int(fd)


def openat2_usable() -> bool:
    """False once openat2 answered ENOSYS (kernel < 5.6, or filtered by seccomp)."""
    return _openat2_works is not False


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p and p != "."]


class RootFS:
    """Files under one root directory, resolved as if that directory were "/"."""

    def __init__(self, root: str, use_openat2: bool = True) -> None:
        self.root = root.rstrip("/") or "/"
        self.use_openat2 = use_openat2
        self._fd: int | None = None

    # -- life cycle --------------------------------------------------------------------------
    def _root_fd(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> RootFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            self.close()

    # -- resolution --------------------------------------------------------------------------
    def _host(self, inner: str) -> str:
        return self.root + inner if self.root != "/" else inner

    def resolve(self, path: str, follow_last: bool = True) -> str:
        """The symlink-free absolute path (inside the root) that ``path`` names; missing
        components are kept as they are. Raises OSError(ELOOP) past 40 symlinks."""
        done: list[str] = []
        todo = _parts(path)
        todo.reverse()
        links = 0
        while todo:
            name = todo.pop()
            if name == "..":
                if done:
                    done.pop()
                continue
            candidate = "/" + "/".join([*done, name])
            if not todo and not follow_last:
                done.append(name)
                break
            try:
                st = os.lstat(self._host(candidate))
            except OSError:
                done.append(name)
                continue
            if not stat.S_ISLNK(st.st_mode):
                done.append(name)
                continue
            links += 1
            if links > _MAX_LINKS:
                raise OSError(errno.ELOOP, "too many symlinks", path)
            target = os.readlink(self._host(candidate))
            if target.startswith("/"):
                done = []
            more = _parts(target)
            more.reverse()
            todo.extend(more)
        return "/" + "/".join(done)

    # -- opening and reading -------------------------------------------------------------------

    def resolve_all(self, paths: list[str]) -> list[str]:
        """Each path resolved inside the root, in order, without duplicates; unresolvable ones are left out."""
        out: list[str] = []
        for path in paths:
            try:
                real = self.resolve(path)
            except OSError:
                continue
            if real not in out:
                out.append(real)
        return out

    def open(self, path: str, flags: int = os.O_RDONLY) -> int:
        # O_PATH takes no other flags under openat2 (EINVAL); real opens never block or take a tty.
        flags |= os.O_CLOEXEC if flags & os.O_PATH else os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        rel = path.lstrip("/") or "."
        if self.use_openat2 and openat2_usable():
            try:
                return _openat2(self._root_fd(), rel, flags)
            except OSError as e:
                if openat2_usable() or e.errno != errno.ENOSYS:
                    raise
        # Fallback: resolve ourselves, then refuse a symlink at the last step.
        return os.open(self._host(self.resolve(path)), flags | os.O_NOFOLLOW)

    def read(self, path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
        """The content of a regular file, or NotRegular/TooBig/OSError."""
        fd = self.open(path)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotRegular(errno.EINVAL, "not a regular file", path)
            if st.st_size > max_bytes:
                raise TooBig(errno.EFBIG, f"larger than {max_bytes} bytes", path)
            chunks: list[bytes] = []
            total = 0
            while True:  # the file may grow while we read: stop at the bound anyway
                chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > max_bytes:
                    raise TooBig(errno.EFBIG, f"larger than {max_bytes} bytes", path)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def read_text(self, path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
        return self.read(path, max_bytes).decode("utf-8", "backslashreplace")

    def stat(self, path: str) -> os.stat_result | None:
        """stat (following symlinks inside the root), or None when it does not exist or cannot be read."""
        try:
            fd = self.open(path, os.O_PATH)
        except OSError:
            return None
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def is_dir(self, path: str) -> bool:
        st = self.stat(path)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def is_file(self, path: str) -> bool:
        st = self.stat(path)
        return st is not None and stat.S_ISREG(st.st_mode)

    def listdir(self, path: str) -> list[str]:
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return os.listdir(fd)
        finally:
            os.close(fd)

    def scandir(self, path: str) -> Iterator[tuple[str, bool, bool]]:
        """(name, is_dir, is_symlink) of each entry, without following symlinks."""
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            with os.scandir(fd) as it:
                for e in it:
                    try:
                        yield e.name, e.is_dir(follow_symlinks=False), e.is_symlink()
                    except OSError:
                        continue
        finally:
            os.close(fd)

    def readlink(self, path: str) -> str | None:
        """The target of a symlink at ``path`` (its parent resolved inside the root), else None."""
        parent, name = posixpath.split(path.rstrip("/"))
        try:
            fd = self.open(parent or "/", os.O_PATH | os.O_DIRECTORY)
        except OSError:
            return None
        try:
            return os.readlink(name, dir_fd=fd)
        except OSError:
            return None
        finally:
            os.close(fd)
