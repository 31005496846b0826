"""The eBPF build: objects found, fresh objects not rebuilt, missing tools reported in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from heron.agent.ebpf import build
from heron.agent.host import detect_host
from heron.agent.sources import ladder


def test_object_built_and_found() -> None:
    assert build.main([]) == 0
    path = build.object_path("process")
    assert path is not None and path.name == "process.bpf.o"
    assert path.read_bytes()[:4] == b"\x7fELF"
    assert build.unavailable_reason("process") is None


def test_fresh_object_is_not_rebuilt() -> None:
    build.main([])
    path = build.object_path("process")
    assert path is not None
    mtime = path.stat().st_mtime_ns
    assert build.compile_object(build.BPF_DIR / "process.bpf.c") is None
    assert path.stat().st_mtime_ns == mtime


def test_unknown_object_has_a_reason() -> None:
    assert build.object_path("nosuch") is None
    reason = build.unavailable_reason("nosuch")
    assert reason is not None and "nosuch.bpf.o" in reason


def test_missing_clang_is_one_clear_line() -> None:
    env = dict(os.environ, PATH="/nonexistent")
    proc = subprocess.run([sys.executable, "-m", "heron.agent.ebpf.build", "--force"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing clang" in lines[0], proc.stderr
    assert build.object_path("process") is not None  # the existing object is left alone


def test_without_the_object_the_ladder_goes_on_and_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No clang on the host at bootstrap -> no object: the agent still starts, on the next rung."""
    monkeypatch.setattr(build, "OBJ_DIR", tmp_path)
    monkeypatch.setenv("PATH", "/nonexistent")  # and nothing to build it with
    choice = ladder.choose("process", detect_host())
    assert not choice.probes["ebpf"].ok
    assert "process.bpf.o" in choice.probes["ebpf"].reason and "clang" in choice.probes["ebpf"].reason
    assert choice.selected is not None and choice.selected.mechanism != "ebpf"
