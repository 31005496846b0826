"""Console login (/api/v1/session), users (/api/v1/users) and API tokens (/api/v1/tokens).

See docs/auth.md. Users and tokens are managed by admins; any logged-in user changes its own
password with the old one. Password hashing is slow on purpose (scrypt), so it runs in a small
thread pool of its own: a flood of logins queues there instead of taking every API thread.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Annotated, Any, Literal

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from heron.platform.api.auth import (
    ADMIN_ROLES,
    QUERY_ROLES,
    auth_store,
    authenticate,
    check_csrf,
    current_session,
    hash_token,
    new_token,
    session_policy,
)
from heron.platform.api.context import ApiError, PlatformConfig, WorkLimiter, context, decode_json_body
from heron.platform.auth import passwords
from heron.platform.auth.ratelimit import Attempt, LoginLimiter
from heron.platform.auth.sessions import COOKIE_NAME, create_session, revoke_session, session_hash
from heron.platform.auth.store import API_TOKEN_KINDS, AuthStore, Conflict, User

Username = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")]
Password = Annotated[str, msgspec.Meta(max_length=passwords.MAX_LENGTH)]
Role = Literal["admin", "reader"]
TOKEN_ID = re.compile(r"^[0-9a-f]{16}$")


class LoginRequest(msgspec.Struct, forbid_unknown_fields=True):
    username: Annotated[str, msgspec.Meta(max_length=64)]
    password: Password


class NewUser(msgspec.Struct, forbid_unknown_fields=True):
    username: Username
    password: Password
    role: Role = "reader"


class UserChange(msgspec.Struct, forbid_unknown_fields=True):
    role: Role | None = None
    password: Password | None = None
    disabled: bool | None = None


class OwnPassword(msgspec.Struct, forbid_unknown_fields=True):
    old_password: Password
    new_password: Password


class NewToken(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    role: Literal["admin", "reader", "enroll"]
    expires: Annotated[int, msgspec.Meta(ge=0)] | None = None  # ns since the epoch


HASH_WORKERS = 2
AGENT_ID_MAX = 128


class _AuthState:
    def __init__(self, cfg: PlatformConfig) -> None:
        self.limiter = LoginLimiter(cfg.login_max_failures, cfg.login_window_s, cfg.login_max_user_failures)
        self.hashing = WorkLimiter(HASH_WORKERS)
        self.max_checks = HASH_WORKERS + cfg.login_max_waiting  # password checks hashing or queued
        self._checks = 0
        self._lock = threading.Lock()  # an app may serve from several event loops (tests)

    def enter_check(self) -> bool:
        with self._lock:
            if self._checks >= self.max_checks:
                return False
            self._checks += 1
            return True

    def leave_check(self) -> None:
        with self._lock:
            self._checks -= 1


def _state(request: Request) -> _AuthState:
    state = getattr(request.app.state, "heron_auth", None)
    if state is None:
        state = request.app.state.heron_auth = _AuthState(context(request).config)
    assert isinstance(state, _AuthState)
    return state


def _user_json(user: User) -> dict[str, Any]:
    return {"id": user.id, "username": user.username, "role": user.role}


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else ""


def _path_id(request: Request) -> int:
    raw = request.path_params["id"]
    if not (isinstance(raw, str) and raw.isascii() and raw.isdigit() and len(raw) <= 18):
        raise ApiError(404, "no such user")
    return int(raw)


def _hash_new(password: str) -> str:
    try:
        return passwords.hash_password(password)
    except passwords.PasswordPolicyError as e:
        raise ApiError(400, str(e)) from None


# -- session -----------------------------------------------------------------------------------------

def _check_login(store: AuthStore, username: str, password: str) -> User | None:
    found = store.find_user(username)
    ok = passwords.verify_password(password, found[1] if found is not None else None)  # a hash either way
    if found is None or not ok or found[0].disabled is not None:
        return None
    return found[0]


async def _password_check(request: Request, store: AuthStore, username: str, password: str,
                          too_many: str) -> User | None:
    """The user if ``password`` is theirs (and they are enabled), else None; rate limited. The attempt
    is counted as a failure before hashing (so parallel guesses cannot all pass the limit) and
    refunded on success; when too many checks are hashing or queued already: 429."""
    state = _state(request)
    attempt = state.limiter.reserve(username, _client(request), time.monotonic())
    if not isinstance(attempt, Attempt):
        raise ApiError(429, too_many, {"Retry-After": str(attempt)})
    if not state.enter_check():
        state.limiter.refund(attempt)
        raise ApiError(429, "too many password checks at once: try again shortly", {"Retry-After": "1"})
    try:
        user = await state.hashing.run(_check_login, store, username, password)
    except BaseException:
        state.limiter.refund(attempt)  # no answer reached the caller: the attempt does not count
        raise
    finally:
        state.leave_check()
    if user is not None:
        state.limiter.succeeded(attempt, time.monotonic())
    return user


def _secure_cookie(request: Request) -> bool:
    forced = context(request).config.cookie_secure
    return forced if forced is not None else request.url.scheme == "https"


async def login(request: Request) -> Response:
    store = auth_store(request)
    body = await decode_json_body(request, LoginRequest)
    user = await _password_check(request, store, body.username, body.password,
                                 "too many failed logins: try again later")
    if user is None:
        raise ApiError(401, "invalid username or password")
    ctx, now = context(request), time.time_ns()
    policy = session_policy(ctx)
    new = await run_in_threadpool(create_session, store, user.id, now, policy)
    await run_in_threadpool(store.record_login, user.id, now)
    response = JSONResponse({"user": _user_json(user), "csrf": new.csrf})
    response.set_cookie(COOKIE_NAME, new.cookie, max_age=int(policy.max_s), path="/", httponly=True,
                        samesite="strict", secure=_secure_cookie(request))
    return response


async def whoami(request: Request) -> Response:
    session = await current_session(request)
    return JSONResponse({"user": _user_json(session.user), "csrf": session.csrf})


async def logout(request: Request) -> Response:
    session = await current_session(request)
    check_csrf(request, session)
    await run_in_threadpool(revoke_session, auth_store(request), request.cookies.get(COOKIE_NAME, ""))
    response = Response(status_code=204)
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict", secure=_secure_cookie(request))
    return response


# -- users -------------------------------------------------------------------------------------------

async def list_users(request: Request) -> Response:
    await authenticate(request, ADMIN_ROLES)
    found = await run_in_threadpool(auth_store(request).list_users)
    return JSONResponse({"users": [u.json() for u in found]})


async def add_user(request: Request) -> Response:
    await authenticate(request, ADMIN_ROLES)
    body = await decode_json_body(request, NewUser)
    store = auth_store(request)
    digest = await _state(request).hashing.run(_hash_new, body.password)
    try:
        user = await run_in_threadpool(store.add_user, body.username, digest, body.role, time.time_ns())
    except Conflict as e:
        raise ApiError(409, str(e)) from None
    return JSONResponse({"user": user.json()}, status_code=201)


async def change_user(request: Request) -> Response:
    await authenticate(request, ADMIN_ROLES)
    user_id = _path_id(request)
    body = await decode_json_body(request, UserChange)
    store = auth_store(request)
    digest = await _state(request).hashing.run(_hash_new, body.password) if body.password is not None else None
    try:
        user = await run_in_threadpool(lambda: store.update_user(user_id, time.time_ns(), role=body.role,
                                                                 password_hash=digest, disabled=body.disabled))
    except Conflict as e:
        raise ApiError(409, str(e)) from None
    if user is None:
        raise ApiError(404, "no such user")
    if digest is not None:  # a reset password ends the sessions opened with the old one
        await run_in_threadpool(store.delete_user_sessions, user_id)
    return JSONResponse({"user": user.json()})


async def delete_user(request: Request) -> Response:
    await authenticate(request, ADMIN_ROLES)
    user_id = _path_id(request)
    try:
        deleted = await run_in_threadpool(auth_store(request).delete_user, user_id)
    except Conflict as e:
        raise ApiError(409, str(e)) from None
    if not deleted:
        raise ApiError(404, "no such user")
    return Response(status_code=204)


async def change_own_password(request: Request) -> Response:
    record = await authenticate(request, QUERY_ROLES)
    if record.user_id is None:
        raise ApiError(400, "a token has no password: log in as the user")
    body = await decode_json_body(request, OwnPassword)
    store, state = auth_store(request), _state(request)
    if await _password_check(request, store, record.name, body.old_password,
                             "too many wrong passwords: try again later") is None:
        raise ApiError(403, "the old password is wrong")
    digest = await state.hashing.run(_hash_new, body.new_password)
    user_id = record.user_id
    await run_in_threadpool(lambda: store.update_user(user_id, time.time_ns(), password_hash=digest))
    # Other browsers logged in with the old password are logged out; this one stays.
    await run_in_threadpool(store.delete_user_sessions, user_id, session_hash(request.cookies.get(COOKIE_NAME, "")))
    return Response(status_code=204)


# -- tokens ------------------------------------------------------------------------------------------

async def list_tokens(request: Request) -> Response:
    await authenticate(request, ADMIN_ROLES)
    cfg = context(request).config
    raw = request.query_params.get("limit", "")
    limit = int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 10 else cfg.max_query_limit
    found = await run_in_threadpool(auth_store(request).list_tokens, API_TOKEN_KINDS,
                                    max(1, min(limit, cfg.max_query_limit)))
    return JSONResponse({"tokens": [t.json() for t in found]})


async def add_token(request: Request) -> Response:
    record = await authenticate(request, ADMIN_ROLES)
    body = await decode_json_body(request, NewToken)
    now = time.time_ns()
    if body.expires is not None and body.expires <= now:
        raise ApiError(400, "expires is in the past")
    token = new_token()
    made = await run_in_threadpool(auth_store(request).add_token, hash_token(token), body.role, body.name,
                                   record.user_id, now, body.expires)
    return JSONResponse({**made.json(), "token": token}, status_code=201)


async def revoke_token(request: Request) -> Response:
    await authenticate(request, ADMIN_ROLES)
    token_id = request.path_params["id"]
    if not (isinstance(token_id, str) and TOKEN_ID.match(token_id)):
        raise ApiError(404, "no such token (an id is 16 lowercase hex digits)")
    store = auth_store(request)
    found = [t for t in await run_in_threadpool(store.tokens_by_id, token_id) if t.kind in API_TOKEN_KINDS]
    if not found:
        raise ApiError(404, "no such token")
    if len(found) > 1:
        raise ApiError(409, "ambiguous token id")
    await run_in_threadpool(store.revoke_token, found[0].token_hash, time.time_ns())
    return Response(status_code=204)


async def revoke_agent_token(request: Request) -> Response:
    """Revoke an agent's tokens: its next request gets 401 (and the agent enrols again if it still
    has a valid enrolment token)."""
    await authenticate(request, ADMIN_ROLES)
    agent_id = request.path_params["agent_id"]
    if not (isinstance(agent_id, str) and 0 < len(agent_id) <= AGENT_ID_MAX):
        raise ApiError(404, "no such agent")
    revoked = await run_in_threadpool(auth_store(request).revoke_agent_tokens, agent_id, time.time_ns())
    if revoked is None:
        raise ApiError(404, "no such agent")
    return Response(status_code=204)


# -- OpenAPI -----------------------------------------------------------------------------------------

def _ok(code: int, text: str, *errors: tuple[int, str]) -> dict[str, object]:
    return {str(c): {"description": t} for c, t in ((code, text), *errors)}


def _body(props: dict[str, object], required: list[str]) -> dict[str, object]:
    return {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "properties": props, "required": required}}}}


_S = {"type": "string"}
_SEC: list[dict[str, list[str]]] = [{"bearer": []}, {"session": []}]
_ADMIN_ERR = ((401, "not authenticated"), (403, "not an admin, or missing X-Heron-CSRF"))
_USER = '{"user": {"id", "username", "role", "created", "disabled", "last_login"}}'

OPENAPI_PATHS: dict[str, object] = {
    "/api/v1/session": {
        "post": {"summary": "Log in: sets the HttpOnly cookie heron_session.", "security": [],
                 "requestBody": _body({"username": _S, "password": _S}, ["username", "password"]),
                 "responses": _ok(200, '{"user": {"id", "username", "role"}, "csrf": "..."}',
                                  (400, "malformed"), (401, "invalid username or password"),
                                  (429, "too many failed logins (Retry-After)"))},
        "get": {"summary": "The logged-in user and the session's CSRF token.", "security": [{"session": []}],
                "responses": _ok(200, '{"user": {...}, "csrf": "..."}', (401, "not logged in"))},
        "delete": {"summary": "Log out (send X-Heron-CSRF).", "security": [{"session": []}],
                   "responses": _ok(204, "logged out", (401, "not logged in"), (403, "missing X-Heron-CSRF"))},
    },
    "/api/v1/users": {
        "get": {"summary": "List console users (admin).", "security": _SEC,
                "responses": _ok(200, '{"users": [{"id", "username", "role", "created", "disabled", "last_login"}]}',
                                 *_ADMIN_ERR)},
        "post": {"summary": "Add a console user (admin).", "security": _SEC,
                 "requestBody": _body({"username": _S, "password": _S, "role": {"enum": ["admin", "reader"]}},
                                      ["username", "password"]),
                 "responses": _ok(201, _USER, (400, "malformed or password refused"), *_ADMIN_ERR,
                                  (409, "username taken"))},
    },
    "/api/v1/users/{id}": {
        "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}],
        "patch": {"summary": "Change a user's role, password or disabled flag (admin).", "security": _SEC,
                  "requestBody": _body({"role": {"enum": ["admin", "reader"]}, "password": _S,
                                        "disabled": {"type": "boolean"}}, []),
                  "responses": _ok(200, _USER, (400, "malformed"), *_ADMIN_ERR, (404, "no such user"),
                                   (409, "would leave no enabled admin"))},
        "delete": {"summary": "Delete a user (admin).", "security": _SEC,
                   "responses": _ok(204, "deleted", *_ADMIN_ERR, (404, "no such user"),
                                    (409, "would leave no enabled admin"))},
    },
    "/api/v1/users/me/password": {
        "post": {"summary": "Change the logged-in user's own password.", "security": [{"session": []}],
                 "requestBody": _body({"old_password": _S, "new_password": _S}, ["old_password", "new_password"]),
                 "responses": _ok(204, "changed; the user's other sessions end", (400, "malformed or refused"),
                                  (401, "not logged in"), (403, "old password wrong or missing X-Heron-CSRF"),
                                  (429, "too many wrong passwords"))},
    },
    "/api/v1/tokens": {
        "get": {"summary": "List API tokens (admin); never the token itself.", "security": _SEC,
                "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer"}}],
                "responses": _ok(200, '{"tokens": [{"id", "name", "kind", "created", "last_used", "expires", '
                                      '"revoked"}]}', *_ADMIN_ERR)},
        "post": {"summary": "Create an API token (admin); the token is shown only in this answer.", "security": _SEC,
                 "requestBody": _body({"name": _S, "role": {"enum": ["admin", "reader", "enroll"]},
                                       "expires": {"type": "integer", "description": "ns since the epoch"}},
                                      ["name", "role"]),
                 "responses": _ok(201, '{"id", "token", "name", "kind", "created", "expires", ...}',
                                  (400, "malformed"), *_ADMIN_ERR)},
    },
    "/api/v1/tokens/{id}": {
        "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"},
                        "description": "the first 16 hex digits of the token's SHA-256"}],
        "delete": {"summary": "Revoke an API token (admin).", "security": _SEC,
                   "responses": _ok(204, "revoked", *_ADMIN_ERR, (404, "no such token"))},
    },
    "/api/v1/agents/{agent_id}/token": {
        "parameters": [{"name": "agent_id", "in": "path", "required": True, "schema": {"type": "string"}}],
        "delete": {"summary": "Revoke an agent's token (admin): its next ingest gets 401, so it must enrol "
                              "again (rotate the enrolment token to keep it out).", "security": _SEC,
                   "responses": _ok(204, "revoked (also when it already was)", *_ADMIN_ERR, (404, "no such agent"))},
    },
}
