"""fanotify(7) in FID mode through ctypes: init, marks, event parsing, file handle -> path.

No policy here. ``Fanotify`` owns one notification group (FAN_CLASS_NOTIF, events name the
directory by file handle plus the entry name: FAN_REPORT_DFID_NAME, 5.9+; with FAN_RENAME and
FAN_REPORT_TARGET_FID on 5.17+). ``parse_events`` turns one read(2) buffer into ``RawEvent``
tuples; a malformed record is counted, never raised. ``HandleResolver`` turns a directory handle
into a path: a cache first, else ``open_by_handle_at`` on a descriptor of that filesystem (found by
fsid) and a readlink of /proc/self/fd/N. The cache follows directory renames (prefix rewrite) and
is bounded (least recently used entries go).

Limits: 64-bit Linux only (the statfs layout used to read a filesystem's fsid). Resolving a handle
needs CAP_DAC_READ_SEARCH; a path resolved late (after the directory moved) is the new path.
Filesystems without file handle support (some FUSE, older overlayfs) refuse the marks (EOPNOTSUPP
/ EXDEV): the caller counts and skips them.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
import errno
import os
import struct
from collections import OrderedDict
from typing import NamedTuple

# Event bits (linux/fanotify.h).
FAN_MODIFY = 0x2
FAN_ATTRIB = 0x4
FAN_CLOSE_WRITE = 0x8
FAN_MOVED_FROM = 0x40
FAN_MOVED_TO = 0x80
FAN_CREATE = 0x100
FAN_DELETE = 0x200
FAN_DELETE_SELF = 0x400
FAN_MOVE_SELF = 0x800
FAN_Q_OVERFLOW = 0x4000
FAN_FS_ERROR = 0x8000
FAN_EVENT_ON_CHILD = 0x0800_0000
FAN_RENAME = 0x1000_0000
FAN_ONDIR = 0x4000_0000

# fanotify_init flags.
FAN_CLOEXEC = 0x1
FAN_NONBLOCK = 0x2
FAN_CLASS_NOTIF = 0x0
FAN_UNLIMITED_QUEUE = 0x10
FAN_UNLIMITED_MARKS = 0x20
FAN_REPORT_FID = 0x200
FAN_REPORT_DIR_FID = 0x400
FAN_REPORT_NAME = 0x800
FAN_REPORT_TARGET_FID = 0x1000
FAN_REPORT_DFID_NAME = FAN_REPORT_DIR_FID | FAN_REPORT_NAME
FAN_REPORT_DFID_NAME_TARGET = FAN_REPORT_DFID_NAME | FAN_REPORT_FID | FAN_REPORT_TARGET_FID

# fanotify_mark flags.
FAN_MARK_ADD = 0x1
FAN_MARK_REMOVE = 0x2
FAN_MARK_DONT_FOLLOW = 0x4
FAN_MARK_ONLYDIR = 0x8
FAN_MARK_INODE = 0x0
FAN_MARK_FILESYSTEM = 0x100

# Info record types.
INFO_FID = 1
INFO_DFID_NAME = 2
INFO_DFID = 3
INFO_OLD_DFID_NAME = 10
INFO_NEW_DFID_NAME = 12

METADATA_VERSION = 3
AT_FDCWD = -100
_O_PATH = 0o10000000

_META = struct.Struct("=IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
_INFO = struct.Struct("=BBH")  # info_type, pad, len
_U32 = struct.Struct("=I")
_FSID_OFF = 4  # fsid follows the info header
_HANDLE_OFF = 12  # struct file_handle follows the fsid: handle_bytes (u32), handle_type (i32), f_handle
_MAX_HANDLE_BYTES = 128  # MAX_HANDLE_SZ
_STATFS_SIZE = 120
_STATFS_FSID_OFF = 56  # x86_64/aarch64 struct statfs: seven longs, then f_fsid
_GONE = b"\0"  # a cached path renamed to this prefix left the view (no path holds a NUL)


class RawEvent(NamedTuple):
    """One fanotify record. Handles are ``fsid + struct file_handle`` bytes (a cache key that
    ``HandleResolver`` can open). For FAN_RENAME, ``old_dir``/``old_name`` are the source and
    ``dir``/``name`` the target; either side is None when its directory is not watched."""

    mask: int
    pid: int
    dir: bytes | None
    name: bytes | None
    fid: bytes | None
    old_dir: bytes | None
    old_name: bytes | None


def parse_events(buf: bytes) -> tuple[list[RawEvent], int]:
    """Records in one read buffer, and how many were malformed (skipped). The fd field is not
    used: groups in FID mode never carry one (closing a number from a damaged buffer could close
    an unrelated descriptor)."""
    out: list[RawEvent] = []
    bad = 0
    off, n = 0, len(buf)
    meta_size = _META.size
    while off + meta_size <= n:
        event_len, vers, _, meta_len, mask, _fd, pid = _META.unpack_from(buf, off)
        if event_len < meta_size or off + event_len > n or vers != METADATA_VERSION or meta_len < meta_size:
            return out, bad + 1  # the rest of the buffer cannot be framed
        end = off + event_len
        pos = off + meta_len
        dir_key = name = fid = old_dir = old_name = None
        ok = True
        while pos + 4 <= end:
            itype, _, ilen = _INFO.unpack_from(buf, pos)
            if ilen < 4 or pos + ilen > end:
                ok = False
                break
            if itype in (INFO_DFID_NAME, INFO_DFID, INFO_FID, INFO_OLD_DFID_NAME, INFO_NEW_DFID_NAME):
                if ilen < 20:
                    ok = False
                    break
                hend = pos + 20 + _U32.unpack_from(buf, pos + _HANDLE_OFF)[0]
                if hend > pos + ilen:
                    ok = False
                    break
                key = buf[pos + _FSID_OFF:hend]
                nm: bytes | None = None
                if itype != INFO_FID and itype != INFO_DFID:
                    raw = buf[hend:pos + ilen]
                    z = raw.find(b"\0")
                    nm = raw[:z] if z >= 0 else raw
                if itype == INFO_FID:
                    fid = key
                elif itype == INFO_OLD_DFID_NAME:
                    old_dir, old_name = key, nm
                else:
                    dir_key, name = key, nm
            pos += ilen
        if ok:
            out.append(RawEvent(mask, pid, dir_key, name, fid, old_dir, old_name))
        else:
            bad += 1
        off = end
    return out, bad


class _Libc:
    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.fanotify_init = libc.fanotify_init
        self.fanotify_init.argtypes = [ctypes.c_uint, ctypes.c_uint]
        self.fanotify_init.restype = ctypes.c_int
        self.fanotify_mark = libc.fanotify_mark
        self.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
        self.fanotify_mark.restype = ctypes.c_int
        self.open_by_handle_at = libc.open_by_handle_at
        self.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.open_by_handle_at.restype = ctypes.c_int
        self.name_to_handle_at = libc.name_to_handle_at
        self.name_to_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p,
                                           ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        self.name_to_handle_at.restype = ctypes.c_int
        self.fstatfs = libc.fstatfs
        self.fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
        self.fstatfs.restype = ctypes.c_int


_libc: _Libc | None = None


def libc() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


def _raise(what: str) -> None:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def fsid_of_fd(fd: int) -> bytes:
    """The filesystem id fanotify reports in its records (statfs f_fsid, 8 bytes)."""
    buf = ctypes.create_string_buffer(_STATFS_SIZE)
    if libc().fstatfs(fd, buf) != 0:
        _raise("fstatfs")
    return buf.raw[_STATFS_FSID_OFF:_STATFS_FSID_OFF + 8]


_AT_SYMLINK_FOLLOW = 0x400
_AT_HANDLE_FID = 0x200  # 6.5+: the identifier fanotify reports, also where handles cannot be opened
_handle_flags = [_AT_HANDLE_FID]


def file_handle(path: bytes, fsid: bytes, follow: bool = False) -> bytes:
    """``fsid + struct file_handle`` of ``path`` (on the filesystem ``fsid``), in the form records
    carry: warms the cache where handles cannot be opened (overlayfs without nfs_export)."""
    buf = ctypes.create_string_buffer(8 + _MAX_HANDLE_BYTES)
    mount_id = ctypes.c_int(0)
    while True:
        struct.pack_into("=I", buf, 0, _MAX_HANDLE_BYTES)
        flags = _handle_flags[0] | (_AT_SYMLINK_FOLLOW if follow else 0)
        if libc().name_to_handle_at(AT_FDCWD, path, buf, ctypes.byref(mount_id), flags) == 0:
            break
        if ctypes.get_errno() == errno.EINVAL and _handle_flags[0]:
            _handle_flags[0] = 0  # an older kernel: plain handles (the same bytes where both work)
            continue
        _raise("name_to_handle_at")
    nbytes = _U32.unpack_from(buf.raw, 0)[0]
    return fsid + buf.raw[:8 + nbytes]


def handle_of(path: bytes, follow: bool = False) -> bytes:
    """``file_handle`` with the fsid looked up (one more open and statfs)."""
    fd = os.open(path, _O_PATH | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))
    try:
        fsid = fsid_of_fd(fd)
    finally:
        os.close(fd)
    return file_handle(path, fsid, follow)


class Fanotify:
    """One fanotify group: ``fd`` is non-blocking, for poll/select; ``read`` returns raw bytes."""

    def __init__(self, init_flags: int, event_f_flags: int = os.O_RDONLY | os.O_LARGEFILE) -> None:
        fd = libc().fanotify_init(init_flags | FAN_CLOEXEC | FAN_NONBLOCK, event_f_flags)
        if fd < 0:
            _raise("fanotify_init")
        self.fd = fd
        self.init_flags = init_flags

    def mark(self, path: bytes, mask: int, flags: int = FAN_MARK_INODE) -> None:
        if self.fd < 0:
            raise OSError(errno.EBADF, "fanotify group closed")
        if libc().fanotify_mark(self.fd, FAN_MARK_ADD | flags, mask, AT_FDCWD, path) != 0:
            _raise(f"fanotify_mark {path!r}")

    def unmark(self, path: bytes, mask: int, flags: int = FAN_MARK_INODE) -> None:
        if libc().fanotify_mark(self.fd, FAN_MARK_REMOVE | flags, mask, AT_FDCWD, path) != 0:
            _raise(f"fanotify_mark remove {path!r}")

    def read(self, size: int = 256 * 1024) -> bytes:
        """Up to ``size`` bytes of whole records; b"" when the queue is empty."""
        try:
            return os.read(self.fd, size)
        except BlockingIOError:
            return b""

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)


def try_init(flags: int) -> str:
    """"" if a group with these flags can be created here, else why not (the probe)."""
    try:
        Fanotify(flags).close()
    except OSError as e:
        return os.strerror(e.errno or 0) if e.errno else str(e)
    except AttributeError:
        return "the C library has no fanotify_init"
    return ""


def supported_init_flags() -> int:
    """The richest FID flags this kernel accepts: DFID_NAME plus child/target FIDs (5.17+), else
    DFID_NAME plus FID (5.9+), else DFID_NAME; 0 when none works."""
    for flags in (FAN_REPORT_DFID_NAME_TARGET, FAN_REPORT_DFID_NAME | FAN_REPORT_FID, FAN_REPORT_DFID_NAME):
        if not try_init(FAN_CLASS_NOTIF | flags):
            return flags
    return 0


def rename_supported(group: Fanotify, path: bytes) -> bool:
    """Whether the kernel knows FAN_RENAME (5.17+): a mark with it on ``path`` is accepted."""
    try:
        group.mark(path, FAN_RENAME | FAN_ONDIR)
        group.unmark(path, FAN_RENAME | FAN_ONDIR)
    except OSError:
        return False
    return True


class HandleResolver:
    """Directory handle -> path, cached. ``add_filesystem`` must be called with a path on each
    filesystem whose handles will be resolved (the policy roots).

    Directory renames are applied lazily: ``moved`` appends to a log (O(1)), and an entry is
    brought up to date when it is next read (O(depth) per step); past ``RENAME_LOG`` renames the
    whole cache is brought up to date once and the log restarts. A rename loop in a watched
    directory therefore costs about O(1) per rename, not a pass over every cached path."""

    RENAME_LOG = 1024

    def __init__(self, max_entries: int = 65_536) -> None:
        self.max_entries = max_entries
        self.cache: OrderedDict[bytes, tuple[bytes, int]] = OrderedDict()  # key -> (path, generation)
        self.renames: list[tuple[bytes, bytes]] = []  # (old, new) since generation ``_base``
        self._by_old: dict[bytes, list[int]] = {}  # old -> its positions in ``renames``
        self._base = 0
        self.mount_fds: dict[bytes, int] = {}  # fsid -> descriptor of that filesystem's top directory
        self.hits = 0
        self.misses = 0
        self.failures = 0

    @property
    def generation(self) -> int:
        return self._base + len(self.renames)

    def add_filesystem(self, path: bytes) -> bytes:
        """Registers the filesystem holding ``path`` (its topmost directory on the same device, so
        readlink shows full paths); returns its fsid."""
        top = _mount_top(path)
        fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # O_PATH is refused (EBADF)
        fsid = fsid_of_fd(fd)
        if fsid in self.mount_fds:
            os.close(fd)
        else:
            self.mount_fds[fsid] = fd
        return fsid

    def remember(self, key: bytes, path: bytes) -> None:
        self.cache[key] = (path, self.generation)
        self.cache.move_to_end(key)
        if len(self.cache) > self.max_entries:
            self.cache.popitem(last=False)

    def forget(self, key: bytes) -> None:
        self.cache.pop(key, None)

    def forget_path(self, path: bytes) -> None:
        """A directory left the view (its new name is unknown): it and everything below it resolve
        afresh (or not at all) from now on."""
        self.moved(path, _GONE)

    def moved(self, old: bytes, new: bytes) -> None:
        """A directory was renamed: it and every cached path below it follow (lazily)."""
        self._by_old.setdefault(old, []).append(len(self.renames))
        self.renames.append((old, new))
        if len(self.renames) >= self.RENAME_LOG:
            gen = self.generation
            for key, (p, g) in list(self.cache.items()):
                self.cache[key] = (self._apply(p, g), gen)
            self._base = gen
            self.renames = []
            self._by_old = {}

    def _apply(self, path: bytes, gen: int) -> bytes:
        """Renames logged since ``gen`` that concern path, in order: each step looks up the path's
        ancestors in the log's index (O(depth)), never the whole log."""
        pos = gen - self._base
        by_old = self._by_old
        while True:
            best = -1
            q = path
            while q:
                idxs = by_old.get(q)
                if idxs is not None:
                    i = bisect.bisect_left(idxs, pos)
                    if i < len(idxs) and (best < 0 or idxs[i] < best):
                        best = idxs[i]
                cut = q.rfind(b"/")
                q = q[:cut] if cut > 0 else b""
            if best < 0:
                return path
            old, new = self.renames[best]
            path = new + path[len(old):]
            pos = best + 1

    def path(self, key: bytes) -> bytes | None:
        """The directory's current path, or None (gone, other filesystem, not resolvable)."""
        entry = self.cache.get(key)
        if entry is not None:
            p, gen = entry
            if gen != self.generation:
                p = self._apply(p, gen)
                self.cache[key] = (p, self.generation)
            if p.startswith(b"/"):  # else below a directory that left the view
                self.hits += 1
                self.cache.move_to_end(key)
                return p
            del self.cache[key]
        self.misses += 1
        found = self.open_path(key)
        if found is None:
            self.failures += 1
            return None
        self.remember(key, found)
        return found

    def open_path(self, key: bytes) -> bytes | None:
        """open_by_handle_at + readlink, uncached. None for a deleted or unknown object."""
        mfd = self.mount_fds.get(key[:8])
        if mfd is None:
            return None
        fd = libc().open_by_handle_at(mfd, key[8:], _O_PATH | os.O_CLOEXEC)
        if fd < 0:
            return None
        try:
            link = os.readlink(f"/proc/self/fd/{fd}".encode())
        except OSError:
            return None
        finally:
            os.close(fd)
        if link.endswith(b" (deleted)") or not link.startswith(b"/"):
            return None
        return link

    def close(self) -> None:
        for fd in self.mount_fds.values():
            os.close(fd)
        self.mount_fds.clear()
        self.cache.clear()


def _mount_top(path: bytes) -> bytes:
    """The highest ancestor of ``path`` on the same device: the mount point (bind mounts of one
    filesystem share a device; the topmost wins, which shows the longest path)."""
    p = os.path.abspath(path)
    while not os.path.isdir(p):
        p = os.path.dirname(p)
    dev = os.stat(p).st_dev
    while p != b"/":
        parent = os.path.dirname(p)
        try:
            if os.stat(parent).st_dev != dev:
                break
        except OSError:
            break
        p = parent
    return p
