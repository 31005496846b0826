"""Python mirror of bpf/include/heron_abi.h: the records heron's BPF programs write.

Each layout is a ``struct.Struct`` plus the field names in order, so decoding a record is one
``unpack_from`` on the ring buffer's memory. ``LAYOUTS`` (name -> fields with C offsets) is what
tests/agent/ebpf/test_abi.py compares with the built object's BTF: if the header changes and
this file does not, that test fails.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HERON_ABI_VERSION = 1

EV_EXEC = 1
EV_EXIT = 2

F_ARGV_TRUNCATED = 0x1
F_ARGV_FAULT = 0x2
F_USER_CGROUP = 0x4  # the cgroup is below a user@UID.service: its names are the user's to choose

COMM_LEN = 16
FILENAME_MAX = 512
CGNAME_MAX = 128
STR_AREA = 2048
ARGV_MAX = 16384

STAT_LOST = 0
STAT_ARGV_FAULT = 1
STAT_EXCLUDED = 2
STAT_COUNT = 4

LOGINUID_UNSET = 0xFFFFFFFF


@dataclass(frozen=True)
class Field:
    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class Layout:
    name: str  # the C struct's name
    fmt: struct.Struct
    fields: tuple[Field, ...]


def _layout(name: str, spec: list[tuple[str, str]]) -> Layout:
    """Builds a packed little-endian layout from (field, struct code) pairs, in C order."""
    fields = []
    offset = 0
    for fname, code in spec:
        size = struct.calcsize("<" + code)
        fields.append(Field(fname, offset, size))
        offset += size
    return Layout(name, struct.Struct("<" + "".join(code for _, code in spec)), tuple(fields))


EXEC = _layout("heron_exec", [
    ("kind", "I"),
    ("flags", "I"),
    ("ts_boot_ns", "Q"),
    ("start_boottime_ns", "Q"),
    ("parent_start_boottime_ns", "Q"),
    ("cgroup_id", "Q"),
    ("pid", "I"),
    ("tid", "I"),
    ("ppid", "I"),
    ("uid", "I"),
    ("gid", "I"),
    ("euid", "I"),
    ("egid", "I"),
    ("loginuid", "I"),
    ("filename_len", "H"),
    ("cg2_leaf_len", "H"),
    ("cg2_parent_len", "H"),
    ("cg1_leaf_len", "H"),
    ("cg1_parent_len", "H"),
    ("argv_len", "H"),
    ("_pad", "I"),
    ("comm", f"{COMM_LEN}s"),
])

EXIT = _layout("heron_exit", [
    ("kind", "I"),
    ("flags", "I"),
    ("ts_boot_ns", "Q"),
    ("start_boottime_ns", "Q"),
    ("pid", "I"),
    ("tid", "I"),
    ("exit_code", "I"),
    ("_pad", "I"),
    ("comm", f"{COMM_LEN}s"),
])

LAYOUTS: dict[str, Layout] = {EXEC.name: EXEC, EXIT.name: EXIT}

# The kind is the first u32 of every record.
KIND = struct.Struct("<I")
# heron_comm: the key of the excluded-comm map.
COMM_KEY_LEN = COMM_LEN


def comm_key(name: str) -> bytes:
    """The kernel's view of a comm name: at most 15 bytes, NUL-padded to 16."""
    return name.encode("utf-8", "surrogateescape")[: COMM_LEN - 1].ljust(COMM_LEN, b"\0")
