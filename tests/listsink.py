"""A sink that keeps events in a list: the test seam of the pipeline (tests import it by name)."""

from __future__ import annotations

from collections.abc import Sequence

from heron.schema.events import Event


class ListSink:
    name = "list"

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.closed = False

    def write(self, events: Sequence[Event]) -> None:
        self.events.extend(events)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True
