"""Include/exclude filtering of every event type, compiled once from the config.

Rules come from ``heron.agent.config.MatchRule``: fields AND within a rule, rules OR within a
list. Each field applies to some event types (``FIELD_TYPES``): process fields to execs and to
the process behind network and file events, network fields to flows (and some to listeners and
DNS), ``path`` to file changes. A rule *applies* to an event type when every field it sets does.
An event is kept when no exclude rule that applies matches it, and, if include rules apply to its
type, one of them matches — so ``include = [{remote = "public"}]`` keeps only external flows and
leaves execs and file changes alone.

Exits follow their exec: an exit is dropped when its process's exec was dropped, so the stream
never holds an exit without its exec. Plain ``comm`` excludes are also pushed into the kernel by
collectors that can (``kernel_excluded_comms``), so those events never reach Python at all.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence

from heron.agent.config import FilterConfig, MatchRule
from heron.schema.addresses import CLASSES, address_class
from heron.schema.events import (
    DnsQuery,
    Event,
    FileChange,
    NetFlow,
    NetListen,
    Process,
    ProcessExec,
    ProcessExit,
    ProcessRef,
)

Pred = Callable[[str], bool]
Getter = Callable[[Event], list[str]]
_GLOB_CHARS = set("*?[")

PROCESS_TYPES = frozenset({"process.exec"})
REF_TYPES = frozenset({"net.flow", "net.listen", "net.dns", "file.change"})
# Which event types each field can be evaluated on ("type" applies to all).
FIELD_TYPES: dict[str, frozenset[str]] = {
    "comm": PROCESS_TYPES | REF_TYPES,
    "exe": PROCESS_TYPES | REF_TYPES,
    "user": PROCESS_TYPES | REF_TYPES,
    "container": PROCESS_TYPES | REF_TYPES,
    "parent_exe": PROCESS_TYPES | REF_TYPES,
    "cmdline": PROCESS_TYPES,  # network/file events carry the process key, not its argv
    "ancestor_exe": PROCESS_TYPES,
    "remote": frozenset({"net.flow"}),
    "port": frozenset({"net.flow", "net.listen"}),
    "protocol": frozenset({"net.flow", "net.listen", "net.dns"}),
    "direction": frozenset({"net.flow"}),
    "domain": frozenset({"net.flow", "net.dns"}),
    "path": frozenset({"file.change"}),
}


def compile_pattern(pattern: str) -> Pred:
    if pattern.startswith("re:"):
        rx = re.compile(pattern[3:])
        return lambda s: rx.search(s) is not None
    if not _GLOB_CHARS.intersection(pattern):
        return lambda s: s == pattern
    rx = re.compile(fnmatch.translate(pattern))
    return lambda s: rx.match(s) is not None


def compile_remote(pattern: str) -> Pred:
    """An address class (loopback, private, public, ...; "external" = not loopback), or a CIDR/address."""
    if pattern == "external":
        return lambda s: address_class(s) not in ("loopback", "unspecified")
    if pattern in CLASSES:
        return lambda s: address_class(s) == pattern
    try:
        net = ipaddress.ip_network(pattern, strict=False)
    except ValueError:
        raise ValueError(f"remote: {pattern!r} is not an address, a CIDR or one of "
                         f"{', '.join((*CLASSES, 'external'))}") from None

    def inside(s: str) -> bool:
        try:
            return ipaddress.ip_address(s) in net
        except ValueError:
            return False
    return inside


def _process_values(field: str, p: Process) -> list[str]:
    if field == "comm":
        return [p.comm]
    if field == "exe":
        return [p.exe]
    if field == "cmdline":
        return [" ".join(p.argv)]
    if field == "user":
        return [p.user or "", str(p.uid)]
    if field == "container":
        return [p.container_id or "host"]
    if field == "parent_exe":
        return [p.ancestors[0].exe] if p.ancestors else []
    return [a.exe for a in p.ancestors]  # ancestor_exe


def _ref_values(field: str, r: ProcessRef | None) -> list[str]:
    if r is None:
        return []
    if field == "comm":
        return [r.comm]
    if field == "exe":
        return [r.exe]
    if field == "user":
        return [r.user or "", str(r.uid)]
    if field == "container":
        return [r.container_id or "host"]
    return [r.parent_exe] if r.parent_exe else []  # parent_exe


def values(field: str, ev: Event) -> list[str]:
    """The strings a field is matched against on one event (empty: nothing to match)."""
    if field == "type":
        return [event_type(ev)]
    if isinstance(ev, ProcessExec):
        return _process_values(field, ev.process)
    if isinstance(ev, NetFlow):
        if field == "remote":
            return [ev.remote_addr]
        if field == "port":
            return [str(ev.local_port), str(ev.remote_port)]
        if field == "protocol":
            return [ev.protocol]
        if field == "direction":
            return [ev.direction]
        if field == "domain":
            return [ev.domain] if ev.domain else []
        return _ref_values(field, ev.process)
    if isinstance(ev, NetListen):
        if field == "port":
            return [str(ev.port)]
        if field == "protocol":
            return [ev.protocol]
        return _ref_values(field, ev.process)
    if isinstance(ev, DnsQuery):
        if field == "domain":
            return [ev.query]
        if field == "protocol":
            return [ev.protocol]
        return _ref_values(field, ev.process)
    if isinstance(ev, FileChange):
        if field == "path":
            return [ev.path, ev.old_path] if ev.old_path else [ev.path]
        return _ref_values(field, ev.process)
    return []


_TAGS: dict[type, str] = {}


def event_type(ev: Event) -> str:
    cls = type(ev)
    tag = _TAGS.get(cls)
    if tag is None:
        import msgspec

        tag = str(msgspec.inspect.type_info(cls).tag)  # type: ignore[attr-defined]
        _TAGS[cls] = tag
    return tag


class CompiledRule:
    def __init__(self, rule: MatchRule) -> None:
        self.tests: list[tuple[str, Pred]] = []
        types: frozenset[str] | None = None
        for name in ("type", *FIELD_TYPES):
            pattern = getattr(rule, name)
            if pattern is None:
                continue
            if name == "port":
                pattern = str(pattern)
            pred = compile_remote(pattern) if name == "remote" else compile_pattern(pattern)
            self.tests.append((name, pred))
            if name != "type":
                types = FIELD_TYPES[name] if types is None else types & FIELD_TYPES[name]
        if not self.tests:
            raise ValueError("a filter rule needs at least one field")
        if types is not None and not types:
            raise ValueError("its fields never apply to the same event type: "
                             + ", ".join(n for n, _ in self.tests))
        self.types = types  # None: only "type" is set, it applies to everything

    def applies(self, etype: str) -> bool:
        return self.types is None or etype in self.types

    def __call__(self, ev: Event) -> bool:
        return all(any(pred(v) for v in values(name, ev)) for name, pred in self.tests)


def compile_rule(rule: MatchRule) -> CompiledRule:
    return CompiledRule(rule)


KERNEL_COMM_EXCLUDES_MAX = 256  # the size of the BPF map; the Python filter applies every rule anyway


def kernel_excluded_comms(cfg: FilterConfig) -> list[str]:
    """Exclude rules that are a plain comm name and nothing else: the kernel can apply these.

    (Such a rule also drops the network and file events of those processes; the kernel-side drop
    is of their execs only, the Python filter does the rest.)"""
    out = []
    for r in cfg.exclude:
        only_comm = all(getattr(r, f) is None for f in ("type", *FIELD_TYPES) if f != "comm")
        plain = r.comm and not r.comm.startswith("re:") and not _GLOB_CHARS.intersection(r.comm)
        if only_comm and plain and r.comm and len(r.comm.encode()) <= 15:
            out.append(r.comm)
    return out[:KERNEL_COMM_EXCLUDES_MAX]


class ProcessFilter:
    """The event filter (named for its first job; it filters every event type)."""

    def __init__(self, cfg: FilterConfig, health_add: Callable[[str, int], None] | None = None) -> None:
        self.include = [compile_rule(r) for r in cfg.include]
        self.exclude = [compile_rule(r) for r in cfg.exclude]
        self.active = bool(self.include or self.exclude)
        self._by_type: dict[str, tuple[list[CompiledRule], list[CompiledRule]]] = {}
        self._dropped_keys: OrderedDict[str, None] = OrderedDict()
        self._health_add = health_add

    def _rules(self, etype: str) -> tuple[list[CompiledRule], list[CompiledRule]]:
        rules = self._by_type.get(etype)
        if rules is None:
            rules = ([r for r in self.include if r.applies(etype)], [r for r in self.exclude if r.applies(etype)])
            self._by_type[etype] = rules
        return rules

    def keep_event(self, ev: Event) -> bool:
        include, exclude = self._rules(event_type(ev))
        if include and not any(rule(ev) for rule in include):
            return False
        return not any(rule(ev) for rule in exclude)

    def keep(self, p: Process) -> bool:
        return self.keep_event(ProcessExec(ts=0, process=p))

    def __call__(self, events: Sequence[Event]) -> list[Event]:
        if not self.active:
            return list(events)
        out: list[Event] = []
        for ev in events:
            if isinstance(ev, ProcessExec):
                if self.keep_event(ev):
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
            elif isinstance(ev, (NetFlow, NetListen, DnsQuery, FileChange)):
                if self.keep_event(ev):
                    out.append(ev)
            else:
                out.append(ev)  # agent.health and anything without fields to match
        if self._health_add is not None and len(out) != len(events):
            self._health_add("filter.dropped", len(events) - len(out))
        return out
