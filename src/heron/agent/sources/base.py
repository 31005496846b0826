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

    def close(self) -> None:
        """Release kernel resources when ``run`` never ran (run releases them itself); idempotent."""
        ...


def source_name(cls: type[Source] | Source) -> str:
    return f"{cls.capability}.{cls.mechanism}"


class Coalescer:
    """Collects events from a source's read loop and emits them at most every ``max_delay_s``.

    A netlink source must read as soon as the kernel has data (the process it describes may be
    gone a moment later), which makes its reads small; emitting each small read would wake the
    pipeline once per exec. This keeps the reads prompt and the batches big.
    """

    def __init__(self, emit: Emit, max_delay_s: float = 0.05, max_events: int = 4096) -> None:
        self._emit = emit
        self.max_delay_ns = int(max_delay_s * 1e9)
        self.max_events = max_events
        self.pending: list[Event] = []
        self._first_ns = 0

    def add(self, events: Sequence[Event], now_ns: int) -> None:
        if not events:
            return
        if not self.pending:
            self._first_ns = now_ns
        self.pending.extend(events)
        if len(self.pending) >= self.max_events or now_ns - self._first_ns >= self.max_delay_ns:
            self.flush()

    def due_in(self, now_ns: int) -> float | None:
        """Seconds until the pending events must go out (None: nothing pending)."""
        if not self.pending:
            return None
        return max(0.0, (self._first_ns + self.max_delay_ns - now_ns) / 1e9)

    def flush(self) -> None:
        if self.pending:
            out, self.pending = self.pending, []
            self._emit(out)
