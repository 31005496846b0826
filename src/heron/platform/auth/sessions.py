"""Console sessions: a random cookie value (only its SHA-256 is stored) and a CSRF token per session.

A session ends after ``idle_s`` without a request or ``max_s`` after login, whichever is first, on
logout, when its user is disabled or deleted, and (the other sessions) when the password changes.
``last_seen`` is written at most once a minute (a tenth of the idle timeout if that is shorter),
not on every request.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from heron.platform.auth.store import AuthStore, SessionRow

COOKIE_NAME = "heron_session"
MAX_COOKIE_LENGTH = 256
TOUCH_INTERVAL_NS = 60 * 10**9


@dataclass(frozen=True, slots=True)
class SessionPolicy:
    idle_s: float = 12 * 3600.0
    max_s: float = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class NewSession:
    cookie: str  # goes to the browser only; never stored
    csrf: str
    expires: int


def session_hash(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


def create_session(store: AuthStore, user_id: int, now: int, policy: SessionPolicy) -> NewSession:
    cookie, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    expires = now + int(policy.max_s * 1e9)
    # Logins are rare: a good moment to drop the sessions that ended without a logout.
    store.purge_sessions(now, now - int(policy.idle_s * 1e9))
    store.add_session(session_hash(cookie), user_id, csrf, now, expires)
    return NewSession(cookie, csrf, expires)


def lookup_session(store: AuthStore, cookie: str, now: int, policy: SessionPolicy) -> SessionRow | None:
    """The live session of this cookie value, or None (unknown, expired, idle too long, user disabled).
    An ended session found here is deleted."""
    if not cookie or len(cookie) > MAX_COOKIE_LENGTH:
        return None
    digest = session_hash(cookie)
    found = store.find_session(digest)
    if found is None:
        return None
    if found.expires <= now or found.last_seen + int(policy.idle_s * 1e9) <= now or found.user.disabled is not None:
        store.delete_session(digest)
        return None
    # A minute, or less when the idle timeout is short (tests): the write lag must not end a live session.
    interval = min(TOUCH_INTERVAL_NS, int(policy.idle_s * 1e9) // 10)
    if found.last_seen < now - interval:
        store.touch_session(digest, now, now - interval)
    return found


def revoke_session(store: AuthStore, cookie: str) -> bool:
    return bool(cookie) and len(cookie) <= MAX_COOKIE_LENGTH and store.delete_session(session_hash(cookie))
