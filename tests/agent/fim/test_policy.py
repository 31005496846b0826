"""Policy: which rule covers a path (recursive, direct, globs, excludes, actions, most specific),
the roots to mark, the directories to enter, and the built-in policy's choices."""

from __future__ import annotations

import time

import pytest

from heron.agent.config import FileConfig, FileWatch
from heron.agent.fim.default_policy import DEFAULT_WATCHES
from heron.agent.fim.paths import display_path, is_below, parent_of
from heron.agent.fim.policy import ALL_ACTIONS, Policy, Rule, split_watch_path


def policy(*watches: FileWatch) -> Policy:
    return Policy(Rule.from_watch(w) for w in watches)


def name(p: Policy, path: bytes, action: str | None = None) -> str | None:
    r = p.match(path, action)
    return r.name if r else None


def test_display_path_escapes_only_invalid_utf8() -> None:
    assert display_path(b"/etc/caf\xc3\xa9") == ("/etc/café", False)
    assert display_path(b"/tmp/a\nb") == ("/tmp/a\nb", False)
    assert display_path(b"/tmp/\xff\xfeok") == ("/tmp/\\xff\\xfeok", True)
    assert display_path(b"/tmp/back\\x41") == ("/tmp/back\\x41", False)  # a real backslash: not escaped
    assert parent_of(b"/etc") == b"/" and parent_of(b"/etc/x") == b"/etc" and parent_of(b"/") == b"/"
    assert is_below(b"/etc/x", b"/etc") and is_below(b"/etc", b"/etc") and not is_below(b"/etcx", b"/etc")
    assert is_below(b"/anything", b"/")


def test_split_watch_path() -> None:
    assert split_watch_path("/etc/") == (b"/etc", None)
    assert split_watch_path("/etc//ssh/../cron*") == (b"/etc", "cron*")
    assert split_watch_path("/home/*/.ssh") == (b"/home", "*/.ssh")
    assert split_watch_path("/") == (b"/", None)


def test_recursive_and_direct() -> None:
    p = policy(FileWatch(path="/srv/a", name="rec"), FileWatch(path="/srv/b", name="flat", recursive=False))
    assert name(p, b"/srv/a") == "rec"
    assert name(p, b"/srv/a/x/y/z") == "rec"
    assert name(p, b"/srv/ab") is None  # a sibling with the root as name prefix
    assert name(p, b"/srv") is None
    assert name(p, b"/srv/b") == "flat"
    assert name(p, b"/srv/b/child") == "flat"
    assert name(p, b"/srv/b/child/grandchild") is None
    assert name(p, b"relative/srv/a") is None


def test_globs_match_by_component() -> None:
    p = policy(FileWatch(path="/home/*/.ssh", name="ssh"),
               FileWatch(path="/etc/cron*", name="cron", recursive=False))
    assert name(p, b"/home/bob/.ssh") == "ssh"
    assert name(p, b"/home/bob/.ssh/authorized_keys") == "ssh"
    assert name(p, b"/home/bob/.ssh/sub/deep") == "ssh"  # recursive below the match
    assert name(p, b"/home/bob") is None
    assert name(p, b"/home/bob/x/.ssh/key") is None  # '*' does not cross '/'
    assert name(p, b"/home/\xff\xfe/.ssh/key") == "ssh"  # any bytes in a name
    assert name(p, b"/etc/cron.d") == "cron"
    assert name(p, b"/etc/crontab") == "cron"
    assert name(p, b"/etc/cron.d/job") == "cron"  # non-recursive glob: the match and its direct entries
    assert name(p, b"/etc/cron.d/job/x") is None
    assert name(p, b"/etc/passwd") is None


