"""Counters every component emits, and the agent's own footprint.

Counter names are ``component.counter`` (``process.ebpf.received``, ``spool.dropped``...).
Increments happen on hot paths from several threads; a plain dict under the GIL is enough
because ``+=`` on one key is only ever done by the thread that owns that component.
"""

from __future__ import annotations

import os
import resource
import threading
import time

MAX_MESSAGES = 100


class Health:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.counters: dict[str, int] = {}
        self.messages: list[str] = []
        self._lock = threading.Lock()

    def add(self, name: str, n: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def set(self, name: str, value: int) -> None:
        self.counters[name] = value

    def get(self, name: str) -> int:
        return self.counters.get(name, 0)

    def note(self, message: str) -> None:
        """A human-readable event (fallback, config error) shipped with the next health record.
        At most MAX_MESSAGES wait for it (the schema's bound); the rest are counted."""
        with self._lock:
            if len(self.messages) < MAX_MESSAGES:
                self.messages.append(message[:4096])
            else:
                self.add("health.messages_dropped")

    def take_messages(self) -> list[str]:
        with self._lock:
            out, self.messages = self.messages, []
        return out

    def snapshot(self) -> dict[str, int]:
        return dict(self.counters)


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def rss_bytes() -> int:
    """Current resident set size (not the peak)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
