from __future__ import annotations

import select
import time

import pytest

import dnsserver
from heron.agent.linux.dns import Answer, Message, parse_message
from heron.agent.linux.packet import CapturedDns, DnsCapture
from heron.agent.sources.network.aggregate import FlowAggregator, SocketSample
from heron.agent.sources.network.dns_track import DnsTracker, NameCache
from heron.schema.events import DnsQuery, ProcessRef, from_json, to_json

S = 1_000_000_000
T0 = 1_700_000_000 * S
CLIENT = "127.0.0.1:40000"
SERVER = "127.0.0.53:53"


def query(name: str, qtype: str = "A", qid: int = 1) -> Message:
    return Message(qid, False, "NOERROR", [(name, qtype)], [], False)


def response(name: str, answers: list[Answer], qtype: str = "A", qid: int = 1, rcode: str = "NOERROR",
             truncated: bool = False) -> Message:
    return Message(qid, True, rcode, [(name, qtype)], answers, truncated)


CHAIN = [
    Answer("www.example.com", "CNAME", 300, "edge.example.net"),
    Answer("edge.example.net", "CNAME", 120, "cdn.example.net"),
    Answer("cdn.example.net", "A", 3600, "192.0.2.10"),
    Answer("cdn.example.net", "AAAA", 3600, "2001:db8::10"),
]


# NameCache


def test_cname_chain_maps_addresses_to_the_name_asked() -> None:
    cache = NameCache()
    assert cache.record(response("www.example.com", CHAIN), pid=10, now_ns=T0) == 2
    assert cache.lookup("192.0.2.10", 10, T0) == "www.example.com"
    assert cache.lookup("2001:db8::10", 99, T0) == "www.example.com"  # host-wide for other processes
    # The chain's smallest TTL (120 s) bounds the entry, not the A record's 3600 s.
    assert cache.lookup("192.0.2.10", 10, T0 + 119 * S) == "www.example.com"
    assert cache.lookup("192.0.2.10", 10, T0 + 121 * S) is None


def test_address_outside_any_chain_keeps_its_own_name() -> None:
    cache = NameCache()
    msg = response("a.example", [Answer("a.example", "A", 300, "192.0.2.1"),
                                 Answer("b.example", "A", 300, "192.0.2.2")])
    cache.record(msg, pid=0, now_ns=T0)
    assert cache.lookup("192.0.2.1", 5, T0) == "a.example"
    assert cache.lookup("192.0.2.2", 5, T0) == "b.example"


def test_short_ttl_still_labels_the_next_connection() -> None:
    cache = NameCache(min_ttl_s=60)
    cache.record(response("fast.example", [Answer("fast.example", "A", 1, "192.0.2.3")]), pid=1, now_ns=T0)
    assert cache.lookup("192.0.2.3", 1, T0 + 30 * S) == "fast.example"
    assert cache.lookup("192.0.2.3", 1, T0 + 61 * S) is None
    assert len(cache) == 0  # the expired entry went on lookup


def test_per_process_name_wins_over_host_wide() -> None:
    cache = NameCache()
    cache.record(response("one.example", [Answer("one.example", "A", 300, "192.0.2.7")]), pid=1, now_ns=T0)
    cache.record(response("two.example", [Answer("two.example", "A", 300, "192.0.2.7")]), pid=2, now_ns=T0 + 1)
    assert cache.lookup("192.0.2.7", 1, T0 + 2) == "one.example"
    assert cache.lookup("192.0.2.7", 2, T0 + 2) == "two.example"
    assert cache.lookup("192.0.2.7", 3, T0 + 2) == "two.example"  # the host's latest
    assert cache.lookup("192.0.2.8", 1, T0 + 2) is None


def test_lru_bound() -> None:
    cache = NameCache(max_entries=3)
    for i in range(3):
        cache.record(response(f"h{i}.example", [Answer(f"h{i}.example", "A", 300, f"192.0.2.{i}")]), 0, T0)
    assert cache.lookup("192.0.2.0", 0, T0) == "h0.example"  # now the most recently used
    cache.record(response("h3.example", [Answer("h3.example", "A", 300, "192.0.2.3")]), 0, T0)
    assert len(cache) == 3 and cache.evicted == 1
    assert cache.lookup("192.0.2.1", 0, T0) is None  # least recently used went first
    assert cache.lookup("192.0.2.0", 0, T0) == "h0.example"


def test_lookup_defaults_to_now_and_labels_flows() -> None:
    cache = NameCache()
    cache.record(response("api.example", [Answer("api.example", "A", 300, "192.0.2.50")]), pid=42,
                 now_ns=time.time_ns())
    assert cache.lookup("192.0.2.50", 42) == "api.example"
    agg = FlowAggregator(60, names=cache.lookup, source="network.test")
    agg.observe(SocketSample(1, 42, "tcp", "out", "10.0.0.1", 5555, "192.0.2.50", 443, bytes_out=10), time.time_ns())
    (flow,) = agg.flush(time.time_ns())
    assert flow.domain == "api.example"


