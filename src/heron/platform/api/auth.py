"""Who is calling: a bearer token or a console session cookie, and the per-endpoint role check.

Bearer tokens: only the SHA-256 of a token is stored. A token is looked up by its hash (hashing
first means the lookup's timing says nothing about the token) and the stored hash is compared in
constant time. A revoked or expired token is refused; ``last_used`` is written at most once a minute.
A token made by a console user (through the API) is refused once that user is deleted or disabled,
and its admin or enroll token once the user is no longer an admin (the store also revokes them then;
the check here covers a user changed by other means).

Console sessions (cookie ``heron_session``, see heron.platform.auth.sessions): the user's role is the
caller's kind (admin or reader). A session request that changes something (any method but GET and
HEAD) must carry the session's CSRF token in ``X-Heron-CSRF``: a cross-site page can make the
browser send the cookie, but cannot read the token.

Roles: ``admin`` queries and changes; ``reader`` queries; ``enroll`` enrols agents; ``agent``
ingests and updates itself only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Collection

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from heron.platform.api.context import ApiError, PlatformContext, context
from heron.platform.auth.sessions import COOKIE_NAME, SessionPolicy, lookup_session
from heron.platform.auth.store import ADMIN_TOKEN_KINDS, ApiToken, AuthStore, SessionRow
from heron.platform.storage.base import TokenKind, TokenRecord

MAX_TOKEN_LENGTH = 256
QUERY_ROLES: tuple[TokenKind, ...] = ("admin", "reader")
ADMIN_ROLES: tuple[TokenKind, ...] = ("admin",)  # changes: alert states, suppressions, baselines, users
ENROLL_ROLES: tuple[TokenKind, ...] = ("enroll", "admin")
AGENT_ROLES: tuple[TokenKind, ...] = ("agent",)
CSRF_HEADER = "X-Heron-CSRF"
SAFE_METHODS = ("GET", "HEAD")
TOUCH_INTERVAL_NS = 60 * 10**9

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def new_token() -> str:
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_token(request: Request) -> str:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "missing bearer token", _CHALLENGE)
    if len(token) > MAX_TOKEN_LENGTH:
        raise ApiError(401, "invalid token", _CHALLENGE)
    return token


def auth_store(request: Request) -> AuthStore:
    return AuthStore(context(request).db)


def session_policy(ctx: PlatformContext) -> SessionPolicy:
    return SessionPolicy(idle_s=ctx.config.session_idle_s, max_s=ctx.config.session_max_s)


def _owner_allows(store: AuthStore, token: ApiToken) -> bool:
    """A token made by a user lives no longer than the user's right to make it."""
    if token.user_id is None:  # made by the CLI or at first start: nobody's
        return True
    owner = store.get_user(token.user_id)
    if owner is None or owner.disabled is not None:
        return False
    return owner.role == "admin" or token.kind not in ADMIN_TOKEN_KINDS


def _check_token(store: AuthStore, digest: str) -> TokenRecord | None:
    found = store.find_token(digest)
    now = time.time_ns()
    if (found is None or not hmac.compare_digest(found.token_hash, digest) or found.revoked is not None
            or (found.expires is not None and found.expires <= now) or not _owner_allows(store, found)):
        return None
    if found.last_used is None or found.last_used < now - TOUCH_INTERVAL_NS:
        store.touch_token(digest, now, now - TOUCH_INTERVAL_NS)
    kind: TokenKind = found.kind  # type: ignore[assignment]  # the column holds TOKEN_KINDS only
    return TokenRecord(found.token_hash, kind, found.agent_id, found.created, found.revoked, found.name)


async def _from_bearer(request: Request) -> TokenRecord:
    digest = hash_token(bearer_token(request))
    record = await run_in_threadpool(_check_token, auth_store(request), digest)
    if record is None:
        raise ApiError(401, "invalid token", _CHALLENGE)
    return record


async def current_session(request: Request) -> SessionRow:
    """The live console session of the request's cookie; 401 if there is none."""
    cookie = request.cookies.get(COOKIE_NAME, "")
    found = None
    if cookie:
        found = await run_in_threadpool(lookup_session, auth_store(request), cookie, time.time_ns(),
                                        session_policy(context(request)))
    if found is None:
        raise ApiError(401, "not logged in or session expired")
    return found


def check_csrf(request: Request, session: SessionRow) -> None:
    if request.method in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(sent.encode(), session.csrf.encode()):
        raise ApiError(403, f"missing or wrong {CSRF_HEADER} header")


def session_record(session: SessionRow) -> TokenRecord:
    """A console session as the caller record ``authenticate`` returns: its kind is the user's role."""
    kind: TokenKind = "admin" if session.user.role == "admin" else "reader"
    return TokenRecord(session.token_hash, kind, None, session.created, None, session.user.username,
                       session.user.id)


async def authenticate(request: Request, roles: Collection[TokenKind]) -> TokenRecord:
    """The caller: a bearer token (when an Authorization header is sent) or else the session cookie.
    401 if unknown, revoked or expired; 403 if a session request that changes something lacks its
    CSRF header, or if the caller's role is not in ``roles``."""
    if "authorization" in request.headers or COOKIE_NAME not in request.cookies:
        record = await _from_bearer(request)
    else:
        session = await current_session(request)
        check_csrf(request, session)
        record = session_record(session)
    if record.kind not in roles:
        raise ApiError(403, f"a {record.kind} {'user' if record.user_id is not None else 'token'} may not do this")
    return record


def actor(record: TokenRecord) -> str:
    """Who did it, for audit logs: the username of a session, else ``token:`` and the token's name or id."""
    if record.user_id is not None:
        return record.name
    return f"token:{record.name or record.token_hash[:16]}"
