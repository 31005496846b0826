"""What the benchmarks share: reading a process's CPU and memory, waiting for a marker in the
agent's output. Imported by module name (the benchmarks run as `python bench/NAME.py`)."""

from __future__ import annotations

import os
import time
from pathlib import Path

CLK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """utime + stime of one process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def proc_status(pid: int, key: str) -> int:
    """A kB field of /proc/PID/status (VmHWM, VmRSS...) in bytes; 0 when absent."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def wait_in_file(path: Path, needle: str, timeout: float) -> bool:
    """Whether ``needle`` shows up in the growing file within ``timeout`` s (reads only what is new)."""
    raw = needle.encode()
    deadline = time.monotonic() + timeout
    pos = 0
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as f:
                f.seek(max(0, pos - len(raw)))
                data = f.read()
                pos = f.tell()
        except FileNotFoundError:
            data = b""
        if raw in data:
            return True
        time.sleep(0.05)
    return False
