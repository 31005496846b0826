"""Data access of users, sessions and API tokens (SQLAlchemy Core over a ``Database``).

Only hashes are stored: scrypt for passwords, SHA-256 for session cookies and tokens. The "last
enabled admin" rule is checked inside the transaction that would break it, with the admin rows
locked on PostgreSQL, so two concurrent requests cannot each remove one of the last two admins.
A user's API tokens are revoked in the transaction that disables or deletes the user (its admin and
enroll tokens when it is demoted to reader).
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from heron.platform.storage.db import Database
from heron.platform.storage.schema import agents, sessions, tokens, users

ROLES = ("admin", "reader")
API_TOKEN_KINDS = ("admin", "reader", "enroll")  # what an admin may create; agent tokens come from enrolment
ADMIN_TOKEN_KINDS = ("admin", "enroll")  # only an admin may hold these: a demoted user's are revoked


class Conflict(Exception):
    """The change would break a rule (username taken, last enabled admin); the message says which."""


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    role: str
    created: int
    disabled: int | None
    last_login: int | None

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "username": self.username, "role": self.role, "created": self.created,
                "disabled": self.disabled, "last_login": self.last_login}


@dataclass(frozen=True, slots=True)
class SessionRow:
    token_hash: str
    user: User
    csrf: str
    created: int
    expires: int
    last_seen: int


@dataclass(frozen=True, slots=True)
class ApiToken:
    token_hash: str
    kind: str
    name: str
    agent_id: str | None
    user_id: int | None
    created: int
    last_used: int | None
    expires: int | None
    revoked: int | None

    @property
    def id(self) -> str:
        return self.token_hash[:16]

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "kind": self.kind, "created": self.created,
                "last_used": self.last_used, "expires": self.expires, "revoked": self.revoked}


_USER_COLS = (users.c.id, users.c.username, users.c.role, users.c.created, users.c.disabled, users.c.last_login)


def _user(row: Any) -> User:
    return User(int(row.id), row.username, row.role, row.created, row.disabled, row.last_login)


def _token(row: Any) -> ApiToken:
    return ApiToken(row.token_hash, row.kind, row.name, row.agent_id, row.user_id, row.created, row.last_used,
                    row.expires, row.revoked)


class AuthStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- users ---------------------------------------------------------------------------------
    def add_user(self, username: str, password_hash: str, role: str, now: int) -> User:
        try:
            with self.db.begin() as conn:
                result = conn.execute(sa.insert(users).values(username=username, password_hash=password_hash,
                                                              role=role, created=now))
        except sa.exc.IntegrityError:  # the unique username (checked by the database: no race)
            raise Conflict(f"user {username!r} exists") from None
        key = result.inserted_primary_key
        assert key is not None
        return User(int(key[0]), username, role, now, None, None)

    def get_user(self, user_id: int) -> User | None:
        with self.db.read() as conn:
            row = conn.execute(sa.select(*_USER_COLS).where(users.c.id == user_id)).first()
        return _user(row) if row is not None else None

    def find_user(self, username: str) -> tuple[User, str] | None:
        """The user and its password hash."""
        with self.db.read() as conn:
            row = conn.execute(sa.select(*_USER_COLS, users.c.password_hash)
                               .where(users.c.username == username)).first()
        return (_user(row), row.password_hash) if row is not None else None

    def list_users(self) -> list[User]:
        with self.db.read() as conn:
            return [_user(r) for r in conn.execute(sa.select(*_USER_COLS).order_by(users.c.id))]

    def count_users(self) -> int:
        with self.db.read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(users)).scalar_one())

    def record_login(self, user_id: int, now: int) -> None:
        with self.db.begin() as conn:
            conn.execute(sa.update(users).where(users.c.id == user_id).values(last_login=now))

    def _lock_admins(self, conn: Connection) -> None:
        # FOR UPDATE on PostgreSQL (SQLite has no row locks; its writers are serialised anyway).
        conn.execute(sa.select(users.c.id).where(users.c.role == "admin", users.c.disabled.is_(None))
                     .with_for_update()).all()

    def _check_admin_left(self, conn: Connection) -> None:
        left = conn.execute(sa.select(sa.func.count()).select_from(users)
                            .where(users.c.role == "admin", users.c.disabled.is_(None))).scalar_one()
        if not left:
            raise Conflict("refused: this would leave no enabled admin user")

    def _revoke_user_tokens(self, conn: Connection, user_id: int, now: int, kinds: Collection[str]) -> None:
        conn.execute(sa.update(tokens).where(tokens.c.user_id == user_id, tokens.c.kind.in_(list(kinds)),
                                             tokens.c.revoked.is_(None)).values(revoked=now))

    def update_user(self, user_id: int, now: int, *, role: str | None = None, password_hash: str | None = None,
                    disabled: bool | None = None) -> User | None:
        """Apply the given changes; None if there is no such user. Disabling ends the user's
        sessions and revokes its tokens, demoting revokes its admin and enroll tokens (after a
        password change the caller ends the sessions with ``delete_user_sessions``)."""
        values: dict[str, Any] = {}
        if role is not None:
            values["role"] = role
        if password_hash is not None:
            values["password_hash"] = password_hash
        with self.db.begin() as conn:
            self._lock_admins(conn)
            row = conn.execute(sa.select(*_USER_COLS).where(users.c.id == user_id)).first()
            if row is None:
                return None
            if disabled is not None and bool(row.disabled) != disabled:
                values["disabled"] = now if disabled else None
            if values:
                conn.execute(sa.update(users).where(users.c.id == user_id).values(**values))
                self._check_admin_left(conn)
            if disabled:
                conn.execute(sa.delete(sessions).where(sessions.c.user_id == user_id))
                self._revoke_user_tokens(conn, user_id, now, API_TOKEN_KINDS)
            elif role is not None and role != "admin":
                self._revoke_user_tokens(conn, user_id, now, ADMIN_TOKEN_KINDS)
            row = conn.execute(sa.select(*_USER_COLS).where(users.c.id == user_id)).one()
            return _user(row)

    def delete_user(self, user_id: int, now: int | None = None) -> bool:
        """Delete the user, its sessions, and revoke its tokens (kept, revoked, for the token list)."""
        now = time.time_ns() if now is None else now
        with self.db.begin() as conn:
            self._lock_admins(conn)
            conn.execute(sa.delete(sessions).where(sessions.c.user_id == user_id))
            deleted = conn.execute(sa.delete(users).where(users.c.id == user_id)).rowcount
            if deleted:
                self._check_admin_left(conn)
                self._revoke_user_tokens(conn, user_id, now, API_TOKEN_KINDS)
            return bool(deleted)

    # -- sessions ------------------------------------------------------------------------------
    def add_session(self, token_hash: str, user_id: int, csrf: str, now: int, expires: int) -> None:
        with self.db.begin() as conn:
            conn.execute(sa.insert(sessions).values(token_hash=token_hash, user_id=user_id, csrf=csrf, created=now,
                                                    expires=expires, last_seen=now))

    def find_session(self, token_hash: str) -> SessionRow | None:
        query = (sa.select(sessions.c.token_hash, sessions.c.csrf, sessions.c.created.label("s_created"),
                           sessions.c.expires, sessions.c.last_seen, *_USER_COLS)
                 .join(users, users.c.id == sessions.c.user_id).where(sessions.c.token_hash == token_hash))
        with self.db.read() as conn:
            row = conn.execute(query).first()
        if row is None:
            return None
        return SessionRow(row.token_hash, _user(row), row.csrf, row.s_created, row.expires, row.last_seen)

    def touch_session(self, token_hash: str, now: int, older_than: int) -> None:
        """Set last_seen = now unless it is already newer than ``older_than`` (no write per request)."""
        with self.db.begin() as conn:
            conn.execute(sa.update(sessions).where(sessions.c.token_hash == token_hash,
                                                   sessions.c.last_seen < older_than).values(last_seen=now))

    def delete_session(self, token_hash: str) -> bool:
        with self.db.begin() as conn:
            return bool(conn.execute(sa.delete(sessions).where(sessions.c.token_hash == token_hash)).rowcount)

    def delete_user_sessions(self, user_id: int, keep: str | None = None) -> int:
        cond = sessions.c.user_id == user_id
        if keep is not None:
            cond = sa.and_(cond, sessions.c.token_hash != keep)
        with self.db.begin() as conn:
            return int(conn.execute(sa.delete(sessions).where(cond)).rowcount)

    def purge_sessions(self, now: int, idle_before: int) -> int:
        """Delete sessions past their absolute expiry or idle since before ``idle_before``."""
        with self.db.begin() as conn:
            return int(conn.execute(sa.delete(sessions).where(
                sa.or_(sessions.c.expires <= now, sessions.c.last_seen < idle_before))).rowcount)

    # -- tokens --------------------------------------------------------------------------------
    def add_token(self, token_hash: str, kind: str, name: str, user_id: int | None, now: int,
                  expires: int | None = None) -> ApiToken:
        with self.db.begin() as conn:
            conn.execute(sa.insert(tokens).values(token_hash=token_hash, kind=kind, name=name, user_id=user_id,
                                                  created=now, expires=expires))
        return ApiToken(token_hash, kind, name, None, user_id, now, None, expires, None)

    def find_token(self, token_hash: str) -> ApiToken | None:
        with self.db.read() as conn:
            row = conn.execute(sa.select(tokens).where(tokens.c.token_hash == token_hash)).first()
        return _token(row) if row is not None else None

    def touch_token(self, token_hash: str, now: int, older_than: int) -> None:
        """Set last_used = now unless it was set at or after ``older_than`` (at most one write a minute)."""
        with self.db.begin() as conn:
            conn.execute(sa.update(tokens).where(
                tokens.c.token_hash == token_hash,
                sa.or_(tokens.c.last_used.is_(None), tokens.c.last_used < older_than)).values(last_used=now))

    def list_tokens(self, kinds: Collection[str] = API_TOKEN_KINDS, limit: int = 1000) -> list[ApiToken]:
        query = (sa.select(tokens).where(tokens.c.kind.in_(list(kinds)))
                 .order_by(tokens.c.created.desc(), tokens.c.token_hash).limit(limit))
        with self.db.read() as conn:
            return [_token(r) for r in conn.execute(query)]

    def tokens_by_id(self, token_id: str) -> list[ApiToken]:
        """Tokens whose hash starts with ``token_id`` (the 16 hex digits the API shows)."""
        with self.db.read() as conn:
            return [_token(r) for r in conn.execute(
                sa.select(tokens).where(tokens.c.token_hash.startswith(token_id, autoescape=True)).limit(2))]

    def revoke_agent_tokens(self, agent_id: str, now: int) -> int | None:
        """Revoke the agent's live tokens; how many, or None if there is no such agent."""
        with self.db.begin() as conn:
            if conn.execute(sa.select(agents.c.agent_id).where(agents.c.agent_id == agent_id)).first() is None:
                return None
            return int(conn.execute(sa.update(tokens).where(
                tokens.c.agent_id == agent_id, tokens.c.kind == "agent", tokens.c.revoked.is_(None))
                .values(revoked=now)).rowcount)

    def revoke_token(self, token_hash: str, now: int) -> bool:
        with self.db.begin() as conn:
            return bool(conn.execute(sa.update(tokens).where(tokens.c.token_hash == token_hash,
                                                             tokens.c.revoked.is_(None)).values(revoked=now)).rowcount)
