"""The contract every source (one capability, one mechanism) fulfils.

A source class declares ``capability`` and ``mechanism``; ``probe`` is cheap and free of side
effects (it may try to load and immediately unload a kernel object) and says whether the
mechanism can run here and why not. An instance is built from a SourceContext and ``run`` emits
lists of events through ``ctx.emit`` until ``stop`` is set; ``run`` returns after it has
flushed everything it already read from the kernel. Counters go to ``ctx.health`` under the
source's ``name`` (``process.ebpf.received`` ...).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from heron.agent.health import Health
from heron.agent.host import Host
from heron.schema.events import Event, Process


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    reason: str = ""

    @staticmethod
    def yes(note: str = "") -> ProbeResult:
        return ProbeResult(True, note)

    @staticmethod
    def no(reason: str) -> ProbeResult:
        return ProbeResult(False, reason)


Emit = Callable[[Sequence[Event]], None]


@dataclass
class SourceContext:
    host: Host
    health: Health
    emit: Emit
    # Capability-specific options (e.g. kernel-side excludes: {"exclude_comm": [...]}).
    options: dict[str, Any] = field(default_factory=dict)


class Source(Protocol):
    capability: ClassVar[str]
    mechanism: ClassVar[str]

    @classmethod
    def probe(cls, host: Host) -> ProbeResult: ...

    def __init__(self, ctx: SourceContext) -> None: ...

    def snapshot(self) -> list[Process]:
        """Processes (or other state) that existed before the stream starts."""
        ...

    def run(self, stop: threading.Event) -> None: ...


def source_name(cls: type[Source] | Source) -> str:
    return f"{cls.capability}.{cls.mechanism}"
