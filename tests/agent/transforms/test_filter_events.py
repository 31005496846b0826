"""Filter rules over network and file events: which rules apply to which types, include scoping."""

from __future__ import annotations

import pytest

from heron.agent.config import FilterConfig, MatchRule, parse_config
from heron.agent.transforms.filter import ProcessFilter
from heron.schema.events import DnsQuery, Event, FileChange, NetFlow, NetListen, Process, ProcessExec, ProcessRef


def flow(remote: str, port: int = 443, exe: str = "/usr/bin/curl", domain: str | None = None) -> NetFlow:
    return NetFlow(ts=1, process=ProcessRef(pid=10, exe=exe, uid=0, user="root"), direction="out",
                   protocol="tcp", local_addr="10.0.0.5", remote_addr=remote, remote_port=port, domain=domain)


def exec_(exe: str) -> ProcessExec:
    return ProcessExec(ts=1, process=Process(key=f"k-{exe}", pid=11, exe=exe, comm=exe.rsplit("/", 1)[-1]))


def change(path: str, exe: str = "/usr/bin/vi") -> FileChange:
    return FileChange(ts=1, path=path, action="modify", process=ProcessRef(pid=12, exe=exe))


def kept(cfg: FilterConfig, events: list[Event]) -> list[Event]:
    return ProcessFilter(cfg)(events)


def test_drop_loopback_flows_only() -> None:
    f = flow("127.0.0.1")
    ext = flow("93.184.216.34")
    v6 = flow("::1")
    ex = exec_("/usr/bin/curl")
    out = kept(FilterConfig(exclude=[MatchRule(remote="loopback")]), [f, ext, v6, ex])
    assert out == [ext, ex]


def test_include_external_scopes_to_flows() -> None:
    cfg = FilterConfig(include=[MatchRule(remote="external")])
    events: list[Event] = [flow("10.1.2.3"), flow("127.0.0.1"), exec_("/bin/ls"), change("/etc/passwd"),
                           NetListen(ts=1, protocol="tcp", addr="0.0.0.0", port=22)]
    out = kept(cfg, events)
    # Only flows are narrowed: execs, file changes and listeners have no include rule of their own.
    assert out == [events[0], events[2], events[3], events[4]]


def test_port_matches_local_or_remote_and_listeners() -> None:
    listen = NetListen(ts=1, protocol="tcp", addr="0.0.0.0", port=5353)
    out = kept(FilterConfig(exclude=[MatchRule(port=5353)]), [flow("1.1.1.1", 5353), flow("1.1.1.1", 53), listen])
    assert [getattr(e, "remote_port", None) for e in out] == [53]


def test_cidr_and_domain() -> None:
    a, b = flow("10.9.8.7", domain="db.internal"), flow("192.168.1.1", domain="api.example.com")
    assert kept(FilterConfig(exclude=[MatchRule(remote="10.0.0.0/8")]), [a, b]) == [b]
    assert kept(FilterConfig(exclude=[MatchRule(domain="*.example.com")]), [a, b]) == [a]
    dns = DnsQuery(ts=1, query="api.example.com", qtype="A")
    assert kept(FilterConfig(exclude=[MatchRule(domain="*.example.com")]), [dns]) == []


def test_process_fields_apply_to_the_process_behind_events() -> None:
    cfg = FilterConfig(exclude=[MatchRule(exe="/usr/bin/curl")])
    events: list[Event] = [flow("1.1.1.1"), flow("1.1.1.1", exe="/usr/bin/wget"), exec_("/usr/bin/curl")]
    assert kept(cfg, events) == [events[1]]


def test_path_rules_and_type_scoping() -> None:
    a, b = change("/etc/mtab"), change("/etc/shadow")
    assert kept(FilterConfig(exclude=[MatchRule(path="/etc/mtab")]), [a, b]) == [b]
    # "type" narrows a process rule to execs: vi's file changes stay.
    cfg = FilterConfig(exclude=[MatchRule(type="process.*", exe="/usr/bin/vi")])
    ev = exec_("/usr/bin/vi")
    assert kept(cfg, [ev, a]) == [a]


def test_rules_whose_fields_never_meet_are_config_errors() -> None:
    with pytest.raises(Exception, match="never apply to the same event type"):
        parse_config({"filter": {"exclude": [{"path": "/etc/*", "remote": "loopback"}]}})
    with pytest.raises(Exception, match="not an address"):
        parse_config({"filter": {"exclude": [{"remote": "nowhere"}]}})


def test_ipv4_mapped_is_loopback() -> None:
    assert kept(FilterConfig(exclude=[MatchRule(remote="loopback")]), [flow("::ffff:127.0.0.1")]) == []
