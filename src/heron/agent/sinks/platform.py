"""Ship events to the heron platform with at-least-once delivery through the on-disk spool.

The pipeline thread only buffers and appends: ``write`` adds events to a small in-memory buffer and,
once it holds ``batch_max_events`` (or is ``batch_max_delay_s`` old, checked by the shipper), encodes
it and appends one spool record. Everything after that happens on the shipper thread: read the oldest
unacked record, POST it with its batch id, ack it on OK, drop and count it on DROP, and on RETRY or a
network failure back off exponentially (full jitter, capped) with the record kept. The platform
de-duplicates by batch id, so a resend after a crash or a lost response stores nothing twice.

What can be lost: events still in the in-memory buffer when the process dies (at most
``batch_max_delay_s`` of them), records the spool's size bound drops (counted), batches the platform
rejects as malformed (counted), and, on power loss, the spool's fsync window.

A spool record is ``event count (u32 LE) | zstd(msgpack array of events)``: the count lets the
shipper report sent/dropped events without decoding.
"""

from __future__ import annotations

import logging
import os
import random
import struct
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from heron.agent.health import Health
from heron.agent.sinks.base import Ack, Sink
from heron.agent.sinks.encode import MAX_RAW_BATCH_BYTES, BatchEncoder
from heron.agent.sinks.http_client import PlatformClient, PlatformError
from heron.agent.spool.segments import Spool, SpoolError
from heron.schema.events import Event, HostInfo

log = logging.getLogger("heron.agent.platform")

_COUNT = struct.Struct("<I")
MAX_BODY_BYTES = 8 << 20  # docs/wire.md ingest limit (compressed)
C = "sink.platform."


