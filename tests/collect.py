"""Collecting emit for source tests: sources call it with lists of events from their thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from heron.schema.events import Event


class Collector:
    def __init__(self, fail: bool = False) -> None:
        self.events: list[Event] = []
        self.batches = 0
        self.lock = threading.Lock()
        self.fail = fail  # emit raises: how a source copes with a broken pipeline

    def __call__(self, events: Sequence[Event]) -> None:
        if self.fail:
            raise RuntimeError("emit failed")
        with self.lock:
            self.events.extend(events)
            self.batches += 1

    def find(self, pred: Callable[[Event], bool]) -> list[Event]:
        with self.lock:
            return [e for e in self.events if pred(e)]

    def wait_for(self, pred: Callable[[Event], bool], count: int = 1, timeout: float = 10.0) -> list[Event]:
        """Events matching ``pred`` once there are ``count`` of them, or what there is at the timeout."""
        deadline = time.monotonic() + timeout
        found = self.find(pred)
        while len(found) < count and time.monotonic() < deadline:
            time.sleep(0.02)
            found = self.find(pred)
        return found
