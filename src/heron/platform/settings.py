"""The platform's settings file: a TOML file whose keys are ``PlatformConfig`` fields.

``heron server --config FILE`` and ``heron up --platform-config FILE`` read it, for example::

    retention_days = 30
    baseline_learning_s = 172800        # two days of learning per process cluster and host
    rule_paths = ["/etc/heron/rules.d"]  # beside the default pack and DATA_DIR/rules.d

Unknown keys and wrong types are refused with the key's name (a typo must not silently keep a
default). ``DATA_DIR/rules.d`` is always a rule directory: drop a YAML file there and the running
platform picks it up (hot reload, docs/detections.md).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from heron.platform.api.context import PlatformConfig

RULES_DIR = "rules.d"
_NOT_SETTABLE = {"data_dir"}  # follows --data-dir


class SettingsError(ValueError):
    pass


def _check(name: str, value: Any, hint: Any) -> Any:
    """``value`` converted to the field's type, or SettingsError naming the key."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        return _check(name, value, next(a for a in args if a is not type(None)))
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif origin is tuple:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif hint is str and isinstance(value, str):
        return value
    raise SettingsError(f"{name}: expected {getattr(hint, '__name__', hint)}, got {type(value).__name__}")


def load(path: Path | None, data_dir: Path) -> PlatformConfig:
    """PlatformConfig from ``path`` (None: the defaults), with DATA_DIR/rules.d among the rule paths."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text())
        except OSError as e:
            raise SettingsError(f"{path}: {e.strerror or e}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise SettingsError(f"{path}: {e}") from None
        hints = typing.get_type_hints(PlatformConfig)
        fields = {f.name for f in dataclasses.fields(PlatformConfig)} - _NOT_SETTABLE
        for key, value in raw.items():
            if key not in fields:
                raise SettingsError(f"{path}: unknown setting {key!r} (see docs/configuration.md, Platform)")
            try:
                values[key] = _check(key, value, hints[key])
            except SettingsError as e:
                raise SettingsError(f"{path}: {e}") from None
    if not data_dir.exists():  # made here first: 0700 like server.open_data_dir would (mkdir's mode meets the umask)
        data_dir.mkdir(mode=0o700, parents=True)
        os.chmod(data_dir, 0o700)
    rules = data_dir / RULES_DIR
    rules.mkdir(mode=0o700, exist_ok=True)
    values["rule_paths"] = (*values.get("rule_paths", ()), str(rules))
    return PlatformConfig(**values)