# DnsTracker


def tracker(**kw: float) -> tuple[DnsTracker, NameCache]:
    names = NameCache()
    return DnsTracker(names, interval_s=60, source="network.test", **kw), names  # type: ignore[arg-type]


def ask(t: DnsTracker, msg: Message, now: int, pid: int = 100, key: str = "k-100", client: str = CLIENT,
        protocol: str = "udp") -> None:
    t.observe(msg, pid=pid, key=key, uid=1000, server=SERVER, protocol=protocol, client=client, now_ns=now)


def test_query_and_response_pair() -> None:
    t, names = tracker()
    ask(t, query("www.example.com"), T0)
    # The response is attributed to the asker even when the caller cannot name its owner.
    ask(t, response("www.example.com", CHAIN), T0 + 2_000_000, pid=0, key="")
    (ev,) = t.flush(T0 + S)
    assert ev == DnsQuery(ts=T0, source="network.test", process=ProcessRef(pid=100, key="k-100", uid=1000),
                          query="www.example.com", qtype="A", rcode="NOERROR",
                          answers=["edge.example.net", "cdn.example.net", "192.0.2.10", "2001:db8::10"], ttl=120,
                          server=SERVER, protocol="udp", count=1, first_ts=T0, last_ts=T0)
    assert from_json(to_json(ev)) == ev
    assert names.lookup("192.0.2.10", 100, T0) == "www.example.com"
    assert t.pending == 0 and t.flush(T0 + 2 * S) == []


def test_responses_pair_by_client_server_id_and_question() -> None:
    t, _ = tracker()
    ask(t, query("a.example", qid=1), T0, pid=1, key="p1", client="127.0.0.1:1111")
    ask(t, query("a.example", qid=1), T0, pid=2, key="p2", client="127.0.0.1:2222")
    ask(t, response("a.example", [Answer("a.example", "A", 60, "192.0.2.2")], qid=1), T0 + 1, pid=0,
        client="127.0.0.1:2222")
    ask(t, response("a.example", [], qid=1, rcode="SERVFAIL"), T0 + 2, pid=0, client="127.0.0.1:1111")
    events = {ev.process.pid: ev for ev in t.flush(T0 + S) if ev.process}
    assert events[1].rcode == "SERVFAIL" and events[2].answers == ["192.0.2.2"]
    assert t.unmatched == 0


def test_unanswered_question_times_out() -> None:
    t, _ = tracker(timeout_s=5)
    ask(t, query("slow.example", "AAAA"), T0)
    assert t.flush(T0 + 4 * S) == [] and t.pending == 1
    ask(t, query("slow.example", "AAAA", qid=2), T0 + 5 * S)
    (ev,) = t.flush(T0 + 6 * S)
    assert (ev.query, ev.qtype, ev.rcode, ev.answers, ev.ts, ev.count) == ("slow.example", "AAAA", "TIMEOUT", [],
                                                                           T0, 1)
    assert t.timeouts == 1 and t.pending == 1
    # A response that arrives after its question timed out is reported as unmatched, not lost.
    ask(t, response("slow.example", [], "AAAA"), T0 + 7 * S)
    (late,) = t.flush(T0 + 8 * S)
    assert late.rcode == "NOERROR" and t.unmatched == 1


def test_identical_outcomes_fold_per_interval() -> None:
    t, _ = tracker()
    answers = [Answer("x.example", "A", 30, "192.0.2.1"), Answer("x.example", "A", 30, "192.0.2.2")]
    for i in range(5):
        ask(t, query("x.example", qid=i), T0 + i * S)
        rotated = answers if i % 2 else answers[::-1]  # round-robin order does not split records
        ask(t, response("x.example", [Answer(a.name, a.rtype, a.ttl - i, a.data) for a in rotated], qid=i),
            T0 + i * S + 1000)
    ask(t, query("x.example", qid=9), T0 + 6 * S, pid=200, key="k-200")
    ask(t, response("x.example", [], qid=9, rcode="NXDOMAIN"), T0 + 6 * S + 1, pid=200, key="k-200")
    ask(t, query("x.example", qid=10), T0 + 7 * S, protocol="tcp")
    ask(t, response("x.example", answers, qid=10), T0 + 7 * S + 1, protocol="tcp")
    events = sorted(t.flush(T0 + 10 * S), key=lambda e: e.first_ts)
    assert [(e.count, e.rcode, e.protocol) for e in events] == [(5, "NOERROR", "udp"), (1, "NXDOMAIN", "udp"),
                                                                 (1, "NOERROR", "tcp")]
    folded = events[0]
    assert (folded.first_ts, folded.last_ts, folded.ttl) == (T0, T0 + 4 * S, 26)
    assert events[1].process == ProcessRef(pid=200, key="k-200", uid=1000)
    assert t.flush(T0 + 20 * S) == []


