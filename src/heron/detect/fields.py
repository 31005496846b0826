"""The catalogue of event fields a detection condition may name, built from the event structs.

Field names are dotted paths into an event's JSON (`process.exe`, `new.mode`, `added.name`), read
with ``msgspec.inspect`` from ``heron.schema.events`` so the language cannot drift from the schema.
A path that crosses a list (``process.argv``, ``process.ancestors.exe``) is a *list field*: a test
on it holds when it holds for any element. Fields omitted from the JSON (``omit_defaults``) read as
the struct's default for that event type, so ``new.size = 0`` works although a zero size is never
written. A few derived fields save rule authors from globbing full paths: ``process.name`` (basename
of exe), ``process.parent_exe`` (falls back to the nearest ancestor on `process.exec`),
``process.parent_name``, ``process.cmdline`` (argv joined by spaces) and ``process.ancestors``
(the ancestors' exes). Limit: dict-valued fields (agent.health counters) support only `exists`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import msgspec
import msgspec.inspect as mi

from heron.schema.events import EVENT_TYPES, FIELD_DOCS

# Kinds of leaf values: what a condition may compare them with.
STR, INT, FLOAT, BOOL, DICT, STRUCT = "str", "int", "float", "bool", "dict", "struct"

Step = str | int  # a key of a JSON object, or the index into an array-like struct (Ancestor)
Getter = Callable[[Mapping[str, Any]], Any]


@dataclass
class FieldSpec:
    """One condition field: its kind, whether it is a list, and how to read it from an event dict."""

    path: str
    kind: str
    is_list: bool
    doc: str
    event_types: set[str] = field(default_factory=set)
    steps: tuple[tuple[Step, bool], ...] = ()  # (key or index, the value there is a list)
    defaults: dict[str, Any] = field(default_factory=dict)  # event type -> value when omitted
    derived: Getter | None = None  # computed fields read with this instead of steps

    def getter(self) -> Getter:
        """A function event -> value (scalar field; None when absent) or list (list field)."""
        if self.derived is not None:
            return self.derived
        return _make_getter(self.steps, self.is_list, self.defaults)

    def raw_getter(self) -> Getter:
        """Like getter, but without defaults: what `exists` tests."""
        if self.derived is not None:
            return self.derived
        return _make_getter(self.steps, self.is_list, {})


_NO_DEFAULT = object()


def _make_getter(steps: tuple[tuple[Step, bool], ...], is_list: bool, defaults: dict[str, Any]) -> Getter:
    if not is_list and all(isinstance(s, str) for s, _ in steps):
        keys = tuple(str(s) for s, _ in steps)
        *parents, last = keys

        def scalar(ev: Mapping[str, Any]) -> Any:
            cur: Any = ev
            for k in parents:
                cur = cur.get(k) if isinstance(cur, dict) else None
                if cur is None:
                    return None
            if not isinstance(cur, dict):
                return None
            value = cur.get(last, _NO_DEFAULT)
            if value is _NO_DEFAULT:
                return defaults.get(ev.get("type"))  # type: ignore[arg-type]
            return value

        return scalar

    def listed(ev: Mapping[str, Any]) -> Any:
        values: list[Any] = [ev]
        for step, step_is_list in steps:
            out: list[Any] = []
            for cur in values:
                if isinstance(step, int):
                    v = cur[step] if isinstance(cur, list) and len(cur) > step else None
                elif isinstance(cur, dict):
                    v = cur.get(step)
                else:
                    v = None
                if v is None:
                    continue
                if step_is_list:
                    if isinstance(v, list):
                        out.extend(v)
                else:
                    out.append(v)
            values = out
        return values

    return listed


def _leaf_kind(t: mi.Type) -> tuple[str, mi.Type, bool]:
    """(kind, the type to descend into, is a list) for one field type; Optional unwrapped."""
    if isinstance(t, mi.UnionType):
        rest = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if len(rest) == 1:
            return _leaf_kind(rest[0])
        return STR, t, False  # unions of scalars do not occur in the schema; treat as text
    if isinstance(t, mi.ListType):
        kind, inner, _ = _leaf_kind(t.item_type)
        return kind, inner, True
    if isinstance(t, mi.StrType):
        return STR, t, False
    if isinstance(t, mi.BoolType):
        return BOOL, t, False
    if isinstance(t, mi.IntType):
        return INT, t, False
    if isinstance(t, mi.FloatType):
        return FLOAT, t, False
    if isinstance(t, mi.DictType):
        return DICT, t, False
    if isinstance(t, mi.StructType):
        return STRUCT, t, False
    return STR, t, False


def _walk(catalogue: dict[str, FieldSpec], st: mi.StructType, prefix: str, steps: tuple[tuple[Step, bool], ...],
          in_list: bool, event_type: str) -> None:
    for index, f in enumerate(st.fields):
        kind, inner, is_list = _leaf_kind(f.type)
        path = f"{prefix}{f.encode_name}"
        step: Step = index if st.array_like else f.encode_name
        here = (*steps, (step, is_list))
        spec = catalogue.get(path)
        if spec is None:
            spec = catalogue[path] = FieldSpec(path, kind, in_list or is_list, FIELD_DOCS.get(f.name, ""), steps=here)
        elif spec.kind != kind or spec.is_list != (in_list or is_list) or spec.steps != here:
            raise ValueError(f"field {path} has conflicting types across events")
        spec.event_types.add(event_type)
        if f.default is not msgspec.NODEFAULT and f.default is not None:
            spec.defaults[event_type] = f.default
        if kind == STRUCT and isinstance(inner, mi.StructType):
            _walk(catalogue, inner, path + ".", here, in_list or is_list, event_type)


def _basename(path: Any) -> Any:
    return path.rpartition("/")[2] if isinstance(path, str) and path else None


def _process(ev: Mapping[str, Any]) -> dict[str, Any] | None:
    p = ev.get("process")
    return p if isinstance(p, dict) else None


def _name(ev: Mapping[str, Any]) -> Any:
    p = _process(ev)
    return _basename(p.get("exe")) if p else None


def _parent_exe(ev: Mapping[str, Any]) -> Any:
    p = _process(ev)
    if p is None:
        return None
    parent = p.get("parent_exe")
    if parent:
        return parent
    ancestors = p.get("ancestors")
    if isinstance(ancestors, list) and ancestors and isinstance(ancestors[0], list) and len(ancestors[0]) > 2:
        return ancestors[0][2] or None
    return None


def _parent_name(ev: Mapping[str, Any]) -> Any:
    return _basename(_parent_exe(ev))


def _cmdline(ev: Mapping[str, Any]) -> Any:
    p = _process(ev)
    argv = p.get("argv") if p else None
    if isinstance(argv, list) and argv:
        return " ".join(a for a in argv if isinstance(a, str))
    return None


@cache
def catalogue() -> dict[str, FieldSpec]:
    """Every field a condition may name, by dotted path."""
    fields: dict[str, FieldSpec] = {}
    for cls in EVENT_TYPES:
        info = mi.type_info(cls)
        assert isinstance(info, mi.StructType) and isinstance(info.tag, str)
        tag = info.tag
        _walk(fields, info, "", (), False, tag)
        type_spec = fields.setdefault(
            "type", FieldSpec("type", STR, False, FIELD_DOCS["type"], steps=(("type", False),)))
        type_spec.event_types.add(tag)
    with_process = fields["process"].event_types
    ancestors_exe = fields["process.ancestors.exe"]
    fields["process.ancestors"] = FieldSpec(
        "process.ancestors", STR, True, "Executables of the parent chain, nearest first (as process.ancestors.exe).",
        set(ancestors_exe.event_types), steps=ancestors_exe.steps)
    derived: list[tuple[str, str, Getter]] = [
        ("process.name", "Basename of process.exe.", _name),
        ("process.parent_exe", "Parent's executable (on process.exec: the nearest ancestor's).", _parent_exe),
        ("process.parent_name", "Basename of process.parent_exe.", _parent_name),
        ("process.cmdline", "process.argv joined by single spaces (process.exec only).", _cmdline),
    ]
    for path, doc, getter in derived:
        fields[path] = FieldSpec(path, STR, False, doc, set(with_process), derived=getter)
    return fields


def event_type_names() -> frozenset[str]:
    """The values the `type` field can take."""
    return frozenset(catalogue()["type"].event_types)
