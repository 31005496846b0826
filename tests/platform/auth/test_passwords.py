from __future__ import annotations

import pytest

from heron.platform.auth import passwords


def test_hash_and_verify() -> None:
    encoded = passwords.hash_password("correct horse battery")
    assert encoded.startswith("scrypt$32768$8$1$")
    assert passwords.verify_password("correct horse battery", encoded)
    assert not passwords.verify_password("correct horse batterY", encoded)
    assert not passwords.verify_password("", encoded)
    # salted: the same password hashes differently
    assert passwords.hash_password("correct horse battery") != encoded


def test_tampered_or_malformed_hash_is_refused() -> None:
    encoded = passwords.hash_password("correct horse battery")
    head, digest = encoded.rsplit("$", 1)
    flipped = head + "$" + ("A" if digest[0] != "A" else "B") + digest[1:]
    assert not passwords.verify_password("correct horse battery", flipped)
    assert not passwords.verify_password("correct horse battery", encoded.replace("$8$", "$9$"))
    for bad in ("", "plain", "scrypt$1$8$1$c2FsdA$aGFzaA", "scrypt$32768$8$1$!!$??",
                "scrypt$1073741824$8$1$c2FsdA$" + digest, "bcrypt$32768$8$1$c2FsdA$" + digest):
        assert not passwords.verify_password("correct horse battery", bad)


def test_policy() -> None:
    with pytest.raises(passwords.PasswordPolicyError, match="at least 12"):
        passwords.hash_password("short")
    with pytest.raises(passwords.PasswordPolicyError, match="at most 1024"):
        passwords.hash_password("x" * 1025)
    assert not passwords.verify_password("x" * 1025, passwords.hash_password("x" * 1024))


def test_unknown_user_still_spends_a_hash(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = passwords._scrypt

    def counting(*args: object) -> bytes:
        calls.append(1)
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(passwords, "_scrypt", counting)
    passwords._dummy_hash()  # computed once, not part of the count
    calls.clear()
    assert not passwords.verify_password("correct horse battery", None)
    assert not passwords.verify_password("correct horse battery", "garbage")
    assert len(calls) == 2
