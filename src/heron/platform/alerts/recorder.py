"""AlertRecorder: the ``alerts`` stage. Detections → suppressions → de-duplication → incidents.

Runs inside the ingest transaction (``conn``), so a batch's alerts commit with its events.

- Suppressed detections are dropped and counted on their suppression (suppress.py).
- De-duplication: the same detection (kind, name, host, process key and event content without its
  times and counters) within ``dedupe_window_s`` of an earlier one in an alert that is not closed
  increments that detection's ``count`` and the alert's ``last_ts`` instead of adding a row.
- Grouping (lineage.py): a detection joins the most recent open or acknowledged alert of the same
  host, within ``incident_window_s`` of it, whose process tree it shares: the same process, an
  alert process that is its ancestor, or its process being an ancestor of an alert process.
  Detections without a process group by rule and host. Joining raises the alert's severity to the
  highest, its score to the highest, and updates last_ts and n_detections. A closed alert is never
  joined: a new alert is made.
- alert_log gets "created" and "escalated" rows; channels get outbox rows on both (channels.py).

One hostile or broken agent must not flood the database or the operators (every detection costs a
few queries inside the ingest transaction):
- a batch's detections beyond ``max_detections_per_batch`` (the most severe are kept) and new
  alerts beyond ``max_new_alerts_per_agent_minute`` (per server, a one-minute window) are folded
  into ONE "storm" alert of that agent (kind ``storm``, severity high, ``n_detections`` counting
  what was folded, the title naming a sample of the rules): never silently dropped;
- a detection's time, which orders alerts, is at most ``received`` + ``MAX_AHEAD_NS`` (an agent's
  clock cannot pin an alert to the top of the list); the event JSON keeps the agent's own ts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from heron.platform.alerts import channels, log
from heron.platform.alerts.lineage import Lineage, lineage, process_key
from heron.platform.alerts.severity import highest, rank, score_for
from heron.platform.alerts.summary import one_line
from heron.platform.alerts.suppress import SuppressionCache, count_hits
from heron.platform.analysis import Batch, Detection
from heron.platform.storage import schema as s

NS = 10**9
MAX_KEYS = 256  # process keys remembered per alert
MAX_CANDIDATES = 200
ACTOR = "heron"
MAX_AHEAD_NS = 3600 * NS  # a detection's ordering time is at most this far after the batch arrived
STORM = "storm"
STORM_SEVERITY = "high"
STORM_SAMPLE = 5  # rule names in a storm alert's title
# Event fields that differ between repeats of the same behaviour: left out of the de-duplication key.
VOLATILE = frozenset({"ts", "first_ts", "last_ts", "count", "v", "source", "bytes_in", "bytes_out", "packets_in",
                      "packets_out", "connections", "since_ts"})


def dedupe_key(d: Detection, key: str) -> str:
    content = {k: v for k, v in d.event.items() if k not in VOLATILE}
    text = json.dumps([d.kind, d.name, d.agent_id, key, content], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def bounded_key(text: str) -> str:
    """An indexed key of at most ~300 bytes: PostgreSQL refuses B-tree entries over ~2.7 KB, and a
    hostile agent chooses process keys. Long keys keep a prefix and gain a digest of the whole."""
    if len(text) <= 256:
        return text
    return text[:200] + "#" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def clamp_ts(d: Detection, received: int) -> Detection:
    """``d`` with its ordering time at most ``received`` + MAX_AHEAD_NS (its event keeps the agent's ts)."""
    return d if d.ts <= received + MAX_AHEAD_NS else dataclasses.replace(d, ts=received + MAX_AHEAD_NS)


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) and v else None


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _keys(text: str) -> list[str]:
    try:
        v = json.loads(text)
    except ValueError:
        return []
    return [x for x in v if isinstance(x, str)] if isinstance(v, list) else []


def _merge(old: list[str], new: list[str]) -> list[str]:
    out = list(dict.fromkeys([*old, *new]))
    return out[-MAX_KEYS:]


