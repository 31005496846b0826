"""alert_log: who did what to an alert, and why (creation, escalation, state changes)."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from heron.platform.storage import schema as s

MAX_NOTE = 2000


def write(conn: Connection, alert_id: int, actor: str, action: str, note: str = "", ts: int | None = None) -> None:
    conn.execute(sa.insert(s.alert_log).values(alert_id=alert_id, ts=time.time_ns() if ts is None else ts,
                                               actor=actor[:200], action=action[:200], note=note[:MAX_NOTE]))
