"""Include/exclude filtering of process events, compiled once from the config.

Rules from ``heron.agent.config.MatchRule``: fields AND within a rule, rules OR within a list.
An exec is kept when it matches an include rule (or there are none) and no exclude rule. Exits
follow their exec: an exit is dropped when its process's exec was dropped, so the stream never
holds an exit without its exec. Plain ``comm`` excludes are also pushed into the kernel by
collectors that can (``kernel_excluded_comms``), so those events never reach Python at all.
"""

from __future__ import annotations

import fnmatch
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence

from heron.agent.config import FilterConfig, MatchRule
from heron.schema.events import Event, Process, ProcessExec, ProcessExit

Pred = Callable[[str], bool]
_GLOB_CHARS = set("*?[")


def compile_pattern(pattern: str) -> Pred:
    if pattern.startswith("re:"):
        rx = re.compile(pattern[3:])
        return lambda s: rx.search(s) is not None
    if not _GLOB_CHARS.intersection(pattern):
        return lambda s: s == pattern
    rx = re.compile(fnmatch.translate(pattern))
    return lambda s: rx.match(s) is not None


def _field_getters() -> dict[str, Callable[[Process], list[str]]]:
    return {
        "comm": lambda p: [p.comm],
        "exe": lambda p: [p.exe],
        "cmdline": lambda p: [" ".join(p.argv)],
        "user": lambda p: [p.user or "", str(p.uid)],
        "container": lambda p: [p.container_id or "host"],
        "parent_exe": lambda p: [p.ancestors[0].exe] if p.ancestors else [],
        "ancestor_exe": lambda p: [a.exe for a in p.ancestors],
    }


_GETTERS = _field_getters()


def compile_rule(rule: MatchRule) -> Callable[[Process], bool]:
    tests: list[tuple[Callable[[Process], list[str]], Pred]] = []
    for name, getter in _GETTERS.items():
        pattern = getattr(rule, name)
        if pattern is not None:
            tests.append((getter, compile_pattern(pattern)))
    if not tests:
        raise ValueError("a filter rule needs at least one field")
    return lambda p: all(any(pred(v) for v in get(p)) for get, pred in tests)


KERNEL_COMM_EXCLUDES_MAX = 256  # the size of the BPF map; the Python filter applies every rule anyway


def kernel_excluded_comms(cfg: FilterConfig) -> list[str]:
    """Exclude rules that are a plain comm name and nothing else: the kernel can apply these."""
    out = []
    for r in cfg.exclude:
        only_comm = all(getattr(r, f) is None for f in _GETTERS if f != "comm")
        plain = r.comm and not r.comm.startswith("re:") and not _GLOB_CHARS.intersection(r.comm)
        if only_comm and plain and r.comm and len(r.comm.encode()) <= 15:
            out.append(r.comm)
    return out[:KERNEL_COMM_EXCLUDES_MAX]


class ProcessFilter:
    def __init__(self, cfg: FilterConfig, health_add: Callable[[str, int], None] | None = None) -> None:
        self.include = [compile_rule(r) for r in cfg.include]
        self.exclude = [compile_rule(r) for r in cfg.exclude]
        self.active = bool(self.include or self.exclude)
        self._dropped_keys: OrderedDict[str, None] = OrderedDict()
        self._health_add = health_add

    def keep(self, p: Process) -> bool:
        if self.include and not any(rule(p) for rule in self.include):
            return False
        return not any(rule(p) for rule in self.exclude)

    def __call__(self, events: Sequence[Event]) -> list[Event]:
        if not self.active:
            return list(events)
        out: list[Event] = []
        for ev in events:
            if isinstance(ev, ProcessExec):
                if self.keep(ev.process):
                    # The key survives execve: `sh -c 'exec curl'` drops sh but must keep curl's exit.
                    self._dropped_keys.pop(ev.process.key, None)
                    out.append(ev)
                    continue
                self._dropped_keys[ev.process.key] = None
                if len(self._dropped_keys) > 65536:
                    self._dropped_keys.popitem(last=False)
            elif isinstance(ev, ProcessExit):
                if self._dropped_keys.pop(ev.key, 0) is not None:
                    out.append(ev)
                    continue
            else:
                out.append(ev)
                continue
        if self._health_add is not None and len(out) != len(events):
            self._health_add("filter.dropped", len(events) - len(out))
        return out
