"""Login rate limiting: at most ``max_failures`` failed logins per (username, client address) in a
sliding ``window_s``; more are refused with 429 and Retry-After until the oldest failure ages out.

The counters live in this process's memory: each ``heron server`` behind a load balancer counts on
its own (so N servers allow up to N times the limit), and a restart forgets them. Cheap and
enough to make online guessing against scrypt hashes slow; it is documented as per-server.
"""

from __future__ import annotations

import math
import threading
from collections import deque

MAX_KEYS = 10_000  # bounded memory under a spray of usernames/addresses


class LoginLimiter:
    def __init__(self, max_failures: int = 5, window_s: float = 60.0) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: tuple[str, str], now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, username: str, client: str, now: float) -> int:
        """Seconds the caller must wait before trying again; 0 if it may try now."""
        key = (username.lower(), client)
        with self._lock:
            times = self._recent(key, now)
            if times is None or len(times) < self.max_failures:
                return 0
            return max(1, math.ceil(times[0] + self.window_s - now))

    def failed(self, username: str, client: str, now: float) -> None:
        key = (username.lower(), client)
        with self._lock:
            if key not in self._failures and len(self._failures) >= MAX_KEYS:
                for old in list(self._failures):  # drop aged-out keys; if none, the oldest-inserted
                    self._recent(old, now)
                if len(self._failures) >= MAX_KEYS:
                    del self._failures[next(iter(self._failures))]
            times = self._failures.setdefault(key, deque())
            times.append(now)
            while len(times) > self.max_failures:
                times.popleft()

    def succeeded(self, username: str, client: str) -> None:
        with self._lock:
            self._failures.pop((username.lower(), client), None)
