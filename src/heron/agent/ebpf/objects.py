"""Loading heron's BPF objects. bpf/process.bpf.c: picks tp_btf or raw_tp per hook, fills the
kernel-side excludes.

The kernel variant is chosen here, in one place: each hook (exec, exit) uses its tp_btf
program unless the kernel refuses it, then its raw_tp twin. Everything returned is owned by
the caller's ``LoadedProcessObject.close``.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from heron.agent.ebpf import abi
from heron.agent.ebpf.build import object_path, unavailable_reason
from heron.agent.ebpf.libbpf import BpfObject, LibbpfError, num_possible_cpus

log = logging.getLogger(__name__)

OBJECT = "process"
HOOKS = ("exec", "exit")
FLAVORS = ("btf", "raw")  # tp_btf, then raw_tp
EVENTS_MAP = "heron_events"
STATS_MAP = "heron_stats"
EXCL_COMM_MAP = "heron_excl_comm"
EXCL_COMM_MAX = 256  # max_entries of heron_excl_comm


def program_name(hook: str, flavor: str) -> str:
    return f"heron_{hook}_{flavor}"


@dataclass
class LoadedProcessObject:
    obj: BpfObject
    flavors: dict[str, str]  # hook -> "btf" | "raw"
    # Why a hook fell back to raw_tp (empty when tp_btf loaded).
    fallback_reasons: dict[str, str] = field(default_factory=dict)
    _stats_fd: int = -1
    _ncpu: int = 0
    _stats_buf: ctypes.Array[ctypes.c_char] | None = None

    def attach(self) -> None:
        for hook, flavor in self.flavors.items():
            self.obj.attach(program_name(hook, flavor))

    def events_map(self) -> tuple[int, int]:
        """(fd, size in bytes) of the ring buffer."""
        return self.obj.map_fd(EVENTS_MAP), self.obj.map_max_entries(EVENTS_MAP)

    def stat(self, slot: int) -> int:
        """Sum over CPUs of one heron_stats slot: one map lookup."""
        if self._stats_buf is None:
            self._stats_fd = self.obj.map_fd(STATS_MAP)
            self._ncpu = num_possible_cpus()
            self._stats_buf = ctypes.create_string_buffer(8 * self._ncpu)
        if not self.obj.map_lookup(self._stats_fd, slot.to_bytes(4, "little"), self._stats_buf):
            return 0
        raw = self._stats_buf.raw
        return sum(int.from_bytes(raw[i : i + 8], "little") for i in range(0, 8 * self._ncpu, 8))

    def detach(self) -> None:
        self.obj.detach()

    def close(self) -> None:
        self.obj.close()


def _open(path: Path, flavors: dict[str, str], ring_bytes: int | None = None) -> BpfObject:
    """Opens the object with only the chosen programs set to load, and loads it."""
    obj = BpfObject(path)
    try:
        if ring_bytes:
            obj.set_map_max_entries(EVENTS_MAP, ring_bytes)
        for hook in HOOKS:
            for flavor in FLAVORS:
                obj.set_autoload(program_name(hook, flavor), flavors.get(hook) == flavor)
        obj.load()
    except BaseException:
        obj.close()
        raise
    return obj


def load(
    force_raw_tp: bool = False, exclude_comm: Iterable[str] = (), ring_bytes: int | None = None
) -> LoadedProcessObject:
    """Loads (not attaches) the process programs. Raises OSError with a readable reason.

    ``ring_bytes`` overrides the ring buffer's size (a power of two, at least one page)."""
    path = object_path(OBJECT)
    if path is None:
        raise FileNotFoundError(unavailable_reason(OBJECT))
    if force_raw_tp:
        loaded = LoadedProcessObject(_open(path, dict.fromkeys(HOOKS, "raw"), ring_bytes),
                                     dict.fromkeys(HOOKS, "raw"),
                                     dict.fromkeys(HOOKS, "raw_tp forced by option"))
    else:
        try:
            flavors = dict.fromkeys(HOOKS, "btf")
            loaded = LoadedProcessObject(_open(path, flavors, ring_bytes), flavors)
        except LibbpfError as first:
            # Find which hook's tp_btf the kernel refuses, one at a time; keep tp_btf where it works.
            log.info("tp_btf load failed (%s); trying each hook", first)
            flavors, reasons = {}, {}
            for hook in HOOKS:
                try:
                    _open(path, {hook: "btf"}).close()
                    flavors[hook] = "btf"
                except LibbpfError as e:
                    flavors[hook], reasons[hook] = "raw", str(e)
            loaded = LoadedProcessObject(_open(path, flavors, ring_bytes), flavors, reasons)
    try:
        fill_exclusions(loaded.obj, exclude_comm)
    except BaseException:
        loaded.close()
        raise
    return loaded


def fill_exclusions(obj: BpfObject, names: Iterable[str]) -> None:
    keys = sorted({abi.comm_key(n) for n in names if n})
    if len(keys) > EXCL_COMM_MAX:
        raise ValueError(f"at most {EXCL_COMM_MAX} excluded comm names, got {len(keys)}")
    for key in keys:
        obj.map_update(EXCL_COMM_MAP, key, b"\1")


def trial_load() -> str | None:
    """Loads and unloads the programs: None when the kernel accepts them, else why not."""
    try:
        load().close()
    except (OSError, ValueError) as e:
        return str(e)
    return None