def test_response_without_query_is_reported_but_names_nothing() -> None:
    t, names = tracker()
    ask(t, response("mid.example", [Answer("mid.example", "A", 300, "192.0.2.9")]), T0, pid=321, key="")
    ask(t, response("nobody.example", [Answer("nobody.example", "A", 300, "192.0.2.10")], qid=2), T0, pid=0, key="")
    events = {e.query: e for e in t.flush(T0 + S)}
    assert events["mid.example"].process == ProcessRef(pid=321, key="", uid=1000)
    assert events["nobody.example"].process is None
    assert t.unmatched == 2
    # An unsolicited answer (a forged packet) must not label flows, for that process or the host.
    assert names.lookup("192.0.2.9", 321, T0) is None
    assert names.lookup("192.0.2.10", 7, T0) is None and len(names) == 0


def test_forged_answer_does_not_override_a_real_one() -> None:
    t, names = tracker()
    ask(t, query("bank.example"), T0)
    ask(t, response("bank.example", [Answer("bank.example", "A", 300, "192.0.2.80")]), T0 + 1)
    # A second "answer" with another id, to a question nobody asked, claims the same address.
    ask(t, response("evil.example", [Answer("evil.example", "A", 300, "192.0.2.80")], qid=7), T0 + 2)
    assert names.lookup("192.0.2.80", 100, T0 + 3) == "bank.example"
    assert names.lookup("192.0.2.80", 0, T0 + 3) == "bank.example"


def test_truncated_response_waits_for_the_tcp_retry() -> None:
    t, _ = tracker()
    ask(t, query("big.example", "TXT"), T0)
    ask(t, response("big.example", [], "TXT", truncated=True), T0 + 1)
    ask(t, query("big.example", "TXT"), T0 + 2, client="127.0.0.1:40001", protocol="tcp")
    ask(t, response("big.example", [Answer("big.example", "TXT", 60, "v=1")], "TXT"), T0 + 3,
        client="127.0.0.1:40001", protocol="tcp")
    (ev,) = t.flush(T0 + 10 * S)
    assert (ev.protocol, ev.answers) == ("tcp", ["v=1"]) and t.truncated == 1 and t.timeouts == 0


def test_copies_of_one_message_count_once() -> None:
    t, _ = tracker()
    for _ in range(2):
        ask(t, query("dup.example"), T0)
    for _ in range(2):
        ask(t, response("dup.example", []), T0 + 1)
    (ev,) = t.flush(T0 + S)
    assert ev.count == 1 and t.duplicates == 2 and t.unmatched == 0


def test_memory_is_bounded() -> None:
    names = NameCache()
    t = DnsTracker(names, 60, "network.test", max_pending=10, max_records=5)
    for i in range(20):
        ask(t, query(f"q{i}.example", qid=i), T0)
    assert t.pending == 10 and t.dropped == 10
    for i in range(10):
        ask(t, response(f"q{i}.example", [], qid=i, rcode="NXDOMAIN"), T0 + 1)
    assert len(t.flush(T0 + S)) == 5 and t.dropped == 15


def test_due_follows_the_interval() -> None:
    t, _ = tracker()
    assert not t.due(T0)
    assert not t.due(T0 + 59 * S)
    assert t.due(T0 + 60 * S)
    t.flush(T0 + 60 * S)
    assert not t.due(T0 + 61 * S)


@pytest.mark.privileged
def test_captured_loopback_dns_becomes_events() -> None:
    records = {"www.heron.test": [("CNAME", "cdn.heron.test")], "cdn.heron.test": [("A", "192.0.2.77")]}
    t, names = tracker()
    with dnsserver.DnsServer(records) as srv, DnsCapture([srv.port]) as cap:
        for tcp in (False, True):
            assert dnsserver.resolve("www.heron.test", "127.0.0.1", srv.port, tcp=tcp)[0] == "NOERROR"
        got: list[CapturedDns] = []
        deadline = time.monotonic() + 5
        while len(got) < 4 and time.monotonic() < deadline:
            select.select([cap], [], [], 0.05)
            got += cap.read(64)
    for c in got:
        msg = parse_message(c.payload)
        client, server = (f"{c.src}:{c.sport}", f"{c.dst}:{c.dport}")
        if msg.is_response:
            client, server = server, client
        t.observe(msg, pid=0, server=server, protocol=c.protocol, client=client, now_ns=c.ts_ns)
    events = sorted(t.flush(time.time_ns()), key=lambda e: e.protocol)
    assert [(e.protocol, e.query, e.answers, e.server, e.process) for e in events] == [
        (p, "www.heron.test", ["cdn.heron.test", "192.0.2.77"], f"127.0.0.1:{srv.port}", None) for p in ("tcp", "udp")]
    assert t.unmatched == 0 and t.pending == 0
    assert names.lookup("192.0.2.77", 1) == "www.heron.test"
