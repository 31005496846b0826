"""Rule files: load YAML rules, macros and lists, compile them once, evaluate events, hot-reload.

A rule file is a YAML sequence of entries, Falco style::

    - list: shell_binaries
      items: [bash, sh, dash]
    - macro: spawned_process
      condition: type = process.exec
    - rule: Shell spawned by a web server
      desc: ...
      condition: spawned_process and process.name in (shell_binaries) and ...
      severity: high            # info, low, medium, high, critical
      tags: [T1505.003, T1059.004]
      enabled: true

Files load in order: the default pack (``default_rules.yaml`` beside this module), then the user
files and directories given (a directory's ``*.yaml``/``*.yml`` in name order). A later entry with
an existing name replaces it, unless it says how to merge: ``override: {condition: append, items:
append, tags: append, severity: replace, ...}`` or the older ``append: true`` (lists append items,
macros and rules append condition text, as in ``and not process.name = backup``). An entry with
only ``rule`` and ``enabled`` toggles a rule. Any error (YAML, unknown key, bad condition) refuses
the whole set with file, line and reason; ``RuleSet.reload_if_changed`` then keeps the last good set.
YAML anchors/aliases are refused (no alias bombs), files are capped at ``MAX_FILE_BYTES``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from heron.detect.lang import NAME_RE, Condition, ConditionError, Definitions, Predicate

DEFAULT_RULES = Path(__file__).with_name("default_rules.yaml")
MAX_FILE_BYTES = 4 * 1024 * 1024
SEVERITIES = ("info", "low", "medium", "high", "critical")
MITRE_RE = re.compile(r"T\d{4}(\.\d{3})?\Z")

_RULE_KEYS = {"rule", "desc", "condition", "severity", "tags", "enabled", "override", "append", "output"}
_MACRO_KEYS = {"macro", "condition", "override", "append"}
_LIST_KEYS = {"list", "items", "override", "append"}
_OVERRIDABLE = {"rule": {"desc", "condition", "severity", "tags", "enabled", "output"},
                "macro": {"condition"}, "list": {"items"}}
_APPENDABLE = {"condition", "items", "tags"}


class RuleLoadError(ValueError):
    """Rule files that cannot be loaded: every problem found, each as "file:line: reason"."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class Match:
    """One rule that matched one event."""

    rule: str
    severity: str
    desc: str
    tags: tuple[str, ...]

    @property
    def mitre(self) -> tuple[str, ...]:
        return tuple(t for t in self.tags if MITRE_RE.match(t))


@dataclass
class Rule:
    name: str
    desc: str
    condition: Condition
    severity: str
    tags: tuple[str, ...]
    enabled: bool
    origin: str  # file:line of its (last) definition
    match: Match = field(init=False)

    def __post_init__(self) -> None:
        self.match = Match(self.name, self.severity, self.desc, self.tags)


# --- YAML with line numbers and no aliases ------------------------------------------------------