def test_excludes() -> None:
    p = policy(FileWatch(path="/data", name="data", exclude=["*.swp", "/data/cache", "known_hosts", "/data/t?p"]))
    assert name(p, b"/data/x") == "data"
    assert name(p, b"/data/deep/.file.swp") is None
    assert name(p, b"/data/cache") is None
    assert name(p, b"/data/cache/a/b") is None  # a directory exclude hides its subtree
    assert name(p, b"/data/cachex") == "data"
    assert name(p, b"/data/u/known_hosts") is None  # no '/': matched against the last component
    assert name(p, b"/data/u/known_hosts2") == "data"
    assert name(p, b"/data/tmp") is None and name(p, b"/data/tap/x") is None
    assert not p.covers_dir(b"/data/cache")
    assert p.covers_dir(b"/data/other")


def test_actions_and_fallback_to_broader_rule() -> None:
    p = policy(FileWatch(path="/data/log", name="log-deletes", actions=["delete"]),
               FileWatch(path="/data", name="data", exclude=["/data/log"]),
               FileWatch(path="/data/keys", name="keys", exclude=["*.tmp"]))
    assert name(p, b"/data/log/x", "delete") == "log-deletes"
    assert name(p, b"/data/log/x", "modify") is None  # the broader rule excludes it
    assert name(p, b"/data/log/x") == "log-deletes"  # no action given: any
    # An exclude in the specific rule does not blind the broader one.
    assert name(p, b"/data/keys/a.tmp") == "data"
    assert name(p, b"/data/keys/a") == "keys"
    assert p.match(b"/data/x") is not None and p.match(b"/data/x").actions == ALL_ACTIONS  # type: ignore[union-attr]


def test_most_specific_wins() -> None:
    p = policy(FileWatch(path="/etc", name="etc"),
               FileWatch(path="/etc/ssh", name="ssh"),
               FileWatch(path="/etc/ssh/sshd_config", name="sshd"),
               FileWatch(path="/etc/sudo*", name="sudoers"),
               FileWatch(path="/etc", name="second-etc"))
    assert name(p, b"/etc/hosts") == "etc"  # same root: the earlier rule
    assert name(p, b"/etc/ssh/moduli") == "ssh"
    assert name(p, b"/etc/ssh/sshd_config") == "sshd"
    assert name(p, b"/etc/sudoers.d/x") == "sudoers"  # a glob beats a plain rule at the same root


def test_roots_deduplicated_and_covers_dir() -> None:
    p = policy(FileWatch(path="/etc", name="etc"),
               FileWatch(path="/etc/ssh", name="ssh"),
               FileWatch(path="/root", name="root", recursive=False),
               FileWatch(path="/root/.ssh", name="rssh"),
               FileWatch(path="/root/.bashrc", name="rc", recursive=False),
               FileWatch(path="/home/*/.ssh", name="hssh"))
    assert p.roots() == [(b"/etc", True), (b"/home", True), (b"/root", False), (b"/root/.ssh", True),
                         (b"/root/.bashrc", False)]
    assert p.covers_dir(b"/etc/a/b")
    assert p.covers_dir(b"/root")
    assert not p.covers_dir(b"/root/.cache")  # /root is one level deep
    assert p.covers_dir(b"/root/.ssh/sub")
    assert p.covers_dir(b"/home")
    assert p.covers_dir(b"/home/bob")  # the glob's first component
    assert p.covers_dir(b"/home/bob/.ssh/x")
    assert not p.covers_dir(b"/home/bob/projects")
    assert not p.covers_dir(b"/var")
    q = policy(FileWatch(path="/a/b/c/file", name="deep", recursive=False))
    assert q.covers_dir(b"/a") and q.covers_dir(b"/a/b/c") and not q.covers_dir(b"/a/x")


def test_from_config_user_watches_first_and_default_optional() -> None:
    mine = FileWatch(path="/etc", name="mine")
    with_default = Policy.from_config(FileConfig(watches=[mine]))
    assert name(with_default, b"/etc/hosts") == "mine"
    assert name(with_default, b"/usr/bin/ls") == "system-binaries"
    alone = Policy.from_config(FileConfig(default_policy=False, watches=[mine]))
    assert name(alone, b"/usr/bin/ls") is None
    assert len(alone.rules) == 1
    with pytest.raises(ValueError, match="absolute"):
        Policy.from_config(FileConfig(watches=[FileWatch(path="etc")]))
    with pytest.raises(ValueError, match="unknown actions"):
        Policy.from_config(FileConfig(watches=[FileWatch(path="/etc", actions=["write"])]))


