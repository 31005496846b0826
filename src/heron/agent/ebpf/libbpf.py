"""The system's libbpf (libbpf.so.1) through ctypes: just what heron's loaders need.

``BpfObject`` owns one opened object: programs are chosen with ``set_autoload`` before
``load``, attached with ``attach``, and ``close`` destroys every link and then the object (the
kernel frees programs and maps when the last fd goes). libbpf's own log is routed into the
``heron.agent.ebpf.libbpf`` logger and the messages of the last failed call are kept on the
raised ``LibbpfError``, so a verifier refusal is readable in ``heron doctor``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import threading
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

_LIB_NAMES = ("libbpf.so.1", "libbpf.so")
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_LEVELS = (logging.WARNING, logging.INFO, logging.DEBUG)  # LIBBPF_WARN, _INFO, _DEBUG


class LibbpfError(OSError):
    """A libbpf call failed; ``messages`` holds what libbpf logged during it."""

    def __init__(self, what: str, err: int, messages: list[str] | None = None) -> None:
        self.messages = messages or []
        detail = f": {self.messages[-1]}" if self.messages else ""
        super().__init__(err, f"{what} failed: {os.strerror(err)}{detail}")


class _Lib:
    """The loaded library with argument/return types declared once."""

    def __init__(self, lib: ctypes.CDLL, libc: ctypes.CDLL) -> None:
        self.lib = lib
        self.libc = libc
        vp, cp, ci, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t
        sigs: dict[str, tuple[list[type], type | None]] = {
            "bpf_object__open_file": ([cp, vp], vp),
            "bpf_object__load": ([vp], ci),
            "bpf_object__close": ([vp], None),
            "bpf_object__find_program_by_name": ([vp, cp], vp),
            "bpf_object__find_map_by_name": ([vp, cp], vp),
            "bpf_program__set_autoload": ([vp, ctypes.c_bool], ci),
            "bpf_program__attach": ([vp], vp),
            "bpf_program__fd": ([vp], ci),
            "bpf_link__destroy": ([vp], ci),
            "bpf_map__fd": ([vp], ci),
            "bpf_map__max_entries": ([vp], ctypes.c_uint32),
            "bpf_map__set_max_entries": ([vp, ctypes.c_uint32], ci),
            "bpf_map__value_size": ([vp], ctypes.c_uint32),
            "bpf_map_update_elem": ([ci, vp, vp, ctypes.c_uint64], ci),
            "bpf_map_lookup_elem": ([ci, vp, vp], ci),
            "bpf_map_delete_elem": ([ci, vp], ci),
            "libbpf_get_error": ([vp], ctypes.c_long),
            "libbpf_set_print": ([_PRINT_FN], vp),
            "libbpf_num_possible_cpus": ([], ci),
            "bpf_program__attach_cgroup": ([vp, ci], vp),
            "bpf_program__attach_iter": ([vp, vp], vp),
            "bpf_link__fd": ([vp], ci),
            "bpf_iter_create": ([ci], ci),
            "bpf_map_lookup_batch": ([ci, vp, vp, vp, vp, ctypes.POINTER(ctypes.c_uint32), vp], ci),
            "bpf_map_delete_batch": ([ci, vp, ctypes.POINTER(ctypes.c_uint32), vp], ci),
        }
        for name, (args, res) in sigs.items():
            fn = getattr(lib, name)
            fn.argtypes = args
            fn.restype = res
        libc.vsnprintf.argtypes = [ctypes.c_char_p, sz, cp, vp]
        libc.vsnprintf.restype = ci


_lib: _Lib | None = None
_lib_error: str | None = None
_init_lock = threading.Lock()
# Messages libbpf logged in the current thread's libbpf call (see _capture).
_tls = threading.local()


def _on_print(level: int, fmt: bytes | None, args: int | None) -> int:
    assert _lib is not None
    if level >= 2 and not log.isEnabledFor(logging.DEBUG):
        return 0  # the verifier's debug chatter is only formatted when someone listens
    buf = ctypes.create_string_buffer(1024)
    _lib.libc.vsnprintf(buf, len(buf), fmt, args)
    msg = buf.value.decode("utf-8", "backslashreplace").rstrip()
    pylevel = _LEVELS[level] if 0 <= level < len(_LEVELS) else logging.DEBUG
    log.log(pylevel, "%s", msg)
    sink: list[str] | None = getattr(_tls, "messages", None)
    if sink is not None and msg and level <= 1:
        sink.append(msg)
    return 0


_print_cb = _PRINT_FN(_on_print)  # kept alive for the life of the process


def lib() -> _Lib:
    """The loaded libbpf; raises OSError with the reason when it cannot be loaded."""
    global _lib, _lib_error
    with _init_lock:
        if _lib is not None:
            return _lib
        if _lib_error is not None:
            raise OSError(errno.ENOENT, _lib_error)
        names = [*_LIB_NAMES, ctypes.util.find_library("bpf") or ""]
        for name in filter(None, names):
            try:
                cdll = ctypes.CDLL(name, use_errno=True)
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                _lib = _Lib(cdll, libc)
            except (OSError, AttributeError) as e:
                _lib_error = f"libbpf not usable ({name}): {e}"
                continue
            _lib.lib.libbpf_set_print(_print_cb)
            return _lib
        _lib_error = _lib_error or "libbpf.so.1 not found (install libbpf1)"
        raise OSError(errno.ENOENT, _lib_error)


def available() -> str | None:
    """None when libbpf can be loaded, else why not."""
    try:
        lib()
    except OSError as e:
        return str(e.strerror or e)
    return None


class _capture:
    """Collects libbpf's warnings during one call, for the error it may raise."""

    def __enter__(self) -> list[str]:
        self.messages: list[str] = []
        _tls.messages = self.messages
        return self.messages

    def __exit__(self, *exc: object) -> None:
        _tls.messages = None


