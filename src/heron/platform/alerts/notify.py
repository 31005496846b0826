"""The notification outbox worker: sends due ``notifications`` rows, retries with backoff.

A row is leased before it is sent (``claimed_until``): on PostgreSQL the claim is ``SELECT ... FOR
UPDATE SKIP LOCKED``, so servers sharing the database claim different rows; on SQLite the write
lock serialises claims. The claim's lease covers the whole batch at its worst (every send running
to its deadline), and right before each send the row's lease is renewed only if it is still ours:
a row whose lease ran out and that another server took is skipped, never sent twice at once. A
lease that expires (a server died mid-send) makes the row due again, so delivery is at least once.
Each row is settled on its own: whatever one send raises, the others go on. Failures retry after
``backoff_s * 2**(attempts-1)`` (capped) until ``max_attempts``, then the row is ``failed`` (counted
in ``stats``).

``run`` is the asyncio task the app's lifespan starts; the sending itself runs in a thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import sqlalchemy as sa

from heron.platform.alerts.senders import DEADLINE_S, DeliveryError, send_syslog, send_webhook
from heron.platform.storage import schema as s
from heron.platform.storage.db import Database, DatabaseUnavailable

log = logging.getLogger("heron.platform.notify")
NS = 10**9
MAX_ERROR = 500
RESOLVE_SLACK_S = 20.0  # name resolution is outside a send's deadline (the system resolver's own limits)


@dataclass(frozen=True, slots=True)
class Claimed:
    id: int
    lease: int
    attempts: int
    kind: str | None  # None: the channel is gone or disabled
    config: dict[str, Any]
    payload: dict[str, Any]


@dataclass
class Notifier:
    db: Database
    batch: int = 10
    lease_s: float = 0.0  # 0: batch * (deadline_s + RESOLVE_SLACK_S), what a batch of stuck sends can take
    max_attempts: int = 8
    backoff_s: float = 5.0
    backoff_max_s: float = 3600.0
    poll_s: float = 2.0
    timeout_s: float = 5.0  # per socket operation
    deadline_s: float = DEADLINE_S  # per webhook send, in all
    stats: dict[str, int] = field(default_factory=lambda: {"sent": 0, "retried": 0, "failed": 0, "lost": 0})

    def __post_init__(self) -> None:
        self.send_lease_s = max(self.deadline_s, self.timeout_s) + RESOLVE_SLACK_S
        self.lease_s = max(self.lease_s, self.batch * self.send_lease_s)

    def claim(self, now: int) -> list[Claimed]:
        n = s.notifications
        query = (sa.select(n.c.id, n.c.channel_id, n.c.payload, n.c.attempts)
                 .where(n.c.state == "pending", n.c.next_attempt <= now,
                        sa.or_(n.c.claimed_until.is_(None), n.c.claimed_until < now))
                 .order_by(n.c.next_attempt, n.c.id).limit(self.batch))
        if self.db.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True)
        lease = now + int(self.lease_s * NS)
        with self.db.begin() as conn:
            rows = conn.execute(query).all()
            if not rows:
                return []
            conn.execute(sa.update(n).where(n.c.id.in_([r.id for r in rows])).values(claimed_until=lease))
            chans = {c.id: c for c in conn.execute(
                sa.select(s.notification_channels).where(
                    s.notification_channels.c.id.in_({r.channel_id for r in rows}))).all()}
        out = []
        for r in rows:
            ch = chans.get(r.channel_id)
            usable = ch is not None and ch.enabled
            out.append(Claimed(r.id, lease, r.attempts, ch.kind if usable and ch is not None else None,
                               json.loads(ch.config) if usable and ch is not None else {}, json.loads(r.payload)))
        return out

    def renew(self, c: Claimed, now: int) -> Claimed | None:
        """The row with a fresh lease for one send, or None when its lease is no longer ours."""
        n = s.notifications
        lease = now + int(self.send_lease_s * NS)
        with self.db.begin() as conn:
            done = conn.execute(sa.update(n).where(n.c.id == c.id, n.c.claimed_until == c.lease, n.c.state == "pending")
                                .values(claimed_until=lease)).rowcount
        return dataclasses.replace(c, lease=lease) if done else None

    def deliver(self, c: Claimed, now: int) -> str | None:
        """None when delivered, else the reason (never raises: one bad receiver must not stall the rest)."""
        try:
            if c.kind == "webhook":
                send_webhook(c.config, c.payload, self.timeout_s, self.deadline_s)
            elif c.kind == "syslog":
                send_syslog(c.config, c.payload, now, self.timeout_s)
            else:
                return "channel deleted or disabled"
        except DeliveryError as err:
            return str(err)
        except Exception as err:
            log.exception("notification %d: unexpected failure", c.id)
            return f"{type(err).__name__}: {err}"
        return None

    def finish(self, c: Claimed, error: str | None, now: int) -> None:
        n = s.notifications
        attempts = c.attempts + 1
        mine = (n.c.id == c.id, n.c.claimed_until == c.lease)  # a lease taken over meanwhile is not ours
        if error is None:
            values: dict[str, Any] = {"state": "sent", "sent": now, "attempts": attempts, "claimed_until": None,
                                      "last_error": ""}
            self.stats["sent"] += 1
        elif attempts >= self.max_attempts or c.kind is None:
            values = {"state": "failed", "attempts": attempts, "claimed_until": None, "last_error": error[:MAX_ERROR]}
            self.stats["failed"] += 1
            log.warning("notification %d failed for good after %d attempts: %s", c.id, attempts, error)
        else:
            delay = min(self.backoff_s * 2 ** (attempts - 1), self.backoff_max_s)
            values = {"attempts": attempts, "claimed_until": None, "last_error": error[:MAX_ERROR],
                      "next_attempt": now + int(delay * NS)}
            self.stats["retried"] += 1
            log.info("notification %d: %s; retry in %.0f s", c.id, error, delay)
        with self.db.begin() as conn:
            conn.execute(sa.update(n).where(*mine).values(**values))

    def run_once(self) -> int:
        """Claim, send and settle one batch of due rows; how many were handled."""
        claimed = self.claim(time.time_ns())
        for c in claimed:
            mine = self.renew(c, time.time_ns())
            if mine is None:  # our lease ran out and another server has the row
                self.stats["lost"] += 1
                continue
            error = self.deliver(mine, time.time_ns())
            self.finish(mine, error, time.time_ns())
        return len(claimed)

    async def run(self) -> None:
        while True:
            try:
                handled = await anyio.to_thread.run_sync(self.run_once)
            except DatabaseUnavailable as err:
                log.warning("notifications: database unavailable: %s", err)
                handled = 0
            except Exception:  # keep the loop alive; the next round retries
                log.exception("notifications: sending failed")
                handled = 0
            if handled < self.batch:
                await asyncio.sleep(self.poll_s)
