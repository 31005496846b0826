"""Login rate limits: the limiter's tables, and parallel guesses against the real app and the real
server (an attempt is counted before its hash is computed, so parallel guesses cannot all pass)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from authkit import PASSWORD, AuthPlatform, make_platform
from starlette.testclient import TestClient

from heron.platform.api.context import PlatformConfig
from heron.platform.auth.ratelimit import Attempt, LoginLimiter
from heron.platform.server import start_in_thread
from heron.platform.storage.db import Database

WRONG = {"username": "admin", "password": "wrong password!"}


def _attempt(limiter: LoginLimiter, user: str, client: str, now: float) -> Attempt:
    got = limiter.reserve(user, client, now)
    assert isinstance(got, Attempt), f"refused: wait {got}s"
    return got


def test_reserve_counts_before_the_check_and_refunds() -> None:
    limiter = LoginLimiter(max_failures=3, window_s=60)
    held = [_attempt(limiter, "Admin", "10.0.0.1", 0.0) for _ in range(3)]
    assert limiter.reserve("admin", "10.0.0.1", 1.0) == 59  # three in flight: the fourth waits
    limiter.refund(held[0])  # never checked (e.g. refused for load)
    _attempt(limiter, "admin", "10.0.0.1", 1.0)
    assert limiter.reserve("admin", "10.0.0.1", 2.0) == 58
    assert isinstance(limiter.reserve("admin", "10.0.0.1", 60.5), Attempt)  # the window slid past the first


def test_per_username_limit_across_addresses_spares_trusted_addresses() -> None:
    limiter = LoginLimiter(max_failures=5, window_s=60, max_user_failures=4)
    limiter.succeeded(_attempt(limiter, "admin", "office", 0.0), 0.0)  # the admin's usual address
    for i in range(4):  # a spray: one guess from each of many addresses
        _attempt(limiter, "admin", f"bot-{i}", 1.0)
    wait = limiter.reserve("admin", "bot-99", 2.0)
    assert isinstance(wait, int) and 1 <= wait <= 60
    assert isinstance(limiter.reserve("other", "bot-99", 2.0), Attempt)  # another user is not affected
    ok = _attempt(limiter, "admin", "office", 2.0)  # the trusted address still gets its own 5
    limiter.succeeded(ok, 2.0)
    assert isinstance(limiter.reserve("admin", "bot-99", 62.0), Attempt)  # the spray aged out


def test_a_full_table_refuses_instead_of_forgetting_a_live_counter() -> None:
    limiter = LoginLimiter(max_failures=2, window_s=60, max_user_failures=100, max_keys=3)
    for _ in range(2):
        _attempt(limiter, "admin", "attacker", 0.0)
    assert limiter.reserve("admin", "attacker", 1.0) == 59
    _attempt(limiter, "x", "attacker", 1.0)
    _attempt(limiter, "y", "attacker", 1.0)
    # The table is full of live counters: a new key is refused, the admin's counter stays.
    assert limiter.reserve("z", "attacker", 2.0) == 58
    assert limiter.reserve("admin", "attacker", 2.0) == 58
    # Once they age out, new keys fit again (and the old counters are gone for good reason).
    assert isinstance(limiter.reserve("z", "attacker", 61.0), Attempt)


def _parallel(n: int, call: Callable[[], int]) -> list[int]:
    """Run ``call`` in n threads released together; their status codes."""
    barrier = threading.Barrier(n)
    codes: list[int] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait()
        code = call()
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return sorted(codes)


def test_parallel_guesses_are_limited_on_the_real_server(tmp_path: Path) -> None:
    handle = start_in_thread("127.0.0.1", 0, tmp_path / "platform",
                             config=PlatformConfig(retention_days=0, login_max_waiting=100))
    try:
        url = f"http://127.0.0.1:{handle.port}/api/v1/session"
        with httpx.Client(timeout=60) as http:
            codes = _parallel(20, lambda: http.post(url, json=WRONG).status_code)
        assert codes.count(401) == 5 and codes.count(429) == 15, codes
    finally:
        handle.stop()


@pytest.fixture
def plat_busy(sqlite_db: Database, admin_hash: str) -> Iterator[AuthPlatform]:
    yield from make_platform(sqlite_db, admin_hash, PlatformConfig(
        retention_days=0, login_max_failures=100, login_max_user_failures=100, login_max_waiting=1))


def test_hashing_queue_is_capped(plat_busy: AuthPlatform) -> None:
    codes = _parallel(12, lambda: plat_busy.client.post("/api/v1/session", json=WRONG).status_code)
    assert set(codes) == {401, 429} and codes.count(401) >= 3, codes  # 2 hashing + 1 waiting at once
    r = plat_busy.client.post("/api/v1/session", json=WRONG)
    assert r.status_code == 401  # the queue drained; the refused checks were refunded (limit 100 is far off)


def test_spray_from_many_addresses_is_limited(sqlite_db: Database, admin_hash: str) -> None:
    cfg = PlatformConfig(retention_days=0, login_max_user_failures=6)
    gen = make_platform(sqlite_db, admin_hash, cfg)
    plat = next(gen)
    try:
        plat.login()  # the admin's usual address
        app = plat.client.app
        codes = [TestClient(app, client=(f"192.0.2.{i}", 5000)).post("/api/v1/session", json=WRONG).status_code
                 for i in range(10)]
        assert codes == [401] * 6 + [429] * 4
        # The address the admin logged in from before the spray is not locked out by it.
        plat.client.cookies.clear()
        r = plat.client.post("/api/v1/session", json={"username": "admin", "password": PASSWORD})
        assert r.status_code == 200
    finally:
        gen.close()


def test_own_password_change_counts_before_hashing(plat: AuthPlatform) -> None:
    csrf = plat.login()
    body = {"old_password": "wrong password!", "new_password": "new password 123"}
    codes = _parallel(10, lambda: plat.client.post("/api/v1/users/me/password", headers={"X-Heron-CSRF": csrf},
                                                   json=body).status_code)
    assert codes == [403] * 5 + [429] * 5, codes
