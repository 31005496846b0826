"""Small system helpers shared by tests (imported by module name from tests/)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable
from pathlib import Path


def free_port() -> int:
    """A loopback TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def remove_dirs(dirs: Iterable[Path], tries: int = 50, pause_s: float = 0.05) -> None:
    """rmdir each directory (innermost first); cgroup rmdir fails with EBUSY while a killed member
    is still being released, so retry a little. Missing directories are fine."""
    for d in dirs:
        for _ in range(tries):
            try:
                d.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(pause_s)
