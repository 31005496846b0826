"""Notifications through real sockets: a webhook server on 127.0.0.1 (500, then 200) and a UDP syslog
receiver; retries, give-up, leases, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import sqlalchemy as sa

from heron.platform.alerts import channels
from heron.platform.alerts.notify import Notifier
from heron.platform.storage import schema as s
from heron.platform.storage.db import Database

NOW = time.time_ns()


class Hook:
    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.bodies: list[dict[str, Any]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.bodies.append({"json": json.loads(body), "type": self.headers["Content-Type"]})
                status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook([500])
    yield h
    h.close()


def make_alert(db: Database, severity: str = "high") -> dict[str, Any]:
    values = dict(group_key="g", agent_id="a1", hostname="web-1", title="bash -i spawned by nginx (pid 7)",
                  kind="rule", rule="Shell spawned by a server process", severity=severity, score=75.0,
                  state="open", pid=7, exe="/usr/bin/bash", process_key="k-7", first_ts=NOW, last_ts=NOW,
                  created=NOW, updated=NOW, n_detections=1, tags='["T1059.004"]')
    with db.begin() as c:
        pk = c.execute(sa.insert(s.alerts).values(**values)).inserted_primary_key
        assert pk is not None
        return {**values, "id": pk[0]}


def add_channel(db: Database, name: str, kind: str, config: dict[str, Any], min_severity: str = "medium") -> None:
    ch = channels.validate(name, kind, config, min_severity)
    with db.begin() as c:
        c.execute(sa.insert(s.notification_channels).values(name=name, kind=kind, config=json.dumps(ch["config"]),
                                                            min_severity=min_severity, created=NOW))


def queue(db: Database, alert: dict[str, Any]) -> int:
    with db.begin() as c:
        return channels.queue(c, alert, "created")


def outbox(db: Database) -> list[Any]:
    with db.read() as c:
        return list(c.execute(sa.select(s.notifications).order_by(s.notifications.c.id)).all())


def test_webhook_retried_then_delivered_once(adb: Database, hook: Hook) -> None:
    add_channel(adb, "slack", "webhook", {"url": hook.url})
    alert = make_alert(adb)
    assert queue(adb, alert) == 1
    notifier = Notifier(adb, backoff_s=0.05)
    assert notifier.run_once() == 1  # 500
    [row] = outbox(adb)
    assert (row.state, row.attempts, row.last_error, row.claimed_until) == ("pending", 1, "HTTP 500", None)
    assert row.next_attempt > row.created
    time.sleep(0.1)
    assert notifier.run_once() == 1  # 200
    assert notifier.run_once() == 0  # nothing left: never sent twice
    [row] = outbox(adb)
    assert (row.state, row.attempts, row.last_error) == ("sent", 2, "")
    assert len(hook.bodies) == 2
    body = hook.bodies[-1]
    assert body["type"] == "application/json"
    payload = body["json"]
    assert payload["text"].startswith("heron HIGH alert #") and "bash -i spawned by nginx" in payload["text"]
    assert payload["blocks"][0]["type"] == "header"
    assert payload["heron"]["alert"]["rule"] == "Shell spawned by a server process"
    assert payload["heron"]["event"] == "created" and payload["heron"]["alert"]["pid"] == 7
    assert notifier.stats == {"sent": 1, "retried": 1, "failed": 0, "lost": 0}


def test_gives_up_after_max_attempts(adb: Database) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    add_channel(adb, "dead", "webhook", {"url": f"http://127.0.0.1:{port}/"})
    queue(adb, make_alert(adb))
    notifier = Notifier(adb, backoff_s=0.0, max_attempts=3)
    for _ in range(3):
        assert notifier.run_once() == 1
    assert notifier.run_once() == 0
    [row] = outbox(adb)
    assert (row.state, row.attempts) == ("failed", 3)
    assert "refused" in row.last_error.lower()
    assert notifier.stats["failed"] == 1


def test_leased_rows_are_not_claimed_twice(adb: Database, hook: Hook) -> None:
    add_channel(adb, "slack", "webhook", {"url": hook.url})
    for _ in range(3):
        queue(adb, make_alert(adb))
    first, second = Notifier(adb, batch=2), Notifier(adb, batch=2)
    a = first.claim(time.time_ns())
    b = second.claim(time.time_ns())
    assert len(a) == 2 and len(b) == 1 and not {x.id for x in a} & {x.id for x in b}
    assert second.claim(time.time_ns()) == []
    # an expired lease (a server died mid-send) makes the row due again
    assert len(Notifier(adb).claim(time.time_ns() + 120 * 10**9)) == 3


def test_severity_threshold(adb: Database) -> None:
    add_channel(adb, "pager", "webhook", {"url": "https://example.invalid/"}, min_severity="critical")
    assert queue(adb, make_alert(adb, "high")) == 0
    assert queue(adb, make_alert(adb, "critical")) == 1


def test_syslog_over_udp(adb: Database) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        add_channel(adb, "siem", "syslog", {"url": f"udp://127.0.0.1:{rx.getsockname()[1]}", "facility": "local3"})
        queue(adb, make_alert(adb, "critical"))
        assert Notifier(adb).run_once() == 1
        data, _ = rx.recvfrom(65536)
    line = data.decode()
    # <PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD] BOM MSG ; local3 = 19, critical = 2 -> 19*8+2
    m = re.match(r"<154>1 (\S+Z) (\S+) heron (\d+) alert\.created \[heron@32473 ([^]]*)\] \ufeff(.*)\Z", line)
    assert m is not None, line
    assert 'host="web-1"' in m.group(4) and 'rule="Shell spawned by a server process"' in m.group(4)
    assert m.group(5).startswith("heron CRITICAL alert #")
    [row] = outbox(adb)
    assert row.state == "sent"


def test_syslog_over_tcp_octet_counted(adb: Database) -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        srv.settimeout(5)
        add_channel(adb, "siem", "syslog", {"url": f"tcp://127.0.0.1:{srv.getsockname()[1]}"})
        queue(adb, make_alert(adb))
        got: list[bytes] = []

        def accept() -> None:
            conn, _ = srv.accept()
            with conn:
                while chunk := conn.recv(65536):
                    got.append(chunk)
        t = threading.Thread(target=accept)
        t.start()
        assert Notifier(adb).run_once() == 1
        t.join(5)
    data = b"".join(got)
    length, _, msg = data.partition(b" ")
    assert int(length) == len(msg) and msg.startswith(b"<35>1 ")  # auth (4) * 8 + err (3)


@pytest.mark.parametrize("kind,config,reason", [
    ("webhook", {"url": "file:///etc/passwd"}, "http"),
    ("webhook", {"url": "gopher://x/"}, "http"),
    ("webhook", {}, "url"),
    ("syslog", {"url": "http://x:514"}, "udp://"),
    ("syslog", {"url": "udp://x:99999"}, "range"),
    ("syslog", {"url": "udp://x:514", "facility": "nope"}, "facility"),
    ("pager", {"url": "https://x/"}, "kind"),
])
def test_channel_validation(kind: str, config: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        channels.validate("c", kind, config, "high")


class RawServer:
    """A TCP server on 127.0.0.1 that reads a request's head then runs ``answer(conn)``: not HTTP."""

    def __init__(self, answer: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.answer = answer
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                conn.recv(65536)
                self.answer(conn, self.stop)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.sock.close()
        self.thread.join(5)


def test_garbage_answer_is_retried_then_failed_and_others_are_sent(adb: Database, hook: Hook) -> None:
    garbage = RawServer(lambda conn, stop: conn.sendall(b"\x00\x01 this is not HTTP\r\n\r\n"))
    try:
        add_channel(adb, "broken", "webhook", {"url": garbage.url})
        add_channel(adb, "slack", "webhook", {"url": hook.url})
        hook.statuses = []
        queue(adb, make_alert(adb))
        notifier = Notifier(adb, backoff_s=0.0, max_attempts=2)
        assert notifier.run_once() == 2  # http.client.BadStatusLine (not an OSError) settles its row only
        rows = {r.channel_id: r for r in outbox(adb)}
        states = sorted((r.state, r.attempts, r.claimed_until) for r in rows.values())
        assert states == [("pending", 1, None), ("sent", 1, None)]
        assert notifier.run_once() == 1
        broken = [r for r in outbox(adb) if r.state != "sent"]
        assert [(r.state, r.attempts) for r in broken] == [("failed", 2)]
        assert "BadStatusLine" in broken[0].last_error
        assert notifier.run_once() == 0
        assert len(hook.bodies) == 1
    finally:
        garbage.close()


def test_slow_drip_answer_is_abandoned_at_the_deadline(adb: Database) -> None:
    def drip(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        while not stop.wait(0.1):  # a header byte every 0.1 s: each read is quick, the answer never ends
            conn.sendall(b"X")
    slow = RawServer(drip)
    try:
        add_channel(adb, "slow", "webhook", {"url": slow.url})
        queue(adb, make_alert(adb))
        notifier = Notifier(adb, backoff_s=60.0, timeout_s=5.0, deadline_s=1.0)
        started = time.monotonic()
        assert notifier.run_once() == 1
        elapsed = time.monotonic() - started
        assert 0.9 <= elapsed < 4.0, elapsed
        [row] = outbox(adb)
        assert (row.state, row.attempts, row.claimed_until) == ("pending", 1, None)
        assert "within 1 s" in row.last_error
    finally:
        slow.close()


def test_lease_is_renewed_per_send_and_a_lost_row_is_not_sent(adb: Database, hook: Hook) -> None:
    add_channel(adb, "slack", "webhook", {"url": hook.url})
    queue(adb, make_alert(adb))
    first = Notifier(adb, batch=5, deadline_s=2.0)
    assert first.lease_s >= 5 * (2.0 + 20.0)  # a batch of sends at their worst fits in the claim's lease
    [c] = first.claim(time.time_ns())
    # the lease ran out (say DNS hung) and another server took the row: the first must not send it
    [taken] = Notifier(adb).claim(c.lease + 1)
    assert first.renew(c, time.time_ns()) is None
    mine = Notifier(adb).renew(taken, time.time_ns())
    assert mine is not None and mine.lease != taken.lease
