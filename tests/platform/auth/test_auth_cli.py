"""``heron user`` / ``heron token`` on a temp data dir, and the first-start admin user."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from heron.cli.main import main
from heron.platform.auth import passwords
from heron.platform.auth.bootstrap import ADMIN_PASSWORD_FILE, ensure_admin_user
from heron.platform.auth.store import AuthStore
from heron.platform.storage.db import Database
from heron.platform.storage.sql import SqlStorage


@pytest.fixture
def data(tmp_path: Path) -> Path:
    (tmp_path / "platform").mkdir()
    SqlStorage.open(str(tmp_path / "platform" / "heron.db")).close()  # as the platform leaves it
    return tmp_path


def _store(data: Path) -> AuthStore:
    return AuthStore(Database(str(data / "platform" / "heron.db")))


def test_user_commands(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pw = data / "pw"
    pw.write_text("a long password\n")
    d = ["--data", str(data)]
    assert main(["user", "add", "ann", "--role", "admin", "--password-file", str(pw), *d]) == 0
    assert main(["user", "add", "bob", "--password-file", str(pw), *d]) == 0
    with pytest.raises(SystemExit, match="exists"):
        main(["user", "add", "bob", "--password-file", str(pw), *d])
    capsys.readouterr()
    assert main(["user", "list", "--json", *d]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(u["username"], u["role"]) for u in listed] == [("ann", "admin"), ("bob", "reader")]
    store = _store(data)
    found = store.find_user("bob")
    assert found is not None and passwords.verify_password("a long password", found[1])

    pw.write_text("another long one\n")
    assert main(["user", "passwd", "bob", "--password-file", str(pw), *d]) == 0
    found = store.find_user("bob")
    assert found is not None and passwords.verify_password("another long one", found[1])
    assert main(["user", "disable", "bob", *d]) == 0
    with pytest.raises(SystemExit, match="no enabled admin"):
        main(["user", "disable", "ann", *d])
    with pytest.raises(SystemExit, match="no user"):
        main(["user", "disable", "nobody", *d])
    pw.write_text("short\n")
    with pytest.raises(SystemExit, match="at least 12"):
        main(["user", "add", "cy", "--password-file", str(pw), *d])
    capsys.readouterr()
    assert main(["user", "list", *d]) == 0
    out = capsys.readouterr().out
    assert "bob" in out and "disabled" in out
    store.db.close()


def test_token_commands(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = ["--data-dir", str(data)]
    assert main(["token", "create", "--name", "ci", "--role", "reader", *d]) == 0
    token = capsys.readouterr().out.strip()
    assert len(token) >= 40
    assert main(["token", "list", "--json", *d]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(t["name"], t["kind"], t["revoked"]) for t in listed] == [("ci", "reader", None)]
    assert token not in json.dumps(listed)
    assert main(["token", "revoke", listed[0]["id"], *d]) == 0
    assert capsys.readouterr().out.startswith("revoked token")
    assert main(["token", "list", "--json", *d]) == 0
    assert json.loads(capsys.readouterr().out)[0]["revoked"] is not None
    with pytest.raises(SystemExit, match="16 lowercase hex"):
        main(["token", "revoke", "zz", *d])
    with pytest.raises(SystemExit, match="no token"):
        main(["token", "revoke", "0" * 16, *d])


def test_cli_without_a_database(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no platform database"):
        main(["user", "list", "--data", str(tmp_path)])
    (tmp_path / "platform").mkdir()
    Database(str(tmp_path / "platform" / "heron.db")).close()  # a file without the schema
    with pytest.raises(SystemExit, match="no users table"):
        main(["user", "list", "--data", str(tmp_path)])


def test_first_start_admin_user(data: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = Database(str(data / "platform" / "heron.db"))
    try:
        assert ensure_admin_user(db, data)
        path = data / ADMIN_PASSWORD_FILE
        password = path.read_text().strip()
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert password not in caplog.text and str(path) in caplog.text
        found = AuthStore(db).find_user("admin")
        assert found is not None and found[0].role == "admin" and passwords.verify_password(password, found[1])
        assert not ensure_admin_user(db, data)  # users exist: nothing to do
        assert path.read_text().strip() == password
    finally:
        db.close()
