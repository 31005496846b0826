"""``heron user ...`` and ``heron token ...``: manage console users and API tokens (and revoke an agent's
token: ``heron token revoke --agent ID``) of a local platform directly in its database
(``<data>/platform/heron.db``, or ``--database URL`` for PostgreSQL).

The platform creates and migrates the database when it starts; these commands refuse a database
that has no users table yet instead of creating one behind the migrations' back.
"""

from __future__ import annotations

import getpass
import json
import sys
import time
from pathlib import Path
from typing import TextIO

import sqlalchemy as sa

from heron.platform.api.auth import hash_token, new_token
from heron.platform.auth import passwords
from heron.platform.auth.store import API_TOKEN_KINDS, ROLES, AuthStore, Conflict
from heron.platform.storage.db import Database, DatabaseUnavailable

DB_FILE = "heron.db"


def open_store(data_dir: str | Path, url: str | None) -> AuthStore:
    if url is None:
        path = Path(data_dir) / "platform" / DB_FILE
        if not path.exists():
            raise SystemExit(f"heron: no platform database at {path}: start the platform once (heron up/server), "
                             "or pass --data DIR / --database URL")
        url = str(path)
    try:
        db = Database(url)
        has_users = sa.inspect(db.engine).has_table("users")
    except (ValueError, sa.exc.SQLAlchemyError, DatabaseUnavailable) as e:
        raise SystemExit(f"heron: cannot open the database: {e}") from None
    if not has_users:
        db.close()
        raise SystemExit("heron: the database has no users table yet: start the platform once to migrate it")
    return AuthStore(db)


def _read_password(password_file: str | None, confirm: bool = True) -> str:
    if password_file is not None:
        try:
            with open(password_file) as f:
                password = f.readline().rstrip("\r\n")
        except OSError as e:
            raise SystemExit(f"heron: cannot read {password_file}: {e.strerror or e}") from None
    else:
        password = getpass.getpass("password: ")
        if confirm and getpass.getpass("again: ") != password:
            raise SystemExit("heron: the passwords differ")
    try:
        passwords.check_policy(password)
    except passwords.PasswordPolicyError as e:
        raise SystemExit(f"heron: {e}") from None
    return password


def _time(ns: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9)) if ns else "-"


def user_add(store: AuthStore, name: str, role: str, password_file: str | None, out: TextIO | None = None) -> int:
    if role not in ROLES:
        raise SystemExit(f"heron: role must be one of {', '.join(ROLES)}")
    digest = passwords.hash_password(_read_password(password_file))
    try:
        user = store.add_user(name, digest, role, time.time_ns())
    except Conflict as e:
        raise SystemExit(f"heron: {e}") from None
    print(f"added user {user.username} ({user.role}, id {user.id})", file=out)
    return 0


def _user_id(store: AuthStore, name: str) -> int:
    found = store.find_user(name)
    if found is None:
        raise SystemExit(f"heron: no user {name!r}")
    return found[0].id


def user_passwd(store: AuthStore, name: str, password_file: str | None, out: TextIO | None = None) -> int:
    user_id = _user_id(store, name)
    digest = passwords.hash_password(_read_password(password_file))
    store.update_user(user_id, time.time_ns(), password_hash=digest)
    ended = store.delete_user_sessions(user_id)
    print(f"changed the password of {name} (ended {ended} sessions)", file=out)
    return 0


def user_disable(store: AuthStore, name: str, out: TextIO | None = None) -> int:
    try:
        store.update_user(_user_id(store, name), time.time_ns(), disabled=True)
    except Conflict as e:
        raise SystemExit(f"heron: {e}") from None
    print(f"disabled user {name}", file=out)
    return 0


def user_list(store: AuthStore, as_json: bool, out: TextIO | None = None) -> int:
    found = store.list_users()
    if as_json:
        print(json.dumps([u.json() for u in found]), file=out)
        return 0
    print(f"{'ID':>5}  {'USERNAME':<24} {'ROLE':<7} {'STATE':<9} LAST LOGIN", file=out)
    for u in found:
        state = "disabled" if u.disabled else "enabled"
        print(f"{u.id:>5}  {u.username:<24} {u.role:<7} {state:<9} {_time(u.last_login)}", file=out)
    return 0


def token_create(store: AuthStore, name: str, role: str, expires_days: float | None,
                 out: TextIO | None = None) -> int:
    if role not in API_TOKEN_KINDS:
        raise SystemExit(f"heron: role must be one of {', '.join(API_TOKEN_KINDS)}")
    now = time.time_ns()
    expires = now + int(expires_days * 86400e9) if expires_days is not None else None
    token = new_token()
    made = store.add_token(hash_token(token), role, name, None, now, expires)
    print(f"created {role} token {made.id} ({name}); it is shown only now:", file=sys.stderr)
    print(token, file=out)
    return 0


def token_list(store: AuthStore, as_json: bool, out: TextIO | None = None) -> int:
    found = store.list_tokens()
    if as_json:
        print(json.dumps([t.json() for t in found]), file=out)
        return 0
    print(f"{'ID':<16}  {'KIND':<7} {'NAME':<24} {'CREATED':<19}  {'LAST USED':<19}  {'EXPIRES':<19}  REVOKED",
          file=out)
    for t in found:
        print(f"{t.id:<16}  {t.kind:<7} {t.name[:24]:<24} {_time(t.created):<19}  {_time(t.last_used):<19}  "
              f"{_time(t.expires):<19}  {_time(t.revoked)}", file=out)
    return 0


def token_revoke(store: AuthStore, token_id: str, out: TextIO | None = None) -> int:
    if len(token_id) != 16 or any(c not in "0123456789abcdef" for c in token_id):
        raise SystemExit("heron: a token id is 16 lowercase hex digits (see heron token list)")
    found = [t for t in store.tokens_by_id(token_id) if t.kind in API_TOKEN_KINDS]
    if len(found) != 1:
        raise SystemExit(f"heron: no token {token_id}" if not found else f"heron: ambiguous token id {token_id}")
    if store.revoke_token(found[0].token_hash, time.time_ns()):
        print(f"revoked token {token_id}", file=out)
    else:
        print(f"token {token_id} was already revoked", file=out)
    return 0


def agent_token_revoke(store: AuthStore, agent_id: str, out: TextIO | None = None) -> int:
    revoked = store.revoke_agent_tokens(agent_id, time.time_ns())
    if revoked is None:
        raise SystemExit(f"heron: no agent {agent_id!r} (the console's Hosts page shows agent ids)")
    print(f"revoked the token of agent {agent_id}" if revoked else f"agent {agent_id} has no live token", file=out)
    return 0
