"""The kernel audit netlink interface: status, rules, daemon registration, record text.

No policy here. ``AuditControl`` speaks requests/replies on its own socket; ``AuditSession``
makes this process the audit daemon for a set of rules and puts everything back on ``close``
(rules it added deleted, enabled flag and backlog limit restored, pid unregistered). Records
arrive on the session's own socket, one per datagram. Record text is untrusted: ``parse_record``
never raises, it returns None for what is not a record.
"""

from __future__ import annotations

import atexit
import errno
import os
import platform
import re
import struct
import threading
from dataclasses import dataclass, field

from heron.agent.linux.netlink import (
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    Message,
    NetlinkError,
    NetlinkSocket,
    error_code,
    parse,
    pid_alive,
)

NETLINK_AUDIT = 9

AUDIT_GET = 1000
AUDIT_SET = 1001
AUDIT_ADD_RULE = 1011
AUDIT_DEL_RULE = 1012
AUDIT_LIST_RULES = 1013

AUDIT_SYSCALL = 1300
AUDIT_PATH = 1302
AUDIT_CONFIG_CHANGE = 1305
AUDIT_CWD = 1307
AUDIT_EXECVE = 1309
AUDIT_EOE = 1320
AUDIT_PROCTITLE = 1327

AUDIT_STATUS_ENABLED = 0x1
AUDIT_STATUS_PID = 0x4
AUDIT_STATUS_BACKLOG_LIMIT = 0x10

AUDIT_FILTER_EXIT = 0x04
AUDIT_FILTER_EXCLUDE = 0x05
AUDIT_ALWAYS = 2
AUDIT_MSGTYPE = 12
AUDIT_ARCH = 11
AUDIT_FILTERKEY = 210
AUDIT_NOT_EQUAL = 0x30000000
AUDIT_EQUAL = 0x40000000
AUDIT_BITMASK_SIZE = 64
AUDIT_MAX_FIELDS = 64

UNSET_ID = 0xFFFFFFFF

# audit_status grew over time; short replies from older kernels are zero-padded.
_STATUS = struct.Struct("=11I")
# audit_rule_data head: flags, action, field_count, mask[64], fields[64], values[64], fieldflags[64], buflen
_RULE = struct.Struct(f"=3I{AUDIT_BITMASK_SIZE}I{AUDIT_MAX_FIELDS}I{AUDIT_MAX_FIELDS}I{AUDIT_MAX_FIELDS}II")

# (arch token, execve, execveat) per ABI this machine can run.
_EXEC_SYSCALLS: dict[str, list[tuple[int, int, int]]] = {
    "x86_64": [(0xC000003E, 59, 322)],
    "aarch64": [(0xC00000B7, 221, 281)],
}
_COMPAT_SYSCALLS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "x86_64": ("/proc/sys/abi/vsyscall32", (0x40000003, 11, 358)),
    "aarch64": ("/proc/sys/abi/cp15_barrier", (0x40000028, 11, 387)),
}


@dataclass(frozen=True)
class AuditStatus:
    mask: int
    enabled: int
    failure: int
    pid: int
    rate_limit: int
    backlog_limit: int
    lost: int
    backlog: int
    feature_bitmap: int
    backlog_wait_time: int
    backlog_wait_time_actual: int

    @staticmethod
    def unpack(payload: bytes) -> AuditStatus:
        return AuditStatus(*_STATUS.unpack(payload[: _STATUS.size].ljust(_STATUS.size, b"\0")))


def pack_status(mask: int, enabled: int = 0, pid: int = 0, backlog_limit: int = 0) -> bytes:
    return _STATUS.pack(mask, enabled, 0, pid, 0, backlog_limit, 0, 0, 0, 0, 0)