@pytest.mark.parametrize(("path", "action", "rule"), [
    (b"/etc/passwd", None, "accounts"),
    (b"/etc/sudoers.d/90-cloud", None, "sudoers"),
    (b"/etc/cron.d/backdoor", None, "cron"),
    (b"/etc/ld.so.preload", None, "ld-preload"),
    (b"/etc/systemd/system/evil.service", None, "systemd-units"),
    (b"/etc/hostname", None, "etc"),
    (b"/etc/ld.so.cache", None, "etc"),
    (b"/etc/mtab", None, None),
    (b"/etc/resolv.conf", None, None),
    (b"/etc/ssh/.sshd_config.swp", None, None),
    (b"/etc/lvm/archive/vg0_0001.vg", None, None),
    (b"/usr/bin/ls", None, "system-binaries"),
    (b"/usr/bin/tool~", None, "system-binaries"),  # temp-name excludes do not apply to binaries
    (b"/usr/lib/x86_64-linux-gnu/libc.so.6", None, "system-libraries"),
    (b"/usr/lib/python3/dist-packages/__pycache__/m.cpython-311.pyc", None, None),
    (b"/usr/lib/systemd/system/ssh.service", None, "systemd-units"),
    (b"/boot/vmlinuz", None, "boot"),
    (b"/var/spool/cron/crontabs/root", None, "cron"),
    (b"/root/.bashrc", None, "shell-profiles"),
    (b"/root/dropped-tool", None, "root-home"),
    (b"/root/.cache/pip/x", None, None),
    (b"/root/.ssh/authorized_keys", None, "ssh-keys"),
    (b"/root/.ssh/known_hosts", None, None),
    (b"/root/.bash_history", "modify", None),
    (b"/root/.bash_history", "delete", "shell-history"),
    (b"/home/alice/.ssh/authorized_keys", None, "ssh-keys"),
    (b"/home/alice/.ssh/id_ed25519", None, "ssh-keys"),
    (b"/home/alice/.profile", None, "shell-profiles"),
    (b"/home/alice/.config/systemd/user/x.service", None, "systemd-units"),
    (b"/home/alice/notes.txt", None, None),
    (b"/home/alice/.bash_history", "delete", "shell-history"),
    (b"/home/alice/.bash_history", "modify", None),
    (b"/var/log/syslog", None, None),
    (b"/tmp/x", None, None),
])
def test_default_policy(path: bytes, action: str | None, rule: str | None) -> None:
    p = Policy.from_config(FileConfig())
    assert name(p, path, action) == rule


def test_default_policy_roots_and_shape() -> None:
    p = Policy.from_config(FileConfig())
    roots = dict(p.roots())
    assert roots[b"/etc"] and roots[b"/usr/bin"] and roots[b"/home"]
    assert roots[b"/root"] is False
    assert b"/etc/ssh" not in roots and b"/usr/lib/systemd/system" not in roots  # inside recursive roots
    assert not p.covers_dir(b"/home/alice/src")
    assert all(w.path.startswith("/") for w in DEFAULT_WATCHES)


def test_match_is_fast() -> None:
    p = Policy.from_config(FileConfig())
    paths = [b"/usr/lib/x86_64-linux-gnu/libfoo.so.%d" % i for i in range(20_000)]
    paths += [b"/home/alice/.ssh/k%d" % i for i in range(10_000)]
    paths += [b"/var/lib/docker/overlay2/%d/diff/file" % i for i in range(20_000)]
    t0 = time.perf_counter()
    hits = sum(1 for path in paths if p.match(path, "modify") is not None)
    per_call_us = (time.perf_counter() - t0) / len(paths) * 1e6
    assert hits == 30_000
    assert per_call_us < 50, per_call_us