class NewAlertBudget:
    """New alerts per agent per one-minute window, in this server's memory (no query per detection)."""

    def __init__(self, per_minute: int, clock: Callable[[], int]) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[int, int]] = {}  # agent -> (window start ns, alerts created in it)

    def take(self, agent_id: str) -> bool:
        now = self._clock()
        with self._lock:
            start, used = self._windows.get(agent_id, (now, 0))
            if now - start >= 60 * NS:
                start, used = now, 0
            if used >= self.per_minute:
                return False
            if len(self._windows) > 100_000:  # forget agents whose window is over
                self._windows = {k: v for k, v in self._windows.items() if now - v[0] < 60 * NS}
            self._windows[agent_id] = (start, used + 1)
            return True


class AlertRecorder:
    def __init__(self, *, incident_window_s: float = 600.0, dedupe_window_s: float = 600.0,
                 suppression_refresh_s: float = 5.0, max_detections_per_batch: int = 500,
                 max_new_alerts_per_agent_minute: int = 50, notify_max_per_channel_minute: int = 60,
                 clock: Callable[[], int] = time.time_ns) -> None:
        self.incident_window_ns = int(incident_window_s * NS)
        self.dedupe_window_ns = int(dedupe_window_s * NS)
        self.suppressions = SuppressionCache(suppression_refresh_s)
        self.max_detections_per_batch = max_detections_per_batch
        self.budget = NewAlertBudget(max_new_alerts_per_agent_minute, clock)
        self.notify_limit = notify_max_per_channel_minute
        self._clock = clock

    def record(self, conn: Connection, batch: Batch, detections: list[Detection]) -> None:
        if not detections:
            return
        keep, hits = self.suppressions.split(conn, detections)
        if hits:
            count_hits(conn, hits)
        keep = [clamp_ts(d, batch.received) for d in keep]
        folded: list[Detection] = []
        if len(keep) > self.max_detections_per_batch:
            ranked = sorted(keep, key=lambda x: (-rank(x.severity), -x.score, x.ts))
            keep, folded = ranked[:self.max_detections_per_batch], ranked[self.max_detections_per_batch:]
        for d in sorted(keep, key=lambda x: x.ts):
            if self._record(conn, d, batch.received, self.budget.take) is None:
                folded.append(d)
        if folded:
            self.storm(conn, batch, folded)

    def record_one(self, conn: Connection, d: Detection, received: int) -> int:
        """Store one detection (no new-alert budget); the id of the alert it is now part of."""
        alert_id = self._record(conn, clamp_ts(d, received), received, lambda _agent: True)
        assert alert_id is not None
        return alert_id

    def _record(self, conn: Connection, d: Detection, received: int, may_create: Callable[[str], bool]) -> int | None:
        """The alert id, or None when the detection needs a new alert and ``may_create`` refuses it."""
        now = self._clock()
        key = process_key(d.process)
        dkey = dedupe_key(d, key)
        dup = conn.execute(
            sa.select(s.detections.c.id, s.detections.c.alert_id)
            .join(s.alerts, s.alerts.c.id == s.detections.c.alert_id)
            .where(s.detections.c.dedupe_key == dkey, s.detections.c.ts >= d.ts - self.dedupe_window_ns,
                   s.alerts.c.state != "closed")
            .order_by(s.detections.c.id.desc()).limit(1)).first()
        if dup is not None:
            last = sa.func.coalesce(s.detections.c.last_ts, s.detections.c.ts)
            conn.execute(sa.update(s.detections).where(s.detections.c.id == dup.id).values(
                count=s.detections.c.count + 1, last_ts=sa.case((last < d.ts, d.ts), else_=last)))
            conn.execute(sa.update(s.alerts).where(s.alerts.c.id == dup.alert_id, s.alerts.c.last_ts < d.ts)
                         .values(last_ts=d.ts, updated=now))
            return int(dup.alert_id)
        lin = lineage(conn, d.agent_id, d.event, d.process)
        alert = self.find_incident(conn, d, lin)
        if alert is None:
            if not may_create(d.agent_id):
                return None
            alert_id = self.create_alert(conn, d, lin, now)
        else:
            alert_id = alert["id"]
            self.join_alert(conn, alert, d, lin, now)
        proc = d.process or {}
        conn.execute(sa.insert(s.detections).values(
            alert_id=alert_id, kind=d.kind, name=d.name, severity=d.severity, score=d.score, agent_id=d.agent_id,
            hostname=d.hostname, ts=d.ts, received=received, pid=_int(proc.get("pid")), exe=_str(proc.get("exe")),
            process_key=key or None, summary=one_line(d.summary), tags=json.dumps(list(d.tags)),
            event=json.dumps(d.event, separators=(",", ":"), default=str), dedupe_key=dkey, count=1, last_ts=d.ts,
            evidence=json.dumps(d.evidence, separators=(",", ":"), default=str), cluster=d.cluster))
        return alert_id

    def find_incident(self, conn: Connection, d: Detection, lin: Lineage) -> Mapping[Any, Any] | None:
        a = s.alerts
        window = (a.c.agent_id == d.agent_id, a.c.state.in_(("open", "acknowledged")),
                  a.c.last_ts >= d.ts - self.incident_window_ns, a.c.first_ts <= d.ts + self.incident_window_ns)
        if not lin.key:
            return conn.execute(sa.select(a).where(*window, a.c.group_key == bounded_key(f"{d.agent_id}|rule:{d.name}"))
                                .order_by(a.c.last_ts.desc()).limit(1).with_for_update()).mappings().first()
        rows = conn.execute(sa.select(a).where(*window, a.c.process_key.is_not(None))
                            .order_by(a.c.last_ts.desc()).limit(MAX_CANDIDATES).with_for_update()).mappings().all()
        mine = {lin.key, *lin.ancestors}
        for row in rows:
            members = _keys(row["process_keys"])
            if mine.intersection(members) or lin.key in _keys(row["ancestor_keys"]):
                return row
        return None

    def create_alert(self, conn: Connection, d: Detection, lin: Lineage, now: int) -> int:
        proc = d.process or {}
        group = bounded_key(f"{d.agent_id}|{lin.key}" if lin.key else f"{d.agent_id}|rule:{d.name}")
        values = dict(
            group_key=group, agent_id=d.agent_id, hostname=d.hostname, title=one_line(d.summary or d.name), kind=d.kind,
            rule=d.name, severity=d.severity, score=d.score, state="open", pid=_int(proc.get("pid")),
            exe=_str(proc.get("exe")), process_key=lin.key or None, container_id=_str(proc.get("container_id")),
            first_ts=d.ts, last_ts=d.ts, created=now, updated=now, n_detections=1, tags=json.dumps(list(d.tags)),
            process_keys=json.dumps([lin.key] if lin.key else []), ancestor_keys=json.dumps(list(lin.ancestors)))
        pk = conn.execute(sa.insert(s.alerts).values(**values)).inserted_primary_key
        assert pk is not None
        alert_id = int(pk[0])
        log.write(conn, alert_id, ACTOR, "created", f"{d.kind} {d.name}", ts=now)
        channels.queue(conn, {**values, "id": alert_id}, "created", now, limit=self.notify_limit)
        return alert_id

    def storm(self, conn: Connection, batch: Batch, folded: list[Detection]) -> int:
        """Fold ``folded`` into the agent's open storm alert (made when there is none); its id."""
        now = self._clock()
        a = s.alerts
        group = f"{batch.agent_id}|{STORM}"
        ts = batch.received
        names = Counter(d.name for d in folded)
        tags = sorted({t for d in folded for t in d.tags})
        row = conn.execute(sa.select(a).where(a.c.group_key == group, a.c.state.in_(("open", "acknowledged")),
                                              a.c.last_ts >= ts - self.incident_window_ns)
                           .order_by(a.c.last_ts.desc()).limit(1).with_for_update()).mappings().first()
        total = len(folded) + (row["n_detections"] if row is not None else 0)
        sample = ", ".join(one_line(n)[:80] for n, _ in names.most_common(STORM_SAMPLE))
        title = (f"alert storm on {one_line(batch.hostname)}: {total} detections folded, not raised one by one "
                 f"(rules: {sample}{', …' if len(names) > STORM_SAMPLE else ''})")
        if row is None:
            values = dict(
                group_key=group, agent_id=batch.agent_id, hostname=batch.hostname, title=title, kind=STORM, rule=STORM,
                severity=STORM_SEVERITY, score=score_for(STORM_SEVERITY), state="open", first_ts=ts, last_ts=ts,
                created=now, updated=now, n_detections=len(folded), tags=json.dumps(tags[:MAX_KEYS]),
                process_keys="[]", ancestor_keys="[]")
            pk = conn.execute(sa.insert(a).values(**values)).inserted_primary_key
            assert pk is not None
            alert_id = int(pk[0])
            log.write(conn, alert_id, ACTOR, "created", f"storm: {len(folded)} detections folded", ts=now)
            channels.queue(conn, {**values, "id": alert_id}, "created", now, limit=self.notify_limit)
        else:
            alert_id = int(row["id"])
            conn.execute(sa.update(a).where(a.c.id == alert_id).values(
                title=title, last_ts=max(row["last_ts"], ts), updated=now,
                n_detections=a.c.n_detections + len(folded), tags=json.dumps(_merge(_keys(row["tags"]), tags))))
        per_rule = ", ".join(f"{one_line(n)[:80]} x{c}" for n, c in names.most_common(20))
        sample_event = folded[0]
        conn.execute(sa.insert(s.detections).values(
            alert_id=alert_id, kind=STORM, name=STORM, severity=STORM_SEVERITY, score=score_for(STORM_SEVERITY),
            agent_id=batch.agent_id, hostname=batch.hostname, ts=ts, received=batch.received,
            summary=f"{len(folded)} detections folded: {per_rule}"[:1000], tags=json.dumps(tags[:MAX_KEYS]),
            event=json.dumps(sample_event.event, separators=(",", ":"), default=str),
            dedupe_key=hashlib.sha256(f"{group}|{ts}|{now}".encode()).hexdigest(), count=len(folded), last_ts=ts,
            evidence=json.dumps({"folded": len(folded), "rules": dict(names.most_common(50)),
                                 "sample": {"kind": sample_event.kind, "name": sample_event.name,
                                            "summary": sample_event.summary}}, default=str)))
        return alert_id

    def join_alert(self, conn: Connection, alert: Mapping[Any, Any], d: Detection, lin: Lineage, now: int) -> None:
        severity = highest(alert["severity"], d.severity)
        tags = _merge(_keys(alert["tags"]), list(d.tags))
        values: dict[str, Any] = dict(
            severity=severity, score=max(alert["score"], d.score), last_ts=max(alert["last_ts"], d.ts),
            first_ts=min(alert["first_ts"], d.ts), updated=now, n_detections=s.alerts.c.n_detections + 1,
            tags=json.dumps(tags),
            process_keys=json.dumps(_merge(_keys(alert["process_keys"]), [lin.key] if lin.key else [])),
            ancestor_keys=json.dumps(_merge(_keys(alert["ancestor_keys"]), list(lin.ancestors))))
        conn.execute(sa.update(s.alerts).where(s.alerts.c.id == alert["id"]).values(**values))
        if rank(severity) > rank(alert["severity"]):
            log.write(conn, alert["id"], ACTOR, "escalated", f"{alert['severity']} -> {severity} by {d.kind} {d.name}",
                      ts=now)
            row = conn.execute(sa.select(s.alerts).where(s.alerts.c.id == alert["id"])).mappings().one()
            channels.queue(conn, row, "escalated", now, limit=self.notify_limit)
