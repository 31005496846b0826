"""Password hashing with scrypt (stdlib), stored as ``scrypt$n$r$p$salt$hash`` (base64 salt and hash).

The parameters travel in the string, so they can be raised later without invalidating old hashes.
Verification is constant-time, and verifying for a user that does not exist still spends a hash,
so the time a login takes does not tell whether the username exists.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import secrets

N, R, P = 2**15, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
MIN_LENGTH = 12
MAX_LENGTH = 1024  # longer is refused before hashing: nobody types that, an attacker might
# Bounds on the parameters a stored hash may ask for: a tampered row must not make us hash for minutes.
_MAX_N, _MAX_R, _MAX_P = 2**20, 32, 16


class PasswordPolicyError(ValueError):
    """The password is refused (too short or too long); the message says why."""


def check_policy(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordPolicyError(f"password must have at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordPolicyError(f"password must have at most {MAX_LENGTH} characters")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    # maxmem: scrypt needs 128 * r * n bytes (32 MiB at the defaults), the default cap is exactly that.
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=HASH_BYTES,
                          maxmem=256 * r * n + (1 << 20))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str) -> str:
    """The encoded hash of ``password``; raises PasswordPolicyError if the policy refuses it."""
    check_policy(password)
    salt = secrets.token_bytes(SALT_BYTES)
    return f"scrypt${N}${R}${P}${_b64(salt)}${_b64(_scrypt(password, salt, N, R, P))}"


def _parse(encoded: str) -> tuple[int, int, int, bytes, bytes] | None:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt" or not all(x.isascii() and x.isdigit() for x in parts[1:4]):
        return None
    n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
    if not (1 < n <= _MAX_N and n & (n - 1) == 0 and 0 < r <= _MAX_R and 0 < p <= _MAX_P):
        return None
    try:
        salt, digest = _unb64(parts[4]), _unb64(parts[5])
    except (binascii.Error, ValueError):
        return None
    if not salt or len(digest) != HASH_BYTES:
        return None
    return n, r, p, salt, digest


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(24))


def verify_password(password: str, encoded: str | None) -> bool:
    """True if ``password`` matches ``encoded``. ``encoded=None`` (no such user) spends a hash
    all the same and returns False; so does a malformed or tampered hash."""
    if len(password) > MAX_LENGTH:
        return False
    parsed = _parse(encoded) if encoded is not None else None
    if parsed is None:
        _, _, _, salt, digest = _parse(_dummy_hash()) or (N, R, P, b"x", b"")
        hmac.compare_digest(_scrypt(password, salt, N, R, P), digest)
        return False
    n, r, p, salt, digest = parsed
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), digest)


def random_password() -> str:
    return secrets.token_urlsafe(18)  # 24 characters, 144 bits
