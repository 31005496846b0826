"""First start: a console user ``admin`` with a random password kept in ``<data>/admin.password``.

Created only while there is no user at all. Only the file's path is logged: log files travel
further than a mode-0600 file. If the database was recreated but the file kept, the password in
the file is reused, so the operator's note stays right.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from heron.platform.auth import passwords
from heron.platform.auth.store import AuthStore, Conflict
from heron.platform.storage.db import Database

log = logging.getLogger("heron.platform")

ADMIN_USER = "admin"
ADMIN_PASSWORD_FILE = "admin.password"  # noqa: S105 (a file name)


def write_secret(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the start (never readable by others, even briefly)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


def ensure_admin_user(db: Database, data_dir: Path) -> bool:
    """Create the first console user when the users table is empty; True if it did."""
    store = AuthStore(db)
    if store.count_users():
        return False
    path = data_dir / ADMIN_PASSWORD_FILE
    try:
        password = path.read_text().strip()
    except FileNotFoundError:
        password = ""
    reuse = len(password) >= passwords.MIN_LENGTH
    if not reuse:
        password = passwords.random_password()
    try:
        store.add_user(ADMIN_USER, passwords.hash_password(password), "admin", time.time_ns())
    except Conflict:  # another server sharing the database made it first
        return False
    if not reuse:
        write_secret(path, password)
    log.warning("created console user %r; its password is in %s", ADMIN_USER, path)
    return True
