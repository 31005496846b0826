"""Audit netlink: record text parsing, rule structs, and a real session that restores state."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from heron.agent.linux import audit
from heron.agent.linux.netlink import parse


def test_parse_record_fields_and_header() -> None:
    rec = audit.parse_record(1300, b'audit(1700000000.123:456): arch=c000003e syscall=59 '
                                   b'comm="my prog" exe=2F746D702F6120620A key=(null) msg=\'a=b c=d\'')
    assert rec is not None
    assert (rec.serial, rec.ts_ns) == (456, 1700000000_123_000_000)
    f = rec.fields
    assert audit.number(f["syscall"]) == 59 and audit.number(f["arch"], base=16) == 0xC000003E
    assert audit.untrusted(f["exe"]) == b"/tmp/a b\n"
    assert audit.untrusted(f["key"]) is None and audit.untrusted(None) is None
    assert f["msg"] == "'a=b c=d'"


@pytest.mark.parametrize("text", [b"", b"garbage", b"audit(1.2:)", b"audit(x.1:2): a=b", b"\xff" * 50])
def test_parse_record_rejects_what_is_not_a_record(text: bytes) -> None:
    assert audit.parse_record(1300, text) is None


@pytest.mark.parametrize("raw", ["4G", "ABC", "\"unterminated", "zz"])
def test_untrusted_bad_values_raise_value_error(raw: str) -> None:
    with pytest.raises(ValueError):
        audit.untrusted(raw)


def test_rule_pack_roundtrip() -> None:
    for rule in audit.exec_rules("heron", "x86_64") + audit.exec_rules("k", "aarch64"):
        back = audit.AuditRule.unpack(rule.pack())
        assert back == rule
    rules = audit.exec_rules("heron", "x86_64")
    assert rules[0].syscalls == {59, 322}
    with pytest.raises(ValueError):
        audit.AuditRule.unpack(b"\0" * 100)


def our_rules(ctl: audit.AuditControl) -> list[audit.AuditRule]:
    return [r for r in ctl.rules() if r.key == "heron"]


@pytest.mark.privileged
def test_session_receives_exec_records_and_restores_state() -> None:
    ctl = audit.AuditControl()
    try:
        before = ctl.status()
        rules_before = ctl.rules()
        session = audit.AuditSession(audit.exec_rules("heron"))
        assert session.records is not None
        now = ctl.status()
        assert now.pid == os.getpid() and now.enabled == 1 and now.backlog_limit >= 8192
        assert set(our_rules(ctl)) == set(audit.exec_rules("heron"))
        subprocess.run(["/bin/true", "heron-linux-audit"], check=True)
        seen = b""
        deadline = time.monotonic() + 5
        while b"heron-linux-audit" not in seen and time.monotonic() < deadline:
            raw = session.records.recv(0.2)
            if raw:
                msgs, bad = parse(raw, header_excluded_len=True)
                assert bad == 0
                seen += b"".join(m.payload for m in msgs if m.type == audit.AUDIT_EXECVE)
        assert b'"heron-linux-audit"' in seen
        assert session.close() == []
        assert session.close() == []  # twice is harmless
        after = ctl.status()
        assert (after.pid, after.enabled, after.backlog_limit) == (before.pid, before.enabled,
                                                                    before.backlog_limit)
        assert ctl.rules() == rules_before
    finally:
        ctl.close()


@pytest.mark.privileged
def test_second_daemon_is_refused_with_owner() -> None:
    first = audit.AuditSession(audit.exec_rules("heron"))
    try:
        ctl = audit.AuditControl()
        try:
            why = audit.owner(ctl.status())
        finally:
            ctl.close()
        assert why is not None and f"owned by pid {os.getpid()} (" in why
        with pytest.raises(audit.AuditOwned, match="owned by pid"):
            audit.AuditSession(audit.exec_rules("heron"))
    finally:
        assert first.close() == []
    ctl = audit.AuditControl()
    try:
        assert ctl.status().pid == 0 and our_rules(ctl) == []
    finally:
        ctl.close()


@pytest.mark.privileged
def test_leftover_rule_is_adopted_and_removed() -> None:
    ctl = audit.AuditControl()
    try:
        stale = audit.exec_rules("heron")[0]
        ctl.add_rule(stale)  # as a killed agent would leave it
        session = audit.AuditSession(audit.exec_rules("heron"))
        assert session.close() == []
        assert our_rules(ctl) == []
    finally:
        for r in our_rules(ctl):
            ctl.del_rule(r)
        ctl.close()


@pytest.mark.privileged
def test_exclude_rules_drop_records_and_leftovers_are_removed_exactly() -> None:
    ctl = audit.AuditControl()
    excl = audit.exclude_rules((audit.AUDIT_PATH, audit.AUDIT_PROCTITLE))
    try:
        rules_before = ctl.rules()
        ctl.add_rule(audit.exclude_rules((audit.AUDIT_CWD,))[0])  # a killed run's leftover, other type
        session = audit.AuditSession(audit.exec_rules("heron") + excl)
        assert session.records is not None
        assert set(excl) <= set(ctl.rules())
        subprocess.run(["/bin/true", "heron-linux-exclude"], check=True)
        # Records of the exec only (our own rule changes are audited too), up to its EOE.
        by_serial: dict[bytes, list[int]] = {}
        ours: bytes | None = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (ours is None or audit.AUDIT_EOE not in by_serial[ours]):
            raw = session.records.recv(0.2)
            for m in parse(raw, header_excluded_len=True)[0] if raw else []:
                serial = m.payload.split(b")", 1)[0]
                by_serial.setdefault(serial, []).append(m.type)
                if b"heron-linux-exclude" in m.payload and m.type == audit.AUDIT_EXECVE:
                    ours = serial
        assert ours is not None
        types = by_serial[ours]
        assert audit.AUDIT_SYSCALL in types and audit.AUDIT_EXECVE in types and audit.AUDIT_EOE in types
        assert audit.AUDIT_PATH not in types and audit.AUDIT_PROCTITLE not in types
        assert session.close() == []
        assert ctl.rules() == rules_before
        assert not any(audit.is_heron_exclude(r) for r in ctl.rules())
    finally:
        for r in ctl.rules():
            if audit.is_heron_exclude(r) or r.key == "heron":
                ctl.del_rule(r)
        ctl.close()