class _Loader(yaml.SafeLoader):  # type: ignore[misc]
    """SafeLoader that refuses aliases and records each mapping's line as key ``__line__``."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases are not allowed in rule files",
                                              event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        mapping = super().construct_mapping(node, deep=deep)
        mapping["__line__"] = node.start_mark.line + 1
        return mapping


def _read_yaml(path: Path) -> list[Any]:
    with path.open("rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise RuleLoadError([f"{path}: file is larger than {MAX_FILE_BYTES} bytes"])
    try:
        doc = yaml.load(data, Loader=_Loader)  # noqa: S506 (_Loader is a SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise RuleLoadError([f"{path}{line}: YAML error: {err.problem or err}"]) from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as err:
        raise RuleLoadError([f"{path}: YAML error: {err}"]) from None
    if doc is None:
        return []
    if not isinstance(doc, list):
        raise RuleLoadError([f"{path}: a rule file is a YAML list of rule, macro and list entries"])
    return doc


# --- merging entries ----------------------------------------------------------------------------


@dataclass
class _Entry:
    kind: str  # rule, macro, list
    name: str
    values: dict[str, Any]
    origin: str


def rule_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Files to read from the paths given: files as they are, directories' *.yaml/*.yml by name."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(x for x in p.iterdir() if x.suffix in (".yaml", ".yml") and x.is_file()))
        else:
            out.append(p)
    return out


class _Merger:
    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], _Entry] = {}
        self.order: list[tuple[str, str]] = []
        self.problems: list[str] = []

    def add_file(self, path: Path) -> None:
        try:
            doc = _read_yaml(path)
        except OSError as err:
            self.problems.append(f"{path}: cannot read: {err.strerror or err}")
            return
        except RuleLoadError as err:
            self.problems.extend(err.problems)
            return
        for item in doc:
            if not isinstance(item, dict):
                self.problems.append(f"{path}: every entry must be a mapping with rule, macro or list")
                continue
            origin = f"{path}:{item.pop('__line__', '?')}"
            try:
                self.add_entry(item, origin)
            except ValueError as err:
                self.problems.append(f"{origin}: {err}")

    def add_entry(self, item: dict[str, Any], origin: str) -> None:
        kinds = [k for k in ("rule", "macro", "list") if k in item]
        if len(kinds) != 1:
            raise ValueError("an entry has exactly one of 'rule', 'macro' or 'list'")
        kind = kinds[0]
        name = item[kind]
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"the {kind} name must be a non-empty string")
        if kind != "rule" and not NAME_RE.match(name):
            raise ValueError(f"{kind} name {name!r} must be letters, digits and '_' (not starting with a digit)")
        allowed = {"rule": _RULE_KEYS, "macro": _MACRO_KEYS, "list": _LIST_KEYS}[kind]
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise ValueError(f"{kind} {name!r}: unknown key(s) {', '.join(unknown)} "
                             f"(known: {', '.join(sorted(allowed))})")
        values = {k: v for k, v in item.items() if k not in (kind, "override", "append")}
        _check_types(kind, name, values)
        modes = self.merge_modes(kind, name, item)
        key = (kind, name)
        old = self.entries.get(key)
        if modes:
            if old is None:
                raise ValueError(f"cannot {'/'.join(sorted(set(modes.values())))} {kind} {name!r}: it is not defined "
                                 "in an earlier file")
            for k, mode in modes.items():
                if k not in values:
                    raise ValueError(f"{kind} {name!r}: override names {k!r} but the entry does not set it")
                if mode == "append":
                    old.values[k] = _append(k, old.values.get(k), values[k])
                else:
                    old.values[k] = values[k]
            for k in set(values) - set(modes):
                raise ValueError(f"{kind} {name!r}: {k!r} is set but not named in override")
            old.origin = origin
            return
        if kind == "rule" and old is not None and set(values) <= {"enabled"}:
            old.values.update(values)  # a toggle of an existing rule
            return
        if kind == "rule":
            missing = [k for k in ("condition", "desc", "severity") if k not in values]
            if missing:
                raise ValueError(f"rule {name!r}: missing {', '.join(missing)}")
        elif kind == "macro" and "condition" not in values:
            raise ValueError(f"macro {name!r}: missing condition")
        elif kind == "list" and "items" not in values:
            raise ValueError(f"list {name!r}: missing items")
        if old is None:
            self.order.append(key)
        self.entries[key] = _Entry(kind, name, values, origin)

    def merge_modes(self, kind: str, name: str, item: Mapping[str, Any]) -> dict[str, str]:
        if item.get("append") is True:
            appendable = {"rule": "condition", "macro": "condition", "list": "items"}[kind]
            return {appendable: "append"}
        if "append" in item and item["append"] is not False:
            raise ValueError(f"{kind} {name!r}: append must be true or false")
        override = item.get("override")
        if override is None:
            return {}
        if not isinstance(override, dict):
            raise ValueError(f"{kind} {name!r}: override must map keys to append or replace")
        modes: dict[str, str] = {}
        for k, mode in override.items():
            if k == "__line__":
                continue
            if k not in _OVERRIDABLE[kind]:
                raise ValueError(f"{kind} {name!r}: cannot override {k!r}")
            if mode not in ("append", "replace") or (mode == "append" and k not in _APPENDABLE):
                raise ValueError(f"{kind} {name!r}: override of {k!r} must be "
                                 f"{'append or replace' if k in _APPENDABLE else 'replace'}, not {mode!r}")
            modes[k] = mode
        return modes


def _check_types(kind: str, name: str, values: dict[str, Any]) -> None:
    for k in ("condition", "desc", "output"):
        if k in values and not (isinstance(values[k], str) and values[k].strip()):
            raise ValueError(f"{kind} {name!r}: {k} must be a non-empty string")
    if "severity" in values and values["severity"] not in SEVERITIES:
        raise ValueError(f"rule {name!r}: severity must be one of {', '.join(SEVERITIES)}, not {values['severity']!r}")
    if "enabled" in values and not isinstance(values["enabled"], bool):
        raise ValueError(f"rule {name!r}: enabled must be true or false")
    for k in ("tags", "items"):
        if k in values:
            v = values[k]
            if not isinstance(v, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
                raise ValueError(f"{kind} {name!r}: {k} must be a list of strings or numbers")
            values[k] = [str(x) for x in v]


def _append(key: str, old: Any, new: Any) -> Any:
    if key == "condition":
        return f"({old})\n{new}"
    return [*(old or []), *new]


# --- the compiled set ---------------------------------------------------------------------------


@dataclass
class _Compiled:
    rules: list[Rule]
    by_type: dict[str, list[tuple[Predicate, Match]]]
    any_type: list[tuple[Predicate, Match]]


def compile_files(paths: Sequence[Path]) -> _Compiled:
    """Read, merge and compile rule files in order; RuleLoadError lists every problem found."""
    merger = _Merger()
    for path in paths:
        merger.add_file(path)
    if merger.problems:
        raise RuleLoadError(merger.problems)
    defs = Definitions()
    for (kind, name), entry in ((k, merger.entries[k]) for k in merger.order):
        if kind == "macro":
            defs.macros[name] = entry.values["condition"]
        elif kind == "list":
            defs.lists[name] = list(entry.values["items"])
        defs.origins[f"{kind}:{name}"] = entry.origin
    clash = sorted(set(defs.macros) & set(defs.lists))
    problems = [f"{defs.origins['macro:' + n]}: {n!r} is both a macro and a list" for n in clash]
    for name in defs.macros:
        try:
            defs.check_macro(name)
        except ConditionError as err:
            problems.append(str(err))
    rules: list[Rule] = []
    for (kind, name), entry in ((k, merger.entries[k]) for k in merger.order):
        if kind != "rule":
            continue
        v = entry.values
        try:
            condition = defs.compile(v["condition"], where=f"rule {name!r} ({entry.origin})")
        except ConditionError as err:
            problems.append(str(err))
            continue
        rules.append(Rule(name, v["desc"].strip(), condition, v["severity"], tuple(v.get("tags", ())),
                          v.get("enabled", True), entry.origin))
    if problems:
        raise RuleLoadError(problems)
    by_type: dict[str, list[tuple[Predicate, Match]]] = {}
    any_type: list[tuple[Predicate, Match]] = []
    for rule in rules:
        if not rule.enabled:
            continue
        pair = (rule.condition.matches, rule.match)
        if rule.condition.event_types is None:
            any_type.append(pair)
        else:
            for t in rule.condition.event_types:
                by_type.setdefault(t, []).append(pair)
    return _Compiled(rules, by_type, any_type)


class RuleSet:
    """The active rules: built from the default pack plus user files; evaluate events; hot-reload.

    The constructor raises RuleLoadError when the files are bad (there is no last good set yet).
    ``evaluate`` and ``reload_if_changed`` may run in different threads: a reload swaps one
    reference. Rule evaluation errors (an event whose shape the schema would not allow) count
    in ``eval_errors`` and make that rule not match; they never propagate.
    """

    def __init__(self, paths: Iterable[str | os.PathLike[str]] = (), *, include_default: bool = True) -> None:
        self.paths = list(paths)
        self.include_default = include_default
        self.last_error: str | None = None
        self.eval_errors = 0
        self.reloads = 0
        files = self._files()
        self._signature = _signature(files, self.paths)
        self._state = compile_files(files)

    def _files(self) -> list[Path]:
        return ([DEFAULT_RULES] if self.include_default else []) + rule_files(self.paths)

    @property
    def rules(self) -> list[Rule]:
        return list(self._state.rules)

    def evaluate(self, event: Mapping[str, Any]) -> list[Match]:
        """The matches of one event (a dict as the event's JSON decodes), in rule file order."""
        state = self._state
        event_type = event.get("type")
        candidates = state.by_type.get(event_type, ()) if isinstance(event_type, str) else ()
        out: list[Match] = []
        for pairs in (candidates, state.any_type):
            for pred, match in pairs:
                try:
                    if pred(event):
                        out.append(match)
                except (TypeError, AttributeError, ValueError, KeyError, IndexError, RecursionError):
                    self.eval_errors += 1
        return out

    def reload_if_changed(self) -> bool:
        """Re-read the files when one changed (mtime, size, set of files). True when a new set is now
        active; on an error the last good set stays, ``last_error`` says why, and the same files are not
        retried until they change again."""
        files = self._files()
        sig = _signature(files, self.paths)
        if sig == self._signature:
            return False
        self._signature = sig
        try:
            state = compile_files(files)
        except RuleLoadError as err:
            self.last_error = str(err)
            return False
        self._state = state
        self.last_error = None
        self.reloads += 1
        return True


def _signature(files: Sequence[Path], paths: Sequence[str | os.PathLike[str]]) -> tuple[Any, ...]:
    out: list[Any] = []
    for p in [*files, *(Path(x) for x in paths if Path(x).is_dir())]:
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((str(p), None))
    return tuple(out)
