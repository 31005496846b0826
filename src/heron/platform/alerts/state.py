"""Alert states: open → acknowledged → closed; an admin may reopen (closed → open) or take back an
acknowledgement (acknowledged → open). Every change is an alert_log row with the actor and note.
"""

from __future__ import annotations

import importlib
import json
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from heron.platform.alerts import log
from heron.platform.storage import schema as s

STATES = ("open", "acknowledged", "closed")
TRANSITIONS = {("open", "acknowledged"), ("open", "closed"), ("acknowledged", "closed"), ("acknowledged", "open"),
               ("closed", "open")}
ACTIONS = {"acknowledged": "acknowledged", "closed": "closed", "open": "reopened"}


class StateError(ValueError):
    """A refused change; ``status`` is the HTTP status that fits (404 unknown alert, 409 conflict)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def set_state(conn: Connection, alert_id: int, state: str, actor: str, note: str = "") -> dict[str, Any]:
    """Change an alert's state; returns {"id", "state", "previous"}. StateError when refused."""
    if state not in STATES:
        raise StateError(400, f"state must be one of {', '.join(STATES)}")
    row = conn.execute(sa.select(s.alerts.c.state).where(s.alerts.c.id == alert_id).with_for_update()).first()
    if row is None:
        raise StateError(404, f"no alert {alert_id}")
    previous = row.state
    if (previous, state) not in TRANSITIONS:
        raise StateError(409, f"alert {alert_id} is {previous}: it cannot become {state}")
    now = time.time_ns()
    conn.execute(sa.update(s.alerts).where(s.alerts.c.id == alert_id).values(state=state, updated=now))
    log.write(conn, alert_id, actor, ACTIONS[state], note, ts=now)
    return {"id": alert_id, "state": state, "previous": previous}


def anomaly_edges(conn: Connection, alert_id: int) -> list[int]:
    """Graph edge ids named by the alert's anomaly detections (``evidence.edge`` or ``evidence.edge_id``)."""
    rows = conn.execute(sa.select(s.detections.c.evidence).where(s.detections.c.alert_id == alert_id,
                                                                 s.detections.c.kind == "anomaly")).all()
    out: list[int] = []
    for (text,) in rows:
        try:
            ev = json.loads(text)
        except ValueError:
            continue
        if not isinstance(ev, dict):
            continue
        edge = ev.get("edge_id", ev.get("edge"))
        if isinstance(edge, dict):
            edge = edge.get("id")
        if isinstance(edge, int) and not isinstance(edge, bool) and edge not in out:
            out.append(edge)
    return out


def mark_expected(conn: Connection, alert_id: int, actor: str, note: str = "") -> dict[str, Any]:
    """Fold the alert's anomalies into their baselines (heron.platform.graph.mark_expected per edge) and
    close the alert. StateError 404 / 409 (no anomaly in it) / 503 (the graph module is missing)."""
    row = conn.execute(sa.select(s.alerts.c.state).where(s.alerts.c.id == alert_id)).first()
    if row is None:
        raise StateError(404, f"no alert {alert_id}")
    edges = anomaly_edges(conn, alert_id)
    if not edges:
        raise StateError(409, f"alert {alert_id} has no anomaly detection to mark as expected")
    try:
        graph: Any = importlib.import_module("heron.platform.graph")
        fold = graph.mark_expected
    except (ImportError, AttributeError):
        raise StateError(503, "the behaviour graph is not available on this server") from None
    for edge in edges:
        fold(conn, edge, actor)
    now = time.time_ns()
    log.write(conn, alert_id, actor, "expected", (f"edges {edges}. " + note).strip(), ts=now)
    if row.state != "closed":
        conn.execute(sa.update(s.alerts).where(s.alerts.c.id == alert_id).values(state="closed", updated=now))
        log.write(conn, alert_id, actor, "closed", "marked as expected", ts=now)
    return {"id": alert_id, "state": "closed", "edges": edges}
