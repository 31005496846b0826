"""What the pipeline needs from a sink, and what a transport answers for one batch.

A sink takes batches of events on the pipeline thread: ``write`` must be quick (no network; a sink
that talks to a remote end buffers or spools and ships on its own thread). ``flush`` pushes out
what is buffered (a networked sink may wait, bounded, for delivery); ``close`` releases everything.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Protocol

from heron.schema.events import Event


class Sink(Protocol):
    name: str

    def write(self, events: Sequence[Event]) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class Ack(enum.Enum):
    """A transport's verdict on one batch: the spool deletes a record only after OK."""

    OK = "ok"  # stored (or already stored: a duplicate counts as delivered)
    RETRY = "retry"  # not stored; keep it and try again later
    DROP = "drop"  # the receiver will never accept it (malformed, too large): discard and count


__all__ = ["Ack", "Sink"]
