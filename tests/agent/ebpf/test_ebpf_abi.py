"""The Python mirror (heron.agent.ebpf.abi) must match heron_abi.h as compiled into the object.

Layouts are compared with the BTF of the built object (bpftool's raw dump), constants with the
header's #defines: a change on one side only fails here instead of corrupting decoded events.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from heron.agent.ebpf import abi
from heron.agent.ebpf.build import INCLUDE_DIR, object_path


@dataclass
class BtfType:
    kind: str
    name: str
    attrs: dict[str, str]
    members: list[tuple[str, int, int]]  # (name, type_id, bits_offset)


_TYPE_RE = re.compile(r"^\[(\d+)\] (\w+) '([^']*)'(.*)$")
_MEMBER_RE = re.compile(r"^\s+'([^']*)' type_id=(\d+) bits_offset=(\d+)")


def parse_btf(text: str) -> dict[int, BtfType]:
    types: dict[int, BtfType] = {}
    current: BtfType | None = None
    for line in text.splitlines():
        m = _TYPE_RE.match(line)
        if m:
            attrs = dict(kv.split("=", 1) for kv in m.group(4).split() if "=" in kv)
            current = BtfType(m.group(2), m.group(3), attrs, [])
            types[int(m.group(1))] = current
            continue
        mm = _MEMBER_RE.match(line)
        if mm and current is not None:
            current.members.append((mm.group(1), int(mm.group(2)), int(mm.group(3))))
    return types


def type_size(types: dict[int, BtfType], tid: int) -> int:
    t = types[tid]
    if t.kind in ("TYPEDEF", "CONST", "VOLATILE"):
        return type_size(types, int(t.attrs["type_id"]))
    if t.kind == "ARRAY":
        return int(t.attrs["nr_elems"]) * type_size(types, int(t.attrs["type_id"]))
    return int(t.attrs["size"])


@pytest.fixture(scope="module")
def btf() -> dict[int, BtfType]:
    obj = object_path("process")
    if obj is None or shutil.which("bpftool") is None:
        pytest.fail("process.bpf.o not built or bpftool missing: run python -m heron.agent.ebpf.build")
    out = subprocess.run(["bpftool", "btf", "dump", "file", str(obj), "format", "raw"],
                         capture_output=True, text=True, check=True).stdout
    return parse_btf(out)


@pytest.mark.parametrize("layout", list(abi.LAYOUTS.values()), ids=list(abi.LAYOUTS))
def test_layout_matches_object_btf(btf: dict[int, BtfType], layout: abi.Layout) -> None:
    structs = [t for t in btf.values() if t.kind == "STRUCT" and t.name == layout.name]
    assert len(structs) == 1, f"struct {layout.name} not in the object's BTF"
    st = structs[0]
    assert int(st.attrs["size"]) == layout.fmt.size, f"{layout.name}: size differs"
    c_fields = [(name, bits // 8, type_size(btf, tid)) for name, tid, bits in st.members]
    py_fields = [(f.name, f.offset, f.size) for f in layout.fields]
    assert py_fields == c_fields


def test_exec_scratch_holds_header_then_data(btf: dict[int, BtfType]) -> None:
    st = next(t for t in btf.values() if t.kind == "STRUCT" and t.name == "heron_exec_scratch")
    assert [(n, b // 8) for n, _, b in st.members] == [("hdr", 0), ("data", abi.EXEC.fmt.size)]
    assert int(st.attrs["size"]) == abi.EXEC.fmt.size + abi.STR_AREA + abi.ARGV_MAX


def test_constants_match_header() -> None:
    text = (INCLUDE_DIR / "heron_abi.h").read_text()
    defines = dict(re.findall(r"^#define HERON_(\w+)\s+(0x[0-9a-fA-F]+|\d+)", text, re.MULTILINE))
    assert len(defines) >= 14
    for name, value in defines.items():
        py_name = "HERON_ABI_VERSION" if name == "ABI_VERSION" else name
        assert getattr(abi, py_name) == int(value, 0), f"HERON_{name} differs between heron_abi.h and abi.py"


def test_parse_btf_reads_members() -> None:
    # The parser itself, on bpftool's raw format, so a format change cannot make the layout test vacuous.
    sample = ("[1] INT 'unsigned int' size=4 bits_offset=0 nr_bits=32 encoding=(none)\n"
              "[2] STRUCT 's' size=8 vlen=2\n\t'a' type_id=1 bits_offset=0\n\t'b' type_id=1 bits_offset=32\n")
    types = parse_btf(sample)
    assert types[2].members == [("a", 1, 0), ("b", 1, 32)]
    assert type_size(types, 2) == 8


def test_comm_key_is_kernel_shaped() -> None:
    assert abi.comm_key("sh") == b"sh" + b"\0" * 14
    assert abi.comm_key("a-very-long-command-name") == b"a-very-long-com\0"
    assert Path("/bin/true").exists()
