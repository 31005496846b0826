"""Writes docs/events.md from the event structs: ``python -m heron.schema.docgen [PATH]``.

A test checks the committed file is current, so the docs cannot drift from the code.
"""

from __future__ import annotations

import inspect
import sys
from typing import Annotated, Any, get_args, get_origin

import msgspec

from heron.schema.events import (
    EVENT_TYPES,
    FIELD_DOCS,
    SCHEMA_VERSION,
    FileMeta,
    HostInfo,
    Package,
    PackageUse,
    Process,
    ProcessRef,
)


def _type_name(t: Any) -> str:
    if get_origin(t) is Annotated:
        base, *metas = get_args(t)
        bounds = [f"at most {m.max_length}" for m in metas if getattr(m, "max_length", None) is not None]
        return _type_name(base) + (f" ({', '.join(bounds)} items)" if bounds else "")
    s = str(t).replace("typing.", "").replace("heron.schema.events.", "")
    return s.replace("<class '", "").replace("'>", "").replace(" | ", " or ")


def _table(struct: type[msgspec.Struct], tag: str | None) -> list[str]:
    info = msgspec.inspect.type_info(struct)
    assert isinstance(info, msgspec.inspect.StructType)
    rows = ["| field | type | meaning |", "|---|---|---|"]
    if tag:
        rows.append(f"| `type` | str | always `{tag}` |")
    hints = {f.name: f.type for f in msgspec.structs.fields(struct)}
    for f in info.fields:
        required = "" if f.required else " (optional)"
        rows.append(f"| `{f.name}` | {_type_name(hints[f.name])}{required} | {FIELD_DOCS.get(f.name, '')} |")
    return rows


def render() -> str:
    out = [
        "# Event reference",
        "",
        f"Generated from `src/heron/schema/events.py` by `python -m heron.schema.docgen`; schema version "
        f"{SCHEMA_VERSION}. Every event is one JSON object (JSON lines output, the query API) or one msgpack map "
        "(the wire), tagged by `type`. Optional fields are omitted when empty. Times are nanoseconds since the "
        "Unix epoch.",
        "",
        "Process identity: `key` = first 8 hex digits of the boot id, the pid, and the start time in clock "
        "ticks after boot (`/proc/PID/stat` field 22), e.g. `e2817f7d-4783-2877333`. It survives pid reuse "
        "and is the same whichever collector saw the process.",
        "",
    ]
    for ev in EVENT_TYPES:
        tag = msgspec.inspect.type_info(ev).tag  # type: ignore[attr-defined]
        out += [f"## `{tag}`", "", inspect.cleandoc(ev.__doc__ or ""), "", *_table(ev, tag), ""]
    out += ["## Process", "", inspect.cleandoc(Process.__doc__ or ""), "", *_table(Process, None), ""]
    for sub in (ProcessRef, FileMeta, Package, PackageUse):
        out += [f"## {sub.__name__}", "", inspect.cleandoc(sub.__doc__ or ""), "", *_table(sub, None), ""]
    out += ["## Ancestor", "", "Encoded as a 3-element array `[pid, key, exe]`, nearest parent first.", ""]
    out += ["## HostInfo", "", inspect.cleandoc(HostInfo.__doc__ or ""), "", *_table(HostInfo, None), ""]
    return "\n".join(out)


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "docs/events.md"
    with open(path, "w") as f:
        f.write(render())
