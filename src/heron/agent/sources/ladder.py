"""The whole fallback policy, on one screen.

For each capability the ladder walks the registry's rungs best-first and picks the first whose
probe succeeds, keeping every skipped rung with its reason (for `heron doctor` and health). A
pinned mechanism that cannot run is an error at start-up, never a silent fallback. When a running
source fails, the agent asks ``next_after`` for the rung below and says so in a health message.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from heron.agent.host import Host
from heron.agent.sources.base import ProbeResult, Source
from heron.agent.sources.registry import LADDERS

OFF = "off"  # a pin that turns a capability off (`--collector file=off`)


class PinnedMechanismUnavailable(Exception):
    pass


class UnknownMechanism(ValueError):
    pass


@dataclass
class Choice:
    capability: str
    selected: type[Source] | None
    pinned: bool
    # mechanism -> probe result, in ladder order (rungs below the selected one are probed too,
    # so doctor can show the whole ladder and the agent knows where to fall back).
    probes: dict[str, ProbeResult] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "selected": self.selected.mechanism if self.selected else None,
            "pinned": self.pinned,
            "mechanisms": {
                name: {"available": r.ok, "reason": r.reason} for name, r in self.probes.items()
            },
        }


def mechanisms(capability: str) -> list[str]:
    return [s.mechanism for s in LADDERS.get(capability, [])]


def probe_all(capability: str, host: Host) -> dict[str, ProbeResult]:
    out: dict[str, ProbeResult] = {}
    for src in LADDERS[capability]:
        try:
            out[src.mechanism] = src.probe(host)
        except Exception as e:  # a probe must never take the agent down
            out[src.mechanism] = ProbeResult.no(f"probe failed: {e!r}")
    return out


def choose(capability: str, host: Host, pinned: str | None = None) -> Choice:
    if capability not in LADDERS:
        raise UnknownMechanism(f"unknown capability {capability!r} (known: {', '.join(LADDERS)})")
    if pinned == OFF:
        return Choice(capability, None, True, probe_all(capability, host))
    if pinned is not None and pinned not in mechanisms(capability):
        raise UnknownMechanism(
            f"unknown mechanism {capability}={pinned} (known: {', '.join([*mechanisms(capability), OFF])})"
        )
    probes = probe_all(capability, host)
    rungs = {s.mechanism: s for s in LADDERS[capability]}
    if pinned is not None:
        if not probes[pinned].ok:
            raise PinnedMechanismUnavailable(f"{capability}={pinned} cannot run here: {probes[pinned].reason}")
        return Choice(capability, rungs[pinned], True, probes)
    for name, result in probes.items():
        if result.ok:
            return Choice(capability, rungs[name], False, probes)
    return Choice(capability, None, False, probes)


def next_after(choice: Choice, failed: str) -> type[Source] | None:
    """The next usable rung below ``failed`` (never used when the mechanism was pinned)."""
    if choice.pinned:
        return None
    names = list(choice.probes)
    rungs = {s.mechanism: s for s in LADDERS[choice.capability]}
    for name in names[names.index(failed) + 1 :]:
        if choice.probes[name].ok:
            return rungs[name]
    return None
