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
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        self._check_filters()

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
