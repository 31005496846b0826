"""Login rate limiting, in two tables:

- per (username, client address): at most ``max_failures`` failed attempts in a sliding ``window_s``;
- per username, from all addresses together: at most ``max_user_failures`` (bounds a spray from many
  addresses). An address that logged in as that user successfully within ``trusted_s`` is exempt
  from this one (it still has its own per-address limit), so a spray cannot lock the user out of
  the addresses it usually comes from.

An attempt is *reserved* (counted as a failure) before the password is hashed and refunded when
it succeeds: parallel guesses cannot all pass the check while the first ones are still hashing.

Counters are never evicted while they are live: when a table is full, aged-out entries are dropped
and, if none has aged out, the attempt is refused (429) rather than forgetting a counter an
attacker may want to flush. With hashing bounded to a few logins a second, the tables do not fill
in normal use.

The counters live in this process's memory: each ``heron server`` behind a load balancer counts on
its own (so N servers allow up to N times the limit), and a restart forgets them.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

MAX_KEYS = 10_000  # per table: bounded memory under a spray of usernames/addresses


@dataclass(frozen=True, slots=True)
class Attempt:
    """A reserved attempt: pass it to ``succeeded`` or ``refund``."""
    username: str
    client: str
    stamp: float


class _Window:
    """Failure times per key in a sliding window, at most ``limit`` per key and ``max_keys`` keys."""

    def __init__(self, limit: int, window_s: float, max_keys: int) -> None:
        self.limit, self.window_s, self.max_keys = limit, window_s, max_keys
        self.times: dict[object, deque[float]] = {}

    def _recent(self, key: object, now: float) -> deque[float] | None:
        times = self.times.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self.times[key]
            return None
        return times

    def wait(self, key: object, now: float) -> int:
        """Seconds until ``key`` may try again (0: now); also when the table is full of live keys."""
        times = self._recent(key, now)
        if times is not None:
            return max(1, math.ceil(times[0] + self.window_s - now)) if len(times) >= self.limit else 0
        if len(self.times) >= self.max_keys:
            for old in list(self.times):
                self._recent(old, now)
            if len(self.times) >= self.max_keys:  # full of live counters: refuse, do not forget one
                oldest = min(t[0] for t in self.times.values())
                return max(1, math.ceil(oldest + self.window_s - now))
        return 0

    def add(self, key: object, now: float) -> None:
        self.times.setdefault(key, deque()).append(now)

    def remove(self, key: object, stamp: float) -> None:
        times = self.times.get(key)
        if times is not None:
            with contextlib.suppress(ValueError):  # aged out meanwhile
                times.remove(stamp)
            if not times:
                del self.times[key]


class LoginLimiter:
    def __init__(self, max_failures: int = 5, window_s: float = 60.0, max_user_failures: int = 20,
                 trusted_s: float = 30 * 86400.0, max_keys: int = MAX_KEYS) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.trusted_s = trusted_s
        self._pairs = _Window(max_failures, window_s, max_keys)
        self._users = _Window(max_user_failures, window_s, max_keys)
        self._trusted: OrderedDict[tuple[str, str], float] = OrderedDict()  # (user, client) -> last success
        self._max_keys = max_keys
        self._lock = threading.Lock()

    def _is_trusted(self, key: tuple[str, str], now: float) -> bool:
        since = self._trusted.get(key)
        return since is not None and since > now - self.trusted_s

    def reserve(self, username: str, client: str, now: float) -> Attempt | int:
        """Count an attempt as failed before it is checked: the Attempt, or the seconds to wait (> 0)
        if a limit is reached (then nothing is counted)."""
        name = username.lower()
        pair = (name, client)
        with self._lock:
            wait = self._pairs.wait(pair, now)
            if not self._is_trusted(pair, now):
                wait = max(wait, self._users.wait(name, now))
            if wait:
                return wait
            self._pairs.add(pair, now)
            self._users.add(name, now)
            return Attempt(name, client, now)

    def refund(self, attempt: Attempt) -> None:
        """The attempt was never checked (e.g. refused for load): it does not count."""
        with self._lock:
            self._pairs.remove((attempt.username, attempt.client), attempt.stamp)
            self._users.remove(attempt.username, attempt.stamp)

    def succeeded(self, attempt: Attempt, now: float) -> None:
        """The password was right: this address's failures for the user are forgotten and the address
        is trusted for the user. The user's failures from elsewhere stay counted."""
        pair = (attempt.username, attempt.client)
        with self._lock:
            self._pairs.times.pop(pair, None)
            self._users.remove(attempt.username, attempt.stamp)
            self._trusted.pop(pair, None)
            self._trusted[pair] = now
            while len(self._trusted) > self._max_keys:  # bounded; only successful logins add here
                self._trusted.popitem(last=False)
