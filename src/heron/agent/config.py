"""Agent configuration: a TOML file, typed and validated as a whole.

A malformed file is rejected with an error naming the key (msgspec's path, e.g.
``$.dedupe.window_s``); a running agent that gets a bad file on reload keeps its last good config.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec


class ConfigError(ValueError):
    pass


class MatchRule(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """All given fields must match (AND); a list of rules matches if any rule does (OR).

    Patterns are shell globs (``/usr/bin/*``), or regular expressions with a ``re:`` prefix.
    """

    comm: str | None = None
    exe: str | None = None
    cmdline: str | None = None  # argv joined by spaces
    user: str | None = None  # user name, or uid as a string
    container: str | None = None  # container id (prefix globs like "3f2a*"), or "host"
    parent_exe: str | None = None
    ancestor_exe: str | None = None  # any process in the parent chain
    type: str | None = None  # event type, e.g. "net.*" or "file.change"
    # Network flows: remote address as a class (loopback, private, public, link_local, multicast,
    # external = not loopback) or an address/CIDR; a port (local or remote); tcp/udp; in/out.
    remote: str | None = None
    port: int | None = None
    protocol: str | None = None
    direction: str | None = None
    domain: str | None = None  # the flow's domain, or a DNS query name
    path: str | None = None  # file changes: the path (or the old path of a rename)


class FilterConfig(msgspec.Struct, forbid_unknown_fields=True):
    include: list[MatchRule] = msgspec.field(default_factory=list)
    exclude: list[MatchRule] = msgspec.field(default_factory=list)


class DedupeConfig(msgspec.Struct, forbid_unknown_fields=True):
    window_s: float = 2.0
    max_entries: int = 50_000


class ProcessConfig(msgspec.Struct, forbid_unknown_fields=True):
    argv_max_bytes: int = 32 * 1024
    poll_interval_s: float = 1.0
    ancestors_max: int = 16


class NetworkConfig(msgspec.Struct, forbid_unknown_fields=True):
    # Flows are aggregated per interval: one record per (process, direction, protocol, local
    # address and port class, remote address and port) every interval_s.
    interval_s: float = 60.0
    # User-mode collectors poll sockets this often (connections shorter than this may be missed).
    poll_interval_s: float = 1.0
    dns: bool = True  # capture DNS questions and answers
    dns_ports: list[int] = msgspec.field(default_factory=lambda: [53])
    # Size of the host's IP -> name cache (entries expire with the answers' TTL).
    dns_cache_entries: int = 65_536


class FileWatch(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One policy entry: a path (file, directory or glob) and what to report under it."""

    path: str
    name: str = ""  # shown in events as `rule`; defaults to the path
    recursive: bool = True
    # create, modify, delete, rename, attrib; empty means all of them.
    actions: list[str] = msgspec.field(default_factory=list)
    exclude: list[str] = msgspec.field(default_factory=list)  # globs on the full path
    hash: bool = True  # sha256 of new content for regular files
    hash_max_bytes: int = 64 * 1024 * 1024


class FileConfig(msgspec.Struct, forbid_unknown_fields=True):
    # The built-in policy (system binaries and libraries, /etc, /boot, cron, systemd units, ssh
    # keys, shell profiles, /root): on by default, `watches` add to it.
    default_policy: bool = True
    watches: list[FileWatch] = msgspec.field(default_factory=list)
    # Burst coalescing: changes to one path within this window become one record.
    coalesce_s: float = 1.0
    # Per path, at most this many records per minute; the rest are counted as dropped.
    rate_per_path_per_min: int = 60
    # Baseline scan on start and every scan_interval_s (0: only on start; -1: never).
    scan_interval_s: float = 86_400.0
    scan_max_mb_per_s: float = 50.0  # I/O budget of the scan's hashing
    scan_cpu_percent: float = 25.0  # CPU budget of the scan (of one core)


class PackageConfig(msgspec.Struct, forbid_unknown_fields=True):
    # How often running processes are checked for the packages they use (new ones only: incremental).
    activity_interval_s: float = 30.0
    # Package databases are re-read when they change; this is the longest wait between checks.
    check_interval_s: float = 10.0
    containers: bool = True  # inventory of running containers through /proc/PID/root
    languages: bool = True  # Python distributions and npm packages of running applications


class PlatformConfig(msgspec.Struct, forbid_unknown_fields=True):
    url: str = ""
    enrollment_token: str = ""
    enrollment_token_file: str = ""
    ca_file: str = ""


class SpoolConfig(msgspec.Struct, forbid_unknown_fields=True):
    max_mb: int = 256
    segment_mb: int = 8


class AgentConfig(msgspec.Struct, forbid_unknown_fields=True):
    state_dir: str = "/var/lib/heron/agent"
    # capability -> mechanism to pin (e.g. {"process": "audit"}); absent means the ladder decides.
    collectors: dict[str, str] = msgspec.field(default_factory=dict)
    process: ProcessConfig = msgspec.field(default_factory=ProcessConfig)
    network: NetworkConfig = msgspec.field(default_factory=NetworkConfig)
    file: FileConfig = msgspec.field(default_factory=FileConfig)
    package: PackageConfig = msgspec.field(default_factory=PackageConfig)
    filter: FilterConfig = msgspec.field(default_factory=FilterConfig)
    dedupe: DedupeConfig = msgspec.field(default_factory=DedupeConfig)
    platform: PlatformConfig = msgspec.field(default_factory=PlatformConfig)
    spool: SpoolConfig = msgspec.field(default_factory=SpoolConfig)
    health_interval_s: float = 60.0
    batch_max_events: int = 1000
    batch_max_delay_s: float = 1.0

    def __post_init__(self) -> None:
        checks = [
            (self.dedupe.window_s >= 0, "dedupe.window_s must be >= 0"),
            (self.process.argv_max_bytes >= 256, "process.argv_max_bytes must be >= 256"),
            (self.process.poll_interval_s > 0, "process.poll_interval_s must be > 0"),
            (self.health_interval_s > 0, "health_interval_s must be > 0"),
            (self.batch_max_events > 0, "batch_max_events must be > 0"),
            (self.spool.max_mb > 0, "spool.max_mb must be > 0"),
            (0 < self.spool.segment_mb <= self.spool.max_mb, "spool.segment_mb must be > 0 and <= spool.max_mb"),
            (self.dedupe.max_entries > 0, "dedupe.max_entries must be > 0"),
            (0 <= self.process.ancestors_max <= 64, "process.ancestors_max must be between 0 and 64"),
            (self.network.interval_s > 0, "network.interval_s must be > 0"),
            (self.network.poll_interval_s > 0, "network.poll_interval_s must be > 0"),
            (all(0 < p < 65536 for p in self.network.dns_ports), "network.dns_ports must be ports (1-65535)"),
            (self.network.dns_cache_entries > 0, "network.dns_cache_entries must be > 0"),
            (self.package.activity_interval_s > 0, "package.activity_interval_s must be > 0"),
            (self.package.check_interval_s > 0, "package.check_interval_s must be > 0"),
            (self.file.coalesce_s >= 0, "file.coalesce_s must be >= 0"),
            (self.file.rate_per_path_per_min > 0, "file.rate_per_path_per_min must be > 0"),
            (self.file.scan_max_mb_per_s > 0, "file.scan_max_mb_per_s must be > 0"),
            (0 < self.file.scan_cpu_percent <= 100, "file.scan_cpu_percent must be in (0, 100]"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        self._check_filters()
        self._check_watches()

    def _check_watches(self) -> None:
        actions = {"create", "modify", "delete", "rename", "attrib"}
        for i, w in enumerate(self.file.watches):
            where = f"file.watches[{i}]"
            if not w.path.startswith("/"):
                raise ValueError(f"{where}.path: {w.path!r} must be absolute")
            bad = sorted(set(w.actions) - actions)
            if bad:
                raise ValueError(f"{where}.actions: unknown {', '.join(bad)} (known: {', '.join(sorted(actions))})")
            if w.hash_max_bytes < 0:
                raise ValueError(f"{where}.hash_max_bytes must be >= 0")

    def _check_filters(self) -> None:
        """Compile every rule now, so a bad pattern is a config error (start-up or reload), not a
        crash in the pipeline."""
        import re

        from heron.agent.transforms.filter import compile_rule  # here: filter imports this module

        for kind in ("include", "exclude"):
            for i, rule in enumerate(getattr(self.filter, kind)):
                where = f"filter.{kind}[{i}]"
                try:
                    compile_rule(rule)
                except re.error as e:
                    raise ValueError(f"{where}: bad regular expression: {e}") from None
                except ValueError as e:
                    raise ValueError(f"{where}: {e}") from None
                comm = rule.comm
                if comm and not comm.startswith("re:") and len(comm.encode()) > 15:
                    raise ValueError(f"{where}.comm: {comm!r} is longer than a kernel task name (15 bytes) "
                                     "and can never match; match the exe instead")


def parse_config(data: dict[str, object]) -> AgentConfig:
    try:
        return msgspec.convert(data, AgentConfig)
    except msgspec.ValidationError as e:
        raise ConfigError(f"invalid config: {e}") from None


def load_config(path: str | Path | None) -> AgentConfig:
    if path is None:
        return AgentConfig()
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8", "replace"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML in {path}: {e}") from None
    try:
        return msgspec.convert(data, AgentConfig)
    except msgspec.ValidationError as e:
        raise ConfigError(f"invalid config {path}: {e}") from None
