"""Suppressions: detections an operator chose not to see, matched before they become alerts.

A suppression names a rule (or anomaly kind; '' any), a rule-language condition evaluated on the
detection's event ('' any), a hostname glob ('' any) and an optional expiry. Every field given
must hold. Suppressed detections are not stored; each suppression counts its hits. The recorder
reads the table every ``refresh_s`` seconds, not per batch, so a new suppression takes effect
within that time on every server.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from heron.detect import ConditionError, compile_condition
from heron.detect.lang import Predicate
from heron.platform.analysis import Detection
from heron.platform.storage import schema as s

log = logging.getLogger("heron.platform.alerts")

MAX_CONDITION = 16 << 10


def check_condition(text: str) -> Predicate | None:
    """The compiled condition (None for ''), ValueError with the reason when it does not compile."""
    if not text.strip():
        return None
    if len(text) > MAX_CONDITION:
        raise ValueError(f"condition longer than {MAX_CONDITION} characters")
    try:
        return compile_condition(text, where="suppression").matches
    except ConditionError as err:
        raise ValueError(str(err)) from None


@dataclass(frozen=True, slots=True)
class Suppression:
    id: int
    rule: str
    hostname: str
    expires: int | None
    condition: Predicate | None

    def matches(self, d: Detection, now: int) -> bool:
        if self.expires is not None and self.expires <= now:
            return False
        if self.rule and self.rule != d.name:
            return False
        if self.hostname and not fnmatch.fnmatchcase(d.hostname, self.hostname):
            return False
        if self.condition is not None:
            try:
                return bool(self.condition(d.event))
            except (TypeError, AttributeError, ValueError, KeyError, IndexError, RecursionError):
                return False
        return True


class SuppressionCache:
    def __init__(self, refresh_s: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.refresh_s = refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._items: list[Suppression] = []
        self._loaded_at: float | None = None

    def invalidate(self) -> None:
        """Reload at the next use (this server changed the table)."""
        with self._lock:
            self._loaded_at = None

    def current(self, conn: Connection) -> list[Suppression]:
        now = self._clock()
        with self._lock:
            if self._loaded_at is not None and now - self._loaded_at < self.refresh_s:
                return self._items
        items = load(conn)
        with self._lock:
            self._items, self._loaded_at = items, now
        return items

    def split(self, conn: Connection, detections: list[Detection]) -> tuple[list[Detection], dict[int, int]]:
        """(the detections to keep, hits per suppression id); hits are not written here."""
        sups = self.current(conn) if detections else []
        if not sups:
            return detections, {}
        now = time.time_ns()
        keep: list[Detection] = []
        hits: dict[int, int] = {}
        for d in detections:
            hit = next((x for x in sups if x.matches(d, now)), None)
            if hit is None:
                keep.append(d)
            else:
                hits[hit.id] = hits.get(hit.id, 0) + 1
        return keep, hits


def load(conn: Connection) -> list[Suppression]:
    now = time.time_ns()
    rows = conn.execute(sa.select(s.suppressions).where(
        s.suppressions.c.enabled == 1,
        sa.or_(s.suppressions.c.expires.is_(None), s.suppressions.c.expires > now))).mappings().all()
    out: list[Suppression] = []
    for r in rows:
        try:
            cond = check_condition(r["condition"])
        except ValueError as err:  # stored before a language change: skip it, say so
            log.warning("suppression %s (%s) ignored: %s", r["id"], r["name"], err)
            continue
        out.append(Suppression(r["id"], r["rule"], r["hostname"], r["expires"], cond))
    return out


def count_hits(conn: Connection, hits: dict[int, int]) -> None:
    now = time.time_ns()
    for sid, n in sorted(hits.items()):  # a fixed order: concurrent PG transactions lock rows alike
        conn.execute(sa.update(s.suppressions).where(s.suppressions.c.id == sid)
                     .values(hits=s.suppressions.c.hits + n, last_hit=now))
