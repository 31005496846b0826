"""DNS messages -> ``net.dns`` events, and the IP -> name cache that labels flows.

Both network collectors feed parsed messages (``heron.agent.linux.dns.Message``) here with what
they know about the asking socket. ``DnsTracker`` pairs a query with its response by (client
addr:port, server addr:port, message id, question), folds identical outcomes of one process in
an interval into one record (count, first_ts, last_ts), reports questions left unanswered for
``timeout_s`` with rcode "TIMEOUT", and still reports a response whose query it never saw
(agent started mid-flight, or the query was missed), attributed to the pid given with the
response; such a response does not teach ``NameCache`` (an unsolicited answer must not label
flows). Truncated (TC) UDP responses are not reported: the client retries over TCP, and that
answer is. A copy of a message seen twice (a bridge and its port both captured) is counted in
``duplicates`` and otherwise ignored. Memory is bounded: past ``max_pending`` unanswered queries,
or ``max_records`` records in one interval, new ones are counted in ``dropped``. A record's
``ts`` and ``first_ts`` are when its (first) question was seen; messages without a question
(some FORMERR answers) carry nothing to report and are only counted. Answer order does not split
records (round-robin DNS), the TTL reported is the smallest seen.

``NameCache`` maps an address to the name that was *asked* for it (following CNAME chains, so
the address of ``cdn.example.net`` reached from ``www.example.com`` is labelled
``www.example.com``), per process first, then host-wide. Entries live for the smallest TTL on
the chain, but at least ``min_ttl_s`` (a 5-second TTL must still label the connection that
follows) and at most ``max_ttl_s``; each table keeps at most ``max_entries`` (least recently used
go first). It is thread-safe: the DNS path writes while the flow aggregator reads.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TypeVar

from heron.agent.linux.dns import Message
from heron.agent.sources.network.aggregate import normalize_addr
from heron.schema.events import DnsQuery, ProcessRef

MAX_CHAIN = 16  # CNAME hops followed from a question
MAX_EVENT_ANSWERS = 256  # the schema's bound on DnsQuery.answers

PendingKey = tuple[str, str, int, str, str]  # client, server, id, name, qtype
FoldKey = tuple[str, int, str, str, str, tuple[str, ...], str, str]
_K = TypeVar("_K", str, tuple[int, str])


class NameCache:
    def __init__(self, max_entries: int = 65_536, min_ttl_s: int = 60, max_ttl_s: int = 86_400) -> None:
        self.max_entries = max_entries
        self.min_ttl_ns = min_ttl_s * 1_000_000_000
        self.max_ttl_ns = max_ttl_s * 1_000_000_000
        self._host: OrderedDict[str, tuple[str, int]] = OrderedDict()  # addr -> (name, expires ns)
        self._proc: OrderedDict[tuple[int, str], tuple[str, int]] = OrderedDict()  # (pid, addr) -> ...
        self._lock = threading.Lock()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._host)

    def record(self, msg: Message, pid: int, now_ns: int) -> int:
        """Remember the addresses in a response under the names asked; returns how many."""
        targets: dict[str, tuple[str, int]] = {}  # CNAME owner -> (target, ttl)
        for a in msg.answers:
            if a.rtype == "CNAME":
                targets.setdefault(a.name, (a.data, a.ttl))
        # Every name reachable from a question, with the smallest TTL on the way there.
        reach: dict[str, tuple[str, int]] = {}  # name -> (question name, ttl so far)
        for qname, _qtype in msg.questions:
            name, ttl = qname, 1 << 31
            for _ in range(MAX_CHAIN + 1):
                reach.setdefault(name, (qname, ttl))
                hop = targets.get(name)
                if hop is None:
                    break
                name, ttl = hop[0], min(ttl, hop[1])
        entries: list[tuple[str, str, int]] = []
        for a in msg.answers:
            if a.rtype != "A" and a.rtype != "AAAA":
                continue
            asked, chain_ttl = reach.get(a.name, (a.name, 1 << 31))
            ttl_ns = min(max(min(chain_ttl, a.ttl) * 1_000_000_000, self.min_ttl_ns), self.max_ttl_ns)
            addr = a.data if a.rtype == "A" else normalize_addr(a.data)
            entries.append((addr, asked, now_ns + ttl_ns))
        if not entries:
            return 0
        with self._lock:
            for addr, name, expires in entries:
                self._put(self._host, addr, (name, expires))
                if pid > 0:
                    self._put(self._proc, (pid, addr), (name, expires))
        return len(entries)

    def _put(self, table: OrderedDict[_K, tuple[str, int]], key: _K, value: tuple[str, int]) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self.max_entries:
            table.popitem(last=False)
            self.evicted += 1

    def lookup(self, addr: str, pid: int, now_ns: int | None = None) -> str | None:
        """The name ``pid`` resolved to ``addr`` if it did, else the one this host last resolved."""
        now = time.time_ns() if now_ns is None else now_ns
        with self._lock:
            if pid > 0:
                hit = self._proc.get((pid, addr))
                if hit is not None:
                    if hit[1] > now:
                        self._proc.move_to_end((pid, addr))
                        return hit[0]
                    del self._proc[(pid, addr)]
            hit = self._host.get(addr)
            if hit is not None:
                if hit[1] > now:
                    self._host.move_to_end(addr)
                    return hit[0]
                del self._host[addr]
        return None


@dataclass(slots=True)
class _Pending:
    pid: int
    key: str
    uid: int
    protocol: str
    ts_ns: int


@dataclass(slots=True)
class _Fold:
    pid: int
    key: str
    uid: int
    answers: list[str]
    ttl: int
    count: int
    first_ns: int
    last_ns: int


class DnsTracker:
    def __init__(self, names: NameCache, interval_s: float, source: str, timeout_s: float = 5.0,
                 max_pending: int = 16_384, max_records: int = 16_384) -> None:
        self.names = names
        self.interval_ns = int(interval_s * 1e9)
        self.source = source
        self.timeout_ns = int(timeout_s * 1e9)
        self.max_pending = max_pending
        self.max_records = max_records
        self._pending: dict[PendingKey, _Pending] = {}  # insertion order = query time order
        self._answered: OrderedDict[PendingKey, int] = OrderedDict()  # recently paired, for duplicates
        self._folds: dict[FoldKey, _Fold] = {}
        self._next_flush_ns = 0
        # Counters (the caller reports them as health counters).
        self.queries = 0
        self.responses = 0
        self.unmatched = 0  # responses whose query was not seen
        self.timeouts = 0
        self.truncated = 0  # TC responses (retried over TCP, not reported)
        self.duplicates = 0
        self.dropped = 0  # queries or records past the bounds

    def observe(self, msg: Message, *, pid: int, key: str = "", uid: int = -1, server: str, protocol: str,
                client: str, now_ns: int) -> None:
        """One message between ``client`` (the asking socket, addr:port) and ``server``."""
        if not msg.is_response:
            self.queries += 1
            for qname, qtype in msg.questions:
                pk = (client, server, msg.id, qname, qtype)
                if pk in self._pending:
                    self.duplicates += 1
                elif len(self._pending) >= self.max_pending:
                    self.dropped += 1
                else:
                    self._pending[pk] = _Pending(pid, key, uid, protocol, now_ns)
            return
        self.responses += 1
        for qname, qtype in msg.questions:
            pk = (client, server, msg.id, qname, qtype)
            asked = self._pending.pop(pk, None)
            matched = asked is not None
            if asked is None:
                if pk in self._answered:
                    self.duplicates += 1
                    continue
                self.unmatched += 1
                asked = _Pending(pid, key, uid, protocol, now_ns)
            self._remember_answered(pk, now_ns)
            if asked.pid <= 0 and pid > 0:  # the query's owner was not known; the response's is
                asked.pid, asked.key, asked.uid = pid, key, uid
            # Only an answer to a question seen asked names addresses: anyone who can put a
            # packet on the wire can send an unsolicited "response".
            if matched and msg.rcode == "NOERROR" and msg.answers:
                self.names.record(msg, asked.pid, now_ns)
            if msg.truncated:
                self.truncated += 1
                continue
            answers = [a.data for a in msg.answers[:MAX_EVENT_ANSWERS]]
            ttl = min((a.ttl for a in msg.answers), default=0)
            self._fold(asked, qname, qtype, msg.rcode, answers, ttl, server, protocol, asked.ts_ns)

    def _remember_answered(self, pk: PendingKey, now_ns: int) -> None:
        self._answered[pk] = now_ns
        self._answered.move_to_end(pk)
        if len(self._answered) > self.max_pending:
            self._answered.popitem(last=False)

    def _fold(self, asked: _Pending, qname: str, qtype: str, rcode: str, answers: list[str], ttl: int,
              server: str, protocol: str, ts_ns: int) -> None:
        fk = (asked.key or f"pid:{asked.pid}", asked.pid, qname, qtype, rcode, tuple(sorted(answers)), server,
              protocol)
        fold = self._folds.get(fk)
        if fold is None:
            if len(self._folds) >= self.max_records:
                self.dropped += 1
                return
            self._folds[fk] = _Fold(asked.pid, asked.key, asked.uid, answers, ttl, 1, ts_ns, ts_ns)
            return
        fold.count += 1
        fold.ttl = min(fold.ttl, ttl)
        fold.first_ns = min(fold.first_ns, ts_ns)
        fold.last_ns = max(fold.last_ns, ts_ns)

    def due(self, now_ns: int) -> bool:
        if self._next_flush_ns == 0:
            self._next_flush_ns = now_ns + self.interval_ns
        return now_ns >= self._next_flush_ns

    def expire(self, now_ns: int) -> None:
        """Questions unanswered for timeout_s become TIMEOUT records; old pairings are forgotten."""
        cutoff = now_ns - self.timeout_ns
        expired: list[PendingKey] = []
        for pk, p in self._pending.items():
            if p.ts_ns > cutoff:
                break
            expired.append(pk)
        for pk in expired:
            p = self._pending.pop(pk)
            self.timeouts += 1
            _client, server, _id, qname, qtype = pk
            self._fold(p, qname, qtype, "TIMEOUT", [], 0, server, p.protocol, p.ts_ns)
        while self._answered and next(iter(self._answered.values())) <= cutoff:
            self._answered.popitem(last=False)

    def flush(self, now_ns: int) -> list[DnsQuery]:
        """Every record of the interval (timeouts included); the next interval starts."""
        self.expire(now_ns)
        self._next_flush_ns = now_ns + self.interval_ns
        out: list[DnsQuery] = []
        for fk, f in self._folds.items():
            _who, pid, qname, qtype, rcode, _sorted, server, protocol = fk
            out.append(DnsQuery(
                ts=f.first_ns, source=self.source,
                process=ProcessRef(pid=pid, key=f.key, uid=f.uid) if pid > 0 else None,
                query=qname, qtype=qtype, rcode=rcode, answers=f.answers, ttl=f.ttl, server=server,
                protocol=protocol, count=f.count, first_ts=f.first_ns, last_ts=f.last_ns,
            ))
        self._folds = {}
        return out

    @property
    def pending(self) -> int:
        return len(self._pending)
