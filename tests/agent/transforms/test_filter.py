from __future__ import annotations

import pytest

from heron.agent.config import FilterConfig, MatchRule
from heron.agent.transforms.filter import ProcessFilter, compile_pattern, kernel_excluded_comms
from heron.schema.events import Ancestor, Process, ProcessExec, ProcessExit


def ex(key: str, exe: str, argv: list[str], comm: str = "x", uid: int = 0, user: str | None = "root",
       container: str | None = None, ancestors: list[Ancestor] | None = None) -> ProcessExec:
    return ProcessExec(ts=1, process=Process(key=key, pid=1, exe=exe, comm=comm, argv=argv, uid=uid, user=user,
                                             container_id=container, ancestors=ancestors or []))


def test_patterns() -> None:
    assert compile_pattern("/usr/bin/*")("/usr/bin/ls")
    assert not compile_pattern("/usr/bin/*")("/usr/sbin/ls")
    assert compile_pattern("re:^kworker/")("kworker/0:1")
    assert not compile_pattern("re:^kworker/")("xkworker/")
    assert compile_pattern("sshd")("sshd") and not compile_pattern("sshd")("sshd2")


def test_exclude_include_and_ancestors() -> None:
    cfg = FilterConfig(
        include=[MatchRule(user="root"), MatchRule(user="1000")],
        exclude=[MatchRule(exe="/usr/bin/sleep"), MatchRule(ancestor_exe="/usr/sbin/cron", cmdline="re:backup")],
    )
    f = ProcessFilter(cfg)
    cron = [Ancestor(10, "k10", "/bin/sh"), Ancestor(5, "k5", "/usr/sbin/cron")]
    events = [
        ex("a", "/usr/bin/sleep", ["sleep", "1"]),
        ex("b", "/usr/bin/ls", ["ls"]),
        ex("c", "/usr/bin/tar", ["tar", "backup.tgz"], ancestors=cron),
        ex("d", "/usr/bin/tar", ["tar", "other"], ancestors=cron),
        ex("e", "/usr/bin/id", ["id"], uid=1000, user="alice"),
        ex("f", "/usr/bin/id", ["id"], uid=33, user="www-data"),
    ]
    kept = f(events)
    assert [e.process.key for e in kept if isinstance(e, ProcessExec)] == ["b", "d", "e"]


def test_exit_follows_its_exec() -> None:
    f = ProcessFilter(FilterConfig(exclude=[MatchRule(comm="noisy")]))
    out = f([ex("a", "/x", ["x"], comm="noisy"), ex("b", "/y", ["y"]),
             ProcessExit(ts=2, key="a", pid=1), ProcessExit(ts=2, key="b", pid=2)])
    assert [(type(e).__name__, getattr(e, "key", None)) for e in out] == [("ProcessExec", None), ("ProcessExit", "b")]


def test_kernel_pushdown_only_plain_comm() -> None:
    cfg = FilterConfig(exclude=[MatchRule(comm="sleep"), MatchRule(comm="k*"), MatchRule(comm="cat", user="root"),
                                MatchRule(comm="a-very-long-command-name")])
    assert kernel_excluded_comms(cfg) == ["sleep"]  # a 16+ byte comm can never match a task name


def test_empty_rule_rejected() -> None:
    with pytest.raises(ValueError):
        ProcessFilter(FilterConfig(exclude=[MatchRule()]))


def test_exit_kept_when_a_later_exec_of_the_same_process_is_kept() -> None:
    f = ProcessFilter(FilterConfig(exclude=[MatchRule(comm="sh")]))
    out = f([ex("k", "/bin/sh", ["sh", "-c", "exec curl x"], comm="sh"), ex("k", "/usr/bin/curl", ["curl", "x"],
             comm="curl"), ProcessExit(ts=3, key="k", pid=1)])
    assert [type(e).__name__ for e in out] == ["ProcessExec", "ProcessExit"]
