"""Builds heron's eBPF objects for this kernel, and finds them for the loaders.

``python -m heron.agent.ebpf.build`` (run by scripts/bootstrap.sh) writes
bpf/include/vmlinux.h from the kernel's BTF when it is missing, then compiles every
bpf/*.bpf.c into src/heron/agent/ebpf/obj/NAME.bpf.o, skipping objects newer than their
sources. The objects use CO-RE, so one build runs on other kernels with BTF too. When a tool
or the kernel's BTF is missing it prints one line saying what, and exits 1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

OBJ_DIR = Path(__file__).resolve().parent / "obj"
# The source tree: only present in a checkout (an installed wheel carries the objects only).
REPO_ROOT = Path(__file__).resolve().parents[4]
BPF_DIR = REPO_ROOT / "bpf"
INCLUDE_DIR = BPF_DIR / "include"
VMLINUX_H = INCLUDE_DIR / "vmlinux.h"
KERNEL_BTF = Path("/sys/kernel/btf/vmlinux")
LIBBPF_HEADER = Path("/usr/include/bpf/bpf_helpers.h")

CLANG_FLAGS = ["-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-Wall", "-Wno-unused-function"]


class BuildError(Exception):
    """A build step failed; the message is one line meant for the operator."""


def object_path(name: str) -> Path | None:
    """The built object for ``bpf/NAME.bpf.c``, or None when it has not been built."""
    path = OBJ_DIR / f"{name}.bpf.o"
    return path if path.is_file() else None


def missing_tools() -> list[str]:
    """What the build needs and this host lacks."""
    missing = []
    if shutil.which("clang") is None:
        missing.append("clang")
    if shutil.which("bpftool") is None and not VMLINUX_H.exists():
        missing.append("bpftool")
    if not KERNEL_BTF.exists() and not VMLINUX_H.exists():
        missing.append(f"kernel BTF ({KERNEL_BTF})")
    if not LIBBPF_HEADER.exists():
        missing.append("libbpf-dev headers (/usr/include/bpf)")
    return missing


def unavailable_reason(name: str) -> str | None:
    """None when the object for ``name`` is built, else why not (for ``heron doctor``)."""
    if object_path(name) is not None:
        return None
    if not (BPF_DIR / f"{name}.bpf.c").exists():
        return f"eBPF object {name}.bpf.o is not shipped in this installation and no source tree to build it"
    missing = missing_tools()
    if missing:
        return f"eBPF object {name}.bpf.o not built: missing {', '.join(missing)}"
    return f"eBPF object {name}.bpf.o not built: run python -m heron.agent.ebpf.build"


def _run(cmd: list[str], what: str) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise BuildError(f"{what} failed: {' | '.join(err[-5:]) or f'exit {proc.returncode}'}")
    return proc


def ensure_vmlinux_h() -> bool:
    """Writes bpf/include/vmlinux.h from the kernel's BTF if it is missing; True if written."""
    if VMLINUX_H.exists():
        return False
    if not KERNEL_BTF.exists():
        raise BuildError(f"cannot generate vmlinux.h: kernel BTF {KERNEL_BTF} missing (CONFIG_DEBUG_INFO_BTF)")
    if shutil.which("bpftool") is None:
        raise BuildError("cannot generate vmlinux.h: bpftool missing (apt install bpftool)")
    out = _run(["bpftool", "btf", "dump", "file", str(KERNEL_BTF), "format", "c"], "bpftool btf dump")
    tmp = VMLINUX_H.with_suffix(".h.tmp")
    tmp.write_bytes(out.stdout)
    tmp.replace(VMLINUX_H)
    return True


def _newest_input(source: Path) -> float:
    inputs = [source, *INCLUDE_DIR.glob("*.h")]
    return max(p.stat().st_mtime for p in inputs)


def compile_object(source: Path, force: bool = False) -> Path | None:
    """Compiles one bpf/NAME.bpf.c; returns the object path, or None when it was up to date."""
    name = source.name.removesuffix(".bpf.c")
    out = OBJ_DIR / f"{name}.bpf.o"
    if not force and out.exists() and out.stat().st_mtime >= _newest_input(source):
        return None
    OBJ_DIR.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".o.tmp{os.getpid()}")
    try:
        _run(["clang", *CLANG_FLAGS, "-I", str(INCLUDE_DIR), "-c", str(source), "-o", str(tmp)],
             f"clang {source.name}")
        tmp.replace(out)  # atomic: a loader never sees a half-written object
    finally:
        tmp.unlink(missing_ok=True)
    return out


def build_all(force: bool = False) -> list[Path]:
    """Builds every bpf/*.bpf.c; returns the objects (re)built. Raises BuildError."""
    if not BPF_DIR.is_dir():
        raise BuildError(f"no eBPF sources at {BPF_DIR} (not a source checkout)")
    missing = missing_tools()
    if missing:
        raise BuildError(f"eBPF build skipped: missing {', '.join(missing)}")
    ensure_vmlinux_h()
    built = []
    for source in sorted(BPF_DIR.glob("*.bpf.c")):
        out = compile_object(source, force)
        if out is not None:
            built.append(out)
    return built


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        built = build_all(force="--force" in args)
    except BuildError as e:
        print(f"heron: {e}", file=sys.stderr)
        return 1
    for path in built:
        print(f"heron: built {path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
