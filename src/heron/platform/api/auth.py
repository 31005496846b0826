"""Bearer tokens: creation, hashing, and the per-endpoint role check.

Only the SHA-256 of a token is stored. A token is looked up by its hash (hashing first means the
lookup's timing says nothing about the token) and the stored hash is compared in constant time.
Roles: ``admin`` and ``reader`` query; ``enroll`` enrols agents; ``agent`` ingests and updates
itself only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Collection

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from heron.platform.api.context import ApiError, context
from heron.platform.storage.base import TokenKind, TokenRecord

MAX_TOKEN_LENGTH = 256
QUERY_ROLES: tuple[TokenKind, ...] = ("admin", "reader")
ENROLL_ROLES: tuple[TokenKind, ...] = ("enroll", "admin")
AGENT_ROLES: tuple[TokenKind, ...] = ("agent",)

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


async def authenticate(request: Request, roles: Collection[TokenKind]) -> TokenRecord:
    """The caller's token record: 401 if unknown or revoked, 403 if its role is not in ``roles``."""
    digest = hash_token(bearer_token(request))
    record = await run_in_threadpool(context(request).storage.find_token, digest)
    if record is None or not hmac.compare_digest(record.token_hash, digest) or record.revoked is not None:
        raise ApiError(401, "invalid token", _CHALLENGE)
    if record.kind not in roles:
        raise ApiError(403, f"a {record.kind} token may not do this")
    return record
