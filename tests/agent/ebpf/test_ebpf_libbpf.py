"""libbpf through ctypes, and the mmap ring-buffer reader, against the real kernel."""

from __future__ import annotations

import errno
import json
import subprocess
import time
from pathlib import Path

import pytest

from heron.agent.ebpf import abi, objects
from heron.agent.ebpf.build import object_path
from heron.agent.ebpf.libbpf import BpfObject, LibbpfError, available
from heron.agent.ebpf.ringbuf import RingBuffer


def heron_prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    return {p["id"] for p in json.loads(out or "[]") if p.get("name", "").startswith("heron_")}


def wait_gone(ids: set[int], timeout: float = 5.0) -> set[int]:
    """Programs are freed after an RCU grace period: poll until they are gone."""
    deadline = time.monotonic() + timeout
    left = ids & heron_prog_ids()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = ids & heron_prog_ids()
    return left


def test_libbpf_loads() -> None:
    assert available() is None


def test_open_missing_file_raises_with_errno() -> None:
    with pytest.raises(LibbpfError) as exc:
        BpfObject("/nonexistent/heron.bpf.o")
    assert exc.value.errno == errno.ENOENT


def test_unknown_program_and_map_raise() -> None:
    path = object_path(objects.OBJECT)
    assert path is not None
    with BpfObject(path) as obj:
        with pytest.raises(LibbpfError):
            obj.set_autoload("no_such_prog", False)
        with pytest.raises(LibbpfError):
            obj.map_fd("no_such_map")


def test_load_failure_reason_is_libbpf_log(tmp_path: Path) -> None:
    # A file that is not an ELF object: libbpf says why, and the error carries it.
    bad = tmp_path / "bad.bpf.o"
    bad.write_bytes(b"not an elf object")
    with pytest.raises(LibbpfError) as exc:
        BpfObject(bad)
    assert exc.value.messages, "libbpf's log should be captured into the error"
    assert "elf" in str(exc.value).lower()


@pytest.mark.privileged
@pytest.mark.parametrize("force_raw", [False, True], ids=["tp_btf", "raw_tp"])
def test_ring_buffer_reads_exec_and_exit(force_raw: bool) -> None:
    loaded = objects.load(force_raw_tp=force_raw)
    ids: set[int] = set()
    try:
        assert loaded.flavors == dict.fromkeys(objects.HOOKS, "raw" if force_raw else "btf")
        fd, size = loaded.events_map()
        ring = RingBuffer(fd, size)
        loaded.attach()
        ids = heron_prog_ids()
        names = {objects.program_name(h, f) for h, f in loaded.flavors.items()}
        assert len(ids) >= 2
        child = subprocess.Popen(["/bin/true", "heron-ring-test"])
        child.wait()
        seen: dict[int, list[int]] = {}
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and abi.EV_EXIT not in seen.get(child.pid, []):
            ring.wait(0.1)
            for rec in ring.records():
                kind = abi.KIND.unpack_from(rec)[0]
                pid = (abi.EXEC if kind == abi.EV_EXEC else abi.EXIT).fmt.unpack_from(rec)[
                    6 if kind == abi.EV_EXEC else 4]
                seen.setdefault(pid, []).append(kind)
        assert seen.get(child.pid) == [abi.EV_EXEC, abi.EV_EXIT]
        assert not ring.pending()
        ring.close()
        out = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True).stdout
        assert all(n in out for n in names)
    finally:
        loaded.close()
    assert wait_gone(ids) == set(), "programs left loaded after close"