@dataclass(frozen=True)
class AuditRule:
    """One rule as the kernel stores it: list filter, action, syscalls, (field, op, value)."""

    flags: int
    action: int
    syscalls: frozenset[int]
    fields: tuple[tuple[int, int, int], ...]
    key: str = ""

    def pack(self) -> bytes:
        mask = [0] * AUDIT_BITMASK_SIZE
        for nr in self.syscalls:
            mask[nr // 32] |= 1 << (nr % 32)
        fields = list(self.fields)
        buf = b""
        if self.key:
            buf = self.key.encode()
            fields.append((AUDIT_FILTERKEY, AUDIT_EQUAL, len(buf)))
        pad = [0] * (AUDIT_MAX_FIELDS - len(fields))
        return _RULE.pack(
            self.flags, self.action, len(fields), *mask,
            *[f[0] for f in fields], *pad,
            *[f[2] for f in fields], *pad,
            *[f[1] for f in fields], *pad,
            len(buf),
        ) + buf

    @staticmethod
    def unpack(payload: bytes) -> AuditRule:
        if len(payload) < _RULE.size:
            raise ValueError("short audit_rule_data")
        v = _RULE.unpack_from(payload)
        count = min(v[2], AUDIT_MAX_FIELDS)
        mask = v[3 : 3 + AUDIT_BITMASK_SIZE]
        names = v[67 : 67 + count]
        values = v[131 : 131 + count]
        ops = v[195 : 195 + count]
        buf = payload[_RULE.size : _RULE.size + v[259]]
        syscalls = frozenset(w * 32 + b for w, bits in enumerate(mask) for b in range(32) if bits >> b & 1)
        fields: list[tuple[int, int, int]] = []
        key, off = "", 0
        for name, op, value in zip(names, ops, values, strict=True):
            if name == AUDIT_FILTERKEY:
                key = buf[off : off + value].decode("utf-8", "backslashreplace")
                off += value
            else:
                fields.append((name, op, value))
        return AuditRule(v[0], v[1], syscalls, tuple(fields), key)


def exec_rules(key: str, machine: str | None = None) -> list[AuditRule]:
    """exit,always rules for execve/execveat, one per ABI the machine runs (64-bit, and 32-bit
    when compat is built in), tagged with ``key``."""
    machine = machine or platform.machine()
    abis = list(_EXEC_SYSCALLS.get(machine, []))
    compat = _COMPAT_SYSCALLS.get(machine)
    if compat and os.path.exists(compat[0]):
        abis.append(compat[1])
    return [
        AuditRule(AUDIT_FILTER_EXIT, AUDIT_ALWAYS, frozenset((execve, execveat)),
                  ((AUDIT_ARCH, AUDIT_EQUAL, arch),), key)
        for arch, execve, execveat in abis
    ]


# The kernel refuses a key on exclude rules, so ours carry this always-true second condition
# instead ("msgtype != 'HRN'"): it tells our rules, leftovers included, from anyone else's.
EXCLUDE_MARK = 0x48524E


def exclude_rules(msg_types: tuple[int, ...]) -> list[AuditRule]:
    """Exclude-filter rules that stop the kernel from writing records of ``msg_types`` at all
    (``auditctl -a always,exclude -F msgtype=T``), marked as ours. They are global: load
    them only while this process is the audit daemon."""
    return [
        AuditRule(AUDIT_FILTER_EXCLUDE, AUDIT_ALWAYS, frozenset(),  # no syscall mask: not an exit rule
                  ((AUDIT_MSGTYPE, AUDIT_EQUAL, t), (AUDIT_MSGTYPE, AUDIT_NOT_EQUAL, EXCLUDE_MARK)))
        for t in msg_types
    ]


def is_heron_exclude(rule: AuditRule) -> bool:
    return rule.flags == AUDIT_FILTER_EXCLUDE and (AUDIT_MSGTYPE, AUDIT_NOT_EQUAL, EXCLUDE_MARK) in rule.fields


class AuditControl:
    """Requests and replies on a dedicated NETLINK_AUDIT socket (no records arrive here)."""

    def __init__(self) -> None:
        self.nl = NetlinkSocket(NETLINK_AUDIT, rcvbuf=1024 * 1024)

    def request(self, msg_type: int, payload: bytes = b"", expect: int | None = None,
                timeout: float = 5.0) -> list[Message]:
        """Send and collect replies with our seq. Done at the ACK, but when a reply of type
        ``expect`` is wanted, also not before it (or NLMSG_DONE for dumps): the kernel sends
        replies from a thread, so they may come after the ACK. Raises NetlinkError."""
        seq = self.nl.send(msg_type, payload, NLM_F_REQUEST | NLM_F_ACK)
        replies: list[Message] = []
        acked = False
        while True:
            raw = self.nl.recv(timeout)
            if raw is None:
                raise NetlinkError(errno.ETIMEDOUT, f"no audit reply to request {msg_type}")
            msgs, _bad = parse(raw)
            for m in msgs:
                if m.seq != seq:
                    continue
                if m.type == NLMSG_ERROR:
                    code = error_code(m)
                    if code:
                        raise NetlinkError(code, f"audit request {msg_type}: {os.strerror(code)}")
                    acked = True
                elif m.type == NLMSG_DONE:
                    return replies
                else:
                    replies.append(m)
                    if m.type == expect and msg_type != AUDIT_LIST_RULES:
                        expect = None
            if acked and expect is None:
                return replies

    def status(self) -> AuditStatus:
        for m in self.request(AUDIT_GET, expect=AUDIT_GET):
            if m.type == AUDIT_GET:
                return AuditStatus.unpack(m.payload)
        raise NetlinkError(errno.EPROTO, "AUDIT_GET: no status in the reply")

    def set_status(self, mask: int, enabled: int = 0, pid: int = 0, backlog_limit: int = 0) -> None:
        self.request(AUDIT_SET, pack_status(mask, enabled, pid, backlog_limit))

    def rules(self) -> list[AuditRule]:
        out = []
        for m in self.request(AUDIT_LIST_RULES, expect=AUDIT_LIST_RULES):
            if m.type == AUDIT_LIST_RULES:
                try:
                    out.append(AuditRule.unpack(m.payload))
                except ValueError:
                    continue
        return out

    def add_rule(self, rule: AuditRule) -> None:
        self.request(AUDIT_ADD_RULE, rule.pack())

    def del_rule(self, rule: AuditRule) -> None:
        self.request(AUDIT_DEL_RULE, rule.pack())

    def close(self) -> None:
        self.nl.close()


def process_comm(pid: int, proc_root: str = "/proc") -> str:
    try:
        with open(f"{proc_root}/{pid}/comm", "rb") as f:
            return f.read().strip().decode("utf-8", "backslashreplace")
    except OSError:
        return "?"


def owner(status: AuditStatus, proc_root: str = "/proc") -> str | None:
    """Why we cannot become the audit daemon, or None: a live process is registered already."""
    if status.enabled == 2:
        return "audit configuration is locked (enabled=2, immutable until reboot)"
    if status.pid and pid_alive(status.pid):
        return f"audit socket owned by pid {status.pid} ({process_comm(status.pid, proc_root)})"
    return None


class AuditOwned(Exception):
    pass


class AuditSession:
    """This process as the audit daemon with ``rules`` loaded. ``close`` is idempotent, runs at
    interpreter exit too, and restores the state found at open."""

    BACKLOG_LIMIT = 8192

    def __init__(self, rules: list[AuditRule], rcvbuf: int = 32 * 1024 * 1024) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self.added: list[AuditRule] = []
        self.ctl = AuditControl()
        self.records: NetlinkSocket | None = None
        self._registered = False
        self._status_changed = False
        try:
            self.before = self.ctl.status()
            why = owner(self.before)
            if why:
                raise AuditOwned(why)
            atexit.register(self.close)
            self.records = NetlinkSocket(NETLINK_AUDIT, rcvbuf=rcvbuf)
            # The daemon's port is the socket that sends AUDIT_SET with our pid. The pid goes
            # alone: the kernel applies mask bits in turn, so a refused pid must change nothing.
            self._set(self.records, AUDIT_STATUS_PID, pid=os.getpid())
            self._registered = True
            self._status_changed = True
            self.ctl.set_status(AUDIT_STATUS_ENABLED | AUDIT_STATUS_BACKLOG_LIMIT, enabled=1,
                                backlog_limit=max(self.before.backlog_limit, self.BACKLOG_LIMIT))
            existing = set(self.ctl.rules())
            # Exclude rules of ours left by a run that could not clean up are adopted too, even
            # if this run loads other ones: the mark makes them exactly ours.
            for rule in existing:
                if is_heron_exclude(rule) and rule not in rules:
                    self.added.append(rule)
            for rule in rules:
                # A rule already present with our key is a leftover of a run that could not clean
                # up (killed): adopt it, so close removes it.
                if rule not in existing:
                    self.ctl.add_rule(rule)
                self.added.append(rule)
        except BaseException:
            self.close()
            raise

    def _set(self, nl: NetlinkSocket, mask: int, enabled: int = 0, pid: int = 0,
             backlog_limit: int = 0) -> None:
        seq = nl.send(AUDIT_SET, pack_status(mask, enabled, pid, backlog_limit), NLM_F_REQUEST | NLM_F_ACK)
        while True:
            raw = nl.recv(5.0)
            if raw is None:
                raise NetlinkError(errno.ETIMEDOUT, "no reply to AUDIT_SET")
            msgs, _ = parse(raw, header_excluded_len=True)
            for m in msgs:
                if m.type == NLMSG_ERROR and m.seq == seq:
                    code = error_code(m)
                    if code:
                        raise NetlinkError(code, f"AUDIT_SET: {os.strerror(code)}")
                    return

    def close(self) -> list[str]:
        """Undo everything; returns what could not be undone (empty when all went well)."""
        with self._lock:
            if self._closed:
                return []
            self._closed = True
        atexit.unregister(self.close)
        problems: list[str] = []
        for rule in self.added:
            try:
                self.ctl.del_rule(rule)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    problems.append(f"delete rule: {e}")
        self.added = []
        if self._status_changed:
            b = self.before
            try:
                self.ctl.set_status(AUDIT_STATUS_ENABLED | AUDIT_STATUS_BACKLOG_LIMIT,
                                    enabled=b.enabled, backlog_limit=b.backlog_limit)
            except OSError as e:
                problems.append(f"restore enabled/backlog: {e}")
        if self._registered:
            try:
                self.ctl.set_status(AUDIT_STATUS_PID, pid=0)
            except OSError as e:
                problems.append(f"unregister pid: {e}")
        if self.records is not None:
            self.records.close()
        self.ctl.close()
        return problems


# ---- record text -------------------------------------------------------------------------

_HEADER = re.compile(rb"audit\((\d+)\.(\d+):(\d+)\):\s*")
_FIELD = re.compile(rb"([A-Za-z0-9_\[\]-]+)=(\"[^\"]*\"|'[^']*'|\S*)")


@dataclass(slots=True)
class Record:
    type: int
    ts_ns: int
    serial: int
    fields: dict[str, str] = field(default_factory=dict)


def parse_record(msg_type: int, text: bytes) -> Record | None:
    """``audit(SEC.MS:SERIAL): k=v ...`` -> Record with raw values (quotes kept); None if the
    header is missing. Values are decoded on demand with ``untrusted``/``number``."""
    m = _HEADER.match(text)
    if m is None:
        return None
    fields = {k.decode("ascii"): v.decode("utf-8", "backslashreplace")
              for k, v in _FIELD.findall(text, m.end())}
    ts_ns = int(m[1]) * 1_000_000_000 + int(m[2][:3].ljust(3, b"0")) * 1_000_000
    return Record(msg_type, ts_ns, int(m[3]), fields)


_HEX = frozenset("0123456789ABCDEFabcdef")


def untrusted(raw: str | None) -> bytes | None:
    """Decode a string field the kernel wrote as "quoted" or as hex; None for (null)/absent.
    Raises ValueError on a value that is neither (the caller counts a parse error)."""
    if raw is None or raw == "(null)":
        return None
    if len(raw) >= 2 and raw[0] == raw[-1] == '"':
        return raw[1:-1].encode("utf-8", "surrogateescape")
    if len(raw) % 2 == 0 and _HEX.issuperset(raw):
        return bytes.fromhex(raw)
    raise ValueError(f"not a quoted or hex value: {raw[:40]!r}")


def number(raw: str | None, default: int = -1, base: int = 10) -> int:
    if raw is None:
        return default
    try:
        return int(raw, base)
    except ValueError:
        return default