def _ptr_error(ptr: int | None) -> int:
    """libbpf 1.x returns NULL and sets errno on failure."""
    if not ptr:
        return ctypes.get_errno() or errno.EINVAL
    return 0


class BpfObject:
    """One BPF object file: open, pick programs, load, attach, read maps, close."""

    def __init__(self, path: str | Path) -> None:
        self._lib = lib()
        self._links: list[int] = []
        with _capture() as msgs:
            ctypes.set_errno(0)
            obj = self._lib.lib.bpf_object__open_file(str(path).encode(), None)
            err = _ptr_error(obj)
        if err:
            raise LibbpfError(f"opening {path}", err, msgs)
        self._obj: int | None = obj

    @property
    def handle(self) -> int:
        if self._obj is None:
            raise ValueError("BPF object is closed")
        return self._obj

    def _program(self, name: str) -> int:
        prog: int | None = self._lib.lib.bpf_object__find_program_by_name(self.handle, name.encode())
        if not prog:
            raise LibbpfError(f"finding program {name}", errno.ENOENT)
        return prog

    def _map(self, name: str) -> int:
        m: int | None = self._lib.lib.bpf_object__find_map_by_name(self.handle, name.encode())
        if not m:
            raise LibbpfError(f"finding map {name}", errno.ENOENT)
        return m

    def set_autoload(self, program: str, autoload: bool) -> None:
        rc = self._lib.lib.bpf_program__set_autoload(self._program(program), autoload)
        if rc < 0:
            raise LibbpfError(f"set_autoload({program})", -rc)

    def load(self) -> None:
        with _capture() as msgs:
            rc = self._lib.lib.bpf_object__load(self.handle)
        if rc < 0:
            raise LibbpfError("loading BPF object", -rc, msgs)

    def attach(self, program: str) -> None:
        with _capture() as msgs:
            ctypes.set_errno(0)
            link = self._lib.lib.bpf_program__attach(self._program(program))
            err = _ptr_error(link)
        if err:
            raise LibbpfError(f"attaching {program}", err, msgs)
        self._links.append(link)

    def attach_cgroup(self, program: str, cgroup_fd: int) -> None:
        """Attaches a cgroup program (cgroup_skb, cgroup/sock_create...) to the cgroup open at
        ``cgroup_fd`` through a BPF link: it runs alongside other programs there, and goes away
        with the link (``detach``, ``close``, or the agent's exit)."""
        with _capture() as msgs:
            ctypes.set_errno(0)
            link = self._lib.lib.bpf_program__attach_cgroup(self._program(program), cgroup_fd)
            err = _ptr_error(link)
        if err:
            raise LibbpfError(f"attaching {program} to a cgroup", err, msgs)
        self._links.append(link)

    def read_iter(self, program: str, chunk: int = 1 << 16) -> bytes:
        """Runs a BPF iterator program (``iter/...``) once and returns everything it wrote."""
        lib = self._lib.lib
        with _capture() as msgs:
            ctypes.set_errno(0)
            link = lib.bpf_program__attach_iter(self._program(program), None)
            err = _ptr_error(link)
        if err:
            raise LibbpfError(f"attaching iterator {program}", err, msgs)
        try:
            fd = lib.bpf_iter_create(lib.bpf_link__fd(link))
            if fd < 0:
                raise LibbpfError(f"creating iterator {program}", -fd)
            try:
                parts = []
                while True:
                    data = os.read(fd, chunk)
                    if not data:
                        break
                    parts.append(data)
                return b"".join(parts)
            finally:
                os.close(fd)
        finally:
            lib.bpf_link__destroy(link)

    def map_fd(self, name: str) -> int:
        fd: int = self._lib.lib.bpf_map__fd(self._map(name))
        if fd < 0:
            raise LibbpfError(f"fd of map {name}", -fd)
        return fd

    def map_max_entries(self, name: str) -> int:
        return int(self._lib.lib.bpf_map__max_entries(self._map(name)))

    def set_map_max_entries(self, name: str, n: int) -> None:
        """Resizes a map before load (for a ring buffer: its size in bytes)."""
        rc = self._lib.lib.bpf_map__set_max_entries(self._map(name), n)
        if rc < 0:
            raise LibbpfError(f"resizing map {name}", -rc)

    def map_update(self, name: str, key: bytes, value: bytes, flags: int = 0) -> None:
        rc = self._lib.lib.bpf_map_update_elem(self.map_fd(name), key, value, flags)
        if rc < 0:
            raise LibbpfError(f"updating map {name}", ctypes.get_errno() or -rc)

    def map_lookup(self, fd: int, key: bytes, value: ctypes.Array[ctypes.c_char]) -> bool:
        """Reads one element into ``value`` (sized by the caller: per-CPU maps hold one value
        per possible CPU, each padded to 8 bytes). False when the key is absent."""
        return bool(self._lib.lib.bpf_map_lookup_elem(fd, key, value) == 0)

    def map_update_fd(self, fd: int, key: bytes, value: bytes, flags: int = 0) -> bool:
        """Writes one element; False when the kernel refused it (BPF_NOEXIST and present, full)."""
        return bool(self._lib.lib.bpf_map_update_elem(fd, key, value, flags) == 0)

    def map_delete(self, fd: int, key: bytes) -> bool:
        """Deletes one element; False when it was absent."""
        return bool(self._lib.lib.bpf_map_delete_elem(fd, key) == 0)

    def map_lookup_batch(self, fd: int, key_size: int, value_size: int, chunk: int = 4096) -> tuple[bytes, bytes, int]:
        """Every element of a hash map in a few syscalls: (keys, values, count), keys and values
        concatenated in the same order. The map may change meanwhile: an element inserted or
        deleted during the walk may or may not be in the result, the others are."""
        lib = self._lib.lib
        keys_out: list[bytes] = []
        values_out: list[bytes] = []
        total = 0
        token_in = ctypes.c_uint64(0)
        token_out = ctypes.c_uint64(0)
        first = True
        kbuf = ctypes.create_string_buffer(key_size * chunk)
        vbuf = ctypes.create_string_buffer(value_size * chunk)
        while True:
            count = ctypes.c_uint32(chunk)
            rc = lib.bpf_map_lookup_batch(fd, None if first else ctypes.byref(token_in), ctypes.byref(token_out),
                                          kbuf, vbuf, ctypes.byref(count), None)
            err = -rc if rc < 0 else 0  # libbpf 1.x returns -errno
            n = count.value
            if n:
                keys_out.append(ctypes.string_at(kbuf, n * key_size))
                values_out.append(ctypes.string_at(vbuf, n * value_size))
                total += n
            if err == errno.ENOENT:
                break
            if err == errno.ENOSPC and n == 0:
                chunk *= 2  # one hash bucket holds more than a chunk: retry with room for it
                kbuf = ctypes.create_string_buffer(key_size * chunk)
                vbuf = ctypes.create_string_buffer(value_size * chunk)
                continue
            if err:
                raise LibbpfError("batch lookup", err)
            token_in.value = token_out.value
            first = False
        return b"".join(keys_out), b"".join(values_out), total

    def map_delete_batch(self, fd: int, keys: bytes, key_size: int) -> int:
        """Deletes the elements whose keys are concatenated in ``keys``; returns how many went.
        Stops at the first key that is absent (the rest are then deleted one by one)."""
        n = len(keys) // key_size
        if n == 0:
            return 0
        count = ctypes.c_uint32(n)
        rc = self._lib.lib.bpf_map_delete_batch(fd, keys, ctypes.byref(count), None)
        done = count.value
        if rc < 0 and done < n:
            for i in range(done + 1, n):
                done += self.map_delete(fd, keys[i * key_size : (i + 1) * key_size])
        return done

    def detach(self) -> None:
        """Destroys every link: the programs stop running, maps stay readable."""
        links, self._links = self._links, []
        for link in links:
            self._lib.lib.bpf_link__destroy(link)

    def close(self) -> None:
        """Destroys every link, then the object. Safe to call twice."""
        self.detach()
        obj, self._obj = self._obj, None
        if obj is not None:
            self._lib.lib.bpf_object__close(obj)

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def num_possible_cpus() -> int:
    n: int = lib().lib.libbpf_num_possible_cpus()
    if n <= 0:
        raise OSError(-n, "libbpf_num_possible_cpus failed")
    return n
