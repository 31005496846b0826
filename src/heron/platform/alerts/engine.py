"""RuleEngine: the ``rules`` stage of the analysis pipeline (heron.detect's rules over each batch).

The default pack loads with the user's rule paths. ``evaluate`` checks the files for changes at most
every ``check_interval_s`` (a few stat calls, from the ingest path): a changed set that loads is
swapped in; one that is refused keeps the old rules active, and its error ("file:line: reason") is
logged once and shown by GET /api/v1/rules. A bad user file at start leaves the default pack active
with the error reported the same way.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from heron.detect import RuleLoadError, RuleSet
from heron.platform.alerts.severity import score_for
from heron.platform.alerts.summary import summarise
from heron.platform.analysis import Batch, Detection

log = logging.getLogger("heron.platform.rules")


class RuleEngine:
    def __init__(self, paths: Sequence[str] = (), *, check_interval_s: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.paths = [str(p) for p in paths]
        self.check_interval_s = check_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next_check = clock() + check_interval_s
        try:
            self.ruleset = RuleSet(self.paths)
        except RuleLoadError as err:
            # Start with the default pack; pointing it at the user paths makes the next reload retry
            # them (and fail the same way until they change), which records last_error.
            log.error("rule files refused, default rules only: %s", err)
            self.ruleset = RuleSet(())
            self.ruleset.paths = list(self.paths)
            self.ruleset.reload_if_changed()
        self._reported_error = self.ruleset.last_error

    @property
    def last_error(self) -> str | None:
        return self.ruleset.last_error

    def maybe_reload(self, force: bool = False) -> bool:
        """Reload when the files changed, at most every check_interval_s (unless ``force``)."""
        now = self._clock()
        if not force and now < self._next_check:
            return False
        if not self._lock.acquire(blocking=False):
            return False  # another ingest thread is checking
        try:
            self._next_check = now + self.check_interval_s
            changed = self.ruleset.reload_if_changed()
            if changed:
                log.info("rules reloaded: %d rules active", len(self.ruleset.rules))
            error = self.ruleset.last_error
            if error and error != self._reported_error:
                log.error("rule files refused, previous rules stay active: %s", error)
            self._reported_error = error
            return changed
        finally:
            self._lock.release()

    def evaluate(self, batch: Batch) -> list[Detection]:
        self.maybe_reload()
        out: list[Detection] = []
        for event in batch.events:
            matches = self.ruleset.evaluate(event)
            if not matches:
                continue
            process = event.get("process")
            proc = process if isinstance(process, dict) else None
            summary = summarise(event)
            ts = event.get("ts")
            for m in matches:
                out.append(Detection(
                    kind="rule", name=m.rule, severity=m.severity, score=score_for(m.severity),
                    agent_id=batch.agent_id, hostname=batch.hostname,
                    ts=ts if isinstance(ts, int) else batch.received, event=dict(event), summary=summary,
                    tags=m.tags, process=proc))
        return out

    def describe(self) -> dict[str, Any]:
        """GET /api/v1/rules: the active rules and the last load error."""
        rules = [{"name": r.name, "desc": r.desc, "severity": r.severity, "tags": list(r.tags), "enabled": r.enabled,
                  "origin": r.origin,
                  "event_types": sorted(r.condition.event_types) if r.condition.event_types is not None else None}
                 for r in self.ruleset.rules]
        error = self.ruleset.last_error
        return {"rules": rules, "paths": list(self.paths), "reloads": self.ruleset.reloads,
                "error": error, "problems": error.split("; ") if error else []}
