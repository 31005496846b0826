"""What happens to a batch after it is decoded: the behaviour graph, rules, baselines, alerts.

Ingest calls ``Pipeline.run`` inside the transaction that stores the batch, so a batch's events,
its graph updates and its alerts commit together or not at all: an agent's retry after a failure
repeats all of it, and a batch already stored (a duplicate) repeats none of it.

Stages (each optional, so tests can run one alone):
- ``rules``: the rule engine turns events into ``Detection``s (kind ``rule``);
- ``graph``: updates nodes and edges and returns anomalies against learned baselines (kind
  ``anomaly``);
- ``alerts``: applies suppressions, groups detections into incidents, queues notifications.
"""

from __future__ import annotations

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
