"""What happens to a batch after it is decoded: the behaviour graph, rules, baselines, alerts.

Ingest calls ``Pipeline.run`` inside the transaction that stores the batch, so a batch's events,
its graph updates and its alerts commit together or not at all: an agent's retry after a failure
repeats all of it, and a batch already stored (a duplicate) repeats none of it.

Stages (each optional, so tests can run one alone):
- ``rules``: the rule engine turns events into ``Detection``s (kind ``rule``);
- ``graph``: updates nodes and edges and returns anomalies against learned baselines (kind
  ``anomaly``);
- ``alerts``: applies suppressions, groups detections into incidents, queues notifications.

The pipeline runs in a savepoint (``SqlStorage.ingest_batch``): when a stage fails for a reason a
retry would not cure, its work is rolled back, the batch's events are stored anyway, and
``IngestStats`` counts the failure (GET /api/v1/overview, ``ingest``). Ingest passes events to the
stages as they came, with NUL characters replaced by U+FFFD; an event stamped more than
``FUTURE_SLACK_NS`` after the batch was received is counted as ``future_events`` (stages that
compare times should bound them by ``Batch.received``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy.engine import Connection


@dataclass(frozen=True, slots=True)
class Batch:
    """One agent's decoded batch as the analysis stages see it."""

    agent_id: str
    hostname: str
    received: int  # ns since the epoch, when the platform got it
    events: Sequence[dict[str, Any]]  # each event as its JSON decodes (the shape rules see)


@dataclass(frozen=True, slots=True)
class Detection:
    """One rule match or one baseline anomaly on one event."""

    kind: str  # "rule" or "anomaly"
    name: str  # the rule's name, or the anomaly kind ("new_child", "new_remote", ...)
    severity: str  # info, low, medium, high, critical
    score: float  # 0-100; rules map severity to a score, anomalies add rarity
    agent_id: str
    hostname: str
    ts: int  # the event's time
    event: dict[str, Any]  # the triggering event
    summary: str  # one line a person can read: what happened, by whom
    tags: tuple[str, ...] = ()  # MITRE ATT&CK ids and free tags
    process: dict[str, Any] | None = None  # the acting process (ProcessRef / ProcessInfo shape)
    cluster: int | None = None  # graph node id of the process cluster, when known
    evidence: dict[str, Any] = field(default_factory=dict)  # e.g. the new edge of an anomaly


class RuleStage(Protocol):
    def evaluate(self, batch: Batch) -> list[Detection]: ...


class GraphStage(Protocol):
    def update(self, conn: Connection, batch: Batch) -> list[Detection]: ...


class AlertStage(Protocol):
    def record(self, conn: Connection, batch: Batch, detections: list[Detection]) -> None: ...


@dataclass
class Pipeline:
    rules: RuleStage | None = None
    graph: GraphStage | None = None
    alerts: AlertStage | None = None

    def run(self, conn: Connection, batch: Batch) -> list[Detection]:
        detections: list[Detection] = []
        if self.rules is not None:
            detections += self.rules.evaluate(batch)
        if self.graph is not None:
            detections += self.graph.update(conn, batch)
        if self.alerts is not None:
            self.alerts.record(conn, batch, detections)
        return detections


FUTURE_SLACK_NS = 3600 * 10**9  # an event stamped later than received + this is "from the future"
LOG_EVERY_S = 60.0  # analysis failures are logged at most once per this, with a count of the others

log = logging.getLogger("heron.platform.analysis")


@dataclass
class IngestStats:
    """What ingest noticed but did not refuse, counted by this server process since it started
    (in memory: each server of a cluster counts its own, a restart starts from zero)."""

    started: int = field(default_factory=time.time_ns)
    batches_analysed: int = 0
    analysis_failures: int = 0  # batches stored without analysis: a stage raised (see the log)
    last_analysis_error: str = ""
    last_analysis_failure: int | None = None  # ns
    future_events: int = 0  # events stamped more than FUTURE_SLACK_NS after their batch arrived
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _logged_at: float = field(default=-LOG_EVERY_S, repr=False)
    _unlogged: int = field(default=0, repr=False)

    def analysed(self, agent_id: str, batch_id: str, error: BaseException | None, now: int) -> None:
        """Count one stored batch; log its analysis failure, at most once per LOG_EVERY_S."""
        with self._lock:
            self.batches_analysed += 1
            if error is None:
                return
            self.analysis_failures += 1
            self.last_analysis_error = f"{type(error).__name__}: {error}"[:300]
            self.last_analysis_failure = now
            if time.monotonic() - self._logged_at < LOG_EVERY_S:
                self._unlogged += 1
                return
            self._logged_at, skipped, self._unlogged = time.monotonic(), self._unlogged, 0
        log.error("analysis of batch %s of agent %s failed; its events are stored unanalysed (%d more "
                  "such failures not logged since the last message)", batch_id, agent_id, skipped,
                  exc_info=error)

    def count_future(self, n: int) -> None:
        if n:
            with self._lock:
                self.future_events += n

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"since": self.started, "batches_analysed": self.batches_analysed,
                    "analysis_failures": self.analysis_failures, "last_analysis_error": self.last_analysis_error,
                    "last_analysis_failure": self.last_analysis_failure, "future_events": self.future_events}