class PlatformSink:
    name = "platform"

    def __init__(self, url: str, enrollment_token: str, state_dir: str | os.PathLike[str], host: HostInfo,
                 health: Health | None = None, spool_dir: str | os.PathLike[str] | None = None, *,
                 ca_file: str | None = None, verify_tls: bool = True, agent_name: str | None = None,
                 spool_max_bytes: int = 256 << 20, spool_segment_bytes: int = 8 << 20,
                 spool_sync_interval_s: float = 1.0, batch_max_events: int = 1000,
                 batch_max_delay_s: float = 1.0, timeout_s: float = 10.0, backoff_initial_s: float = 0.5,
                 backoff_max_s: float = 30.0, start: bool = True) -> None:
        self.health = health or Health()
        self.batch_max_events = batch_max_events
        self.batch_max_delay_s = batch_max_delay_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.spool = Spool(Path(spool_dir) if spool_dir is not None else Path(state_dir) / "spool",
                           max_bytes=spool_max_bytes,
                           segment_bytes=min(spool_segment_bytes, spool_max_bytes // 2),
                           sync_interval_s=spool_sync_interval_s, health=self.health)
        self.client = PlatformClient(url, enrollment_token=enrollment_token, state_dir=state_dir, host=host,
                                     agent_name=agent_name, ca_file=ca_file, verify_tls=verify_tls,
                                     timeout_s=timeout_s, health=self.health)
        self._encoder = BatchEncoder()
        self._buf: list[Event] = []
        self._buf_since = 0.0
        self._buf_lock = threading.Lock()  # buffer + encoder + spool appends (pipeline and shipper)
        self._stopping = threading.Event()
        self._wake = threading.Event()  # new records in the spool (or flush/close)
        self._kick = threading.Event()  # flush/close: retry now rather than finish the backoff
        self._closed = False
        self._last_trouble = ""  # the problem last reported, so a long outage is reported once
        self.health.set("spool.pending", self.spool.pending_records)
        self._thread = threading.Thread(target=self._run, name="heron-platform-shipper", daemon=True)
        if start:
            self._thread.start()

    # -- pipeline side -------------------------------------------------------------------------------
    def write(self, events: Sequence[Event]) -> None:
        if not events:
            return
        with self._buf_lock:
            if self._closed:
                self.health.add(C + "unspooled_events", len(events))
                return
            if not self._buf:
                self._buf_since = time.monotonic()
            self._buf.extend(events)
            if len(self._buf) < self.batch_max_events:
                return
            self._spool_buffer_locked(everything=False)
        self._wake.set()

    def _spool_buffer_locked(self, everything: bool = True) -> None:
        """Append full records of ``batch_max_events``; the rest too if ``everything``."""
        events, n = self._buf, self.batch_max_events
        cut = len(events) if everything else len(events) - len(events) % n
        for start in range(0, cut, n):
            self._append(events[start:min(start + n, cut)])
        self._buf = events[cut:]
        if self._buf:
            self._buf_since = time.monotonic()
        self.health.set("spool.pending", self.spool.pending_records)

    def _append(self, events: list[Event]) -> None:
        body, raw_len = self._encoder.encode_sized(events)
        # Over the wire limit or the platform's decoded-size limit: halve until it fits.
        if (len(body) > MAX_BODY_BYTES or raw_len > MAX_RAW_BATCH_BYTES) and len(events) > 1:
            half = len(events) // 2
            self._append(events[:half])
            self._append(events[half:])
            return
        try:
            if len(body) > MAX_BODY_BYTES:
                raise SpoolError(f"one event encodes to {len(body)} bytes")
            self.spool.append(_COUNT.pack(len(events)) + body)
        except (SpoolError, OSError) as e:  # disk full, oversized event: count, never crash the pipeline
            self.health.add(C + "spool_errors")
            self.health.add(C + "unspooled_events", len(events))
            log.error("cannot spool %d events: %r", len(events), e)

    def _spool_if_due(self, force: bool = False) -> None:
        with self._buf_lock:
            if self._buf and (force or time.monotonic() - self._buf_since >= self.batch_max_delay_s):
                self._spool_buffer_locked()

    def _housekeeping(self) -> None:
        """Shipper-side chores that must happen on time even during a long backoff."""
        self._spool_if_due()
        try:
            self.spool.sync_if_due()
        except OSError as e:  # an I/O error on sync: the records are still in the page cache
            self.health.add("spool.sync_errors")
            log.error("spool sync failed: %r", e)

    def flush(self, timeout: float = 5.0) -> None:
        """Sink.flush: ``drain`` for at most ``timeout`` s (the agent calls it on stop)."""
        if not self.drain(timeout):
            log.warning("%d batches not yet delivered stay in the spool", self.spool.pending_records)

    def drain(self, timeout: float = 5.0) -> bool:
        """Spool what is buffered and wait (at most ``timeout`` s) until the spool is delivered. What
        is not delivered stays in the spool for the next start. Returns True when all was delivered."""
        self._spool_if_due(force=True)
        self._wake.set()
        self._kick.set()
        deadline = time.monotonic() + timeout
        while self.spool.pending_records and self._thread.is_alive():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        done = self.spool.pending_records == 0
        if done:  # the shipping thread sets the gauge just after its ack: settle it here too
            self.health.set("spool.pending", 0)
        return done

    def close(self) -> None:
        with self._buf_lock:
            if self._closed:
                return
            self._closed = True
        self._spool_if_due(force=True)
        self._stopping.set()
        self._wake.set()
        self._kick.set()
        if self._thread.is_alive():
            self._thread.join(self.client.timeout_s + 5)
        if self._thread.is_alive():  # stuck in the network: it is a daemon, leave the spool to it
            log.warning("platform shipper did not stop in time")
            return
        self.client.close()
        self.spool.close()

    # -- shipper thread -----------------------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                self._housekeeping()
                result = self._ship_one()
            except Exception:  # the shipper must outlive any bug: log, back off, go on
                log.exception("platform shipper")
                self.health.add(C + "errors")
                result = None
            if result is True:
                failures = 0
            elif result is False:
                self._sleep(self.batch_max_delay_s, self._wake)
            else:
                # Only flush and close cut a backoff short: new data must not turn it into a busy retry.
                failures += 1
                self.health.add(C + "retries")
                self._sleep(self._backoff(failures), self._kick)

    def _ship_one(self) -> bool | None:
        """True: a record was settled; False: nothing to send; None: try again later."""
        if not self.client.ready:
            try:
                self.client.ensure_session()
            except PlatformError as e:
                self._trouble(f"platform {self.client.url} unavailable: {e}")
                return None
        try:
            rec = self.spool.read_next()
        except OSError as e:  # unreadable for now (EMFILE, EIO): nothing was skipped, retry after a backoff
            self.health.add("spool.read_errors")
            self._trouble(f"spool unreadable ({e}); its records stay there")
            return None
        if rec is None:
            return False
        batch_id, payload = rec
        count = _COUNT.unpack_from(payload)[0] if len(payload) >= _COUNT.size else 0
        ack = self.client.send(payload[_COUNT.size:], batch_id)
        if ack is Ack.RETRY:
            self._trouble(f"platform {self.client.url} is not accepting batches; they stay in the spool")
            return None
        if self._last_trouble:
            log.info("platform %s: delivering again", self.client.url)
            self._last_trouble = ""
        # Counters before the ack: drain() returns once the spool is empty, and its caller may read them.
        if ack is Ack.OK:
            self.health.add(C + "sent_batches")
            self.health.add(C + "sent_events", count)
        else:
            self.health.add(C + "dropped_batches")
            self.health.add(C + "dropped_events", count)
        self.spool.ack(batch_id)
        self.health.set("spool.pending", self.spool.pending_records)
        return True

    def _trouble(self, message: str) -> None:
        """Say so once per distinct problem (log and health note), not at every retry."""
        if message != self._last_trouble:
            self._last_trouble = message
            log.warning("%s", message)
            self.health.note(message)

    def _backoff(self, failures: int) -> float:
        cap = min(self.backoff_max_s, self.backoff_initial_s * 2 ** min(failures - 1, 30))
        return random.uniform(cap / 2, cap)  # noqa: S311 - jitter, not security

    def _idle_wait(self) -> float:
        with self._buf_lock:
            if self._buf:
                return max(0.0, self._buf_since + self.batch_max_delay_s - time.monotonic())
        return self.batch_max_delay_s

    def _sleep(self, seconds: float, event: threading.Event) -> None:
        """Wait, still spooling the buffer on time, until ``seconds`` pass or ``event`` is set."""
        deadline = time.monotonic() + seconds
        while not self._stopping.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._housekeeping()
            if event.wait(min(left, self._idle_wait())):
                event.clear()
                return


def _implements_sink(sink: PlatformSink) -> Sink:
    return sink  # mypy checks here that PlatformSink satisfies the Sink protocol


__all__ = ["PlatformSink"]
