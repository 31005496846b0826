"""The running agent: sources -> enrich -> filter -> dedupe -> batch -> sinks.

Threads: one per source (it owns its kernel facility and emits lists of events), and one
pipeline thread that does everything after. Between them is a bounded queue: a source never
blocks on it; when it is full the batch is dropped and counted (``pipeline.dropped``) — the
kernel side keeps its own drop counters. On stop, sources drain what they already read, the
pipeline drains the queue and the dedupe window, writes a last health record and flushes sinks.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from heron import __version__
from heron.agent.config import AgentConfig
from heron.agent.health import Health, cpu_seconds, rss_bytes
from heron.agent.host import Host, detect_host
from heron.agent.sinks.base import Sink
from heron.agent.sources import ladder
from heron.agent.sources.base import Source, SourceContext, source_name
from heron.agent.transforms.dedupe import Deduper
from heron.agent.transforms.enrich import Enricher
from heron.agent.transforms.filter import ProcessFilter, kernel_excluded_comms
from heron.agent.transforms.process_table import ProcessTable
from heron.schema.events import AgentHealth, Event, ProcessExec

log = logging.getLogger("heron.agent")

# Process first: its snapshot fills the process table the other capabilities' events resolve against.
CAPABILITIES = ("process", "network", "file", "package")
SWEEP_INTERVAL_S = 30.0
# Between the sources and the pipeline: past this many events a source's batch is dropped and
# counted rather than letting memory grow (the kernel side keeps its own drop counters).
MAX_QUEUED_EVENTS = 200_000


@dataclass
class RunningSource:
    choice: ladder.Choice
    source: Source
    thread: threading.Thread
    failed: bool = False
    error: str = ""


@dataclass
class Pipeline:
    enrich: Enricher
    filter: ProcessFilter
    dedupe: Deduper
    out: list[Event] = field(default_factory=list)


class Agent:
    def __init__(self, config: AgentConfig, sinks: Sequence[Sink], host: Host | None = None,
                 health: Health | None = None, emit_snapshot: bool = True) -> None:
        self.config = config
        self.sinks = list(sinks)
        self.host = host or detect_host()
        self.health = health or Health()
        self.emit_snapshot = emit_snapshot
        self.queue: queue.Queue[Sequence[Event]] = queue.Queue()
        self._queued = 0  # events in the queue, bounded by MAX_QUEUED_EVENTS
        self._queued_lock = threading.Lock()
        self.stop_sources = threading.Event()
        self.stopped = threading.Event()
        self.running: dict[str, RunningSource] = {}
        self.table = ProcessTable(ancestors_max=config.process.ancestors_max)
        self.pipeline = self._build_pipeline(config)
        self._pipeline_thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- configuration ---------------------------------------------------------------------
    def _build_pipeline(self, config: AgentConfig) -> Pipeline:
        return Pipeline(
            enrich=Enricher(self.table, boot_id=self.host.boot_id, proc_root=self.host.proc_root),
            filter=ProcessFilter(config.filter, self.health.add),
            dedupe=Deduper(config.dedupe.window_s, config.dedupe.max_entries),
        )

    def reconfigure(self, config: AgentConfig) -> None:
        """Swap filters and dedupe settings without a gap (collector changes need a restart)."""
        with self._lock:
            held = self.pipeline.dedupe.release(time.time_ns(), everything=True)
            self.pipeline.out.extend(held)
            self.pipeline.filter = ProcessFilter(config.filter, self.health.add)
            self.pipeline.dedupe = Deduper(config.dedupe.window_s, config.dedupe.max_entries)
            self.config = config
        self.health.note("configuration reloaded")

    def options_for(self, capability: str) -> dict[str, object]:
        if capability == "process":
            return {
                "exclude_comm": kernel_excluded_comms(self.config.filter),
                "argv_max_bytes": self.config.process.argv_max_bytes,
                "poll_interval_s": self.config.process.poll_interval_s,
            }
        if capability == "network":
            return {"config": self.config.network}
        if capability == "file":
            return {"config": self.config.file, "state_dir": self.config.state_dir}
        if capability == "package":
            return {"config": self.config.package, "state_dir": self.config.state_dir}
        return {}

    # -- sources -----------------------------------------------------------------------------
    def _emit(self, events: Sequence[Event]) -> None:
        n = len(events)
        with self._queued_lock:
            if self._queued + n > MAX_QUEUED_EVENTS:
                self.health.add("pipeline.dropped", n)
                return
            self._queued += n
        self.queue.put_nowait(events)

    def _dequeued(self, batch: Sequence[Event]) -> None:
        with self._queued_lock:
            self._queued -= len(batch)

    def start(self) -> None:
        """Choose a mechanism per capability (raises if a pinned one cannot run) and start."""
        choices = {
            cap: ladder.choose(cap, self.host, self.config.collectors.get(cap)) for cap in CAPABILITIES
        }
        self._pipeline_thread = threading.Thread(target=self._pipeline_loop, name="heron-pipeline",
                                                 daemon=True)
        self._pipeline_thread.start()
        for cap, choice in choices.items():
            if choice.selected is None and choice.pinned:
                self.health.note(f"{cap} collection is off (configuration)")
                continue
            if choice.selected is None:
                reasons = "; ".join(f"{m}: {r.reason}" for m, r in choice.probes.items())
                self.health.note(f"no {cap} collector can run here ({reasons})")
                continue
            self._start_with_fallback(choice, choice.selected)

    def _start_with_fallback(self, choice: ladder.Choice, cls: type[Source]) -> None:
        """Start ``cls``; if it fails after passing its probe, go down the ladder (never when pinned)."""
        current: type[Source] | None = cls
        while current is not None:
            try:
                self._start_source(choice, current)
                return
            except Exception as e:
                if choice.pinned:
                    raise
                nxt = ladder.next_after(choice, current.mechanism)
                log.error("%s failed to start: %r", source_name(current), e)
                self.health.add(f"{source_name(current)}.failures")
                target = source_name(nxt) if nxt else "nothing"
                self.health.note(f"{source_name(current)} failed to start ({e!r}); falling back to {target}")
                current = nxt

    def _start_source(self, choice: ladder.Choice, cls: type[Source]) -> None:
        ctx = SourceContext(self.host, self.health, self._emit, self.options_for(choice.capability))
        src = cls(ctx)
        try:
            procs = src.snapshot()  # sources subscribe first, then read /proc: no gap
            with self._lock:
                self.pipeline.enrich.load_snapshot(procs)
        except BaseException:
            with contextlib.suppress(Exception):
                src.close()  # sockets, audit rules, BPF links: nothing left behind
            raise
        now = time.time_ns()
        if self.emit_snapshot:
            snap = [ProcessExec(ts=now, source="process.snapshot", process=p) for p in procs]
            self._emit(snap)
        th = threading.Thread(target=self._run_source, args=(choice, src), name=f"heron-{source_name(cls)}",
                              daemon=True)
        self.running[choice.capability] = RunningSource(choice, src, th)
        th.start()
        log.info("%s collector: %s", choice.capability, cls.mechanism)

    def _run_source(self, choice: ladder.Choice, src: Source) -> None:
        name = source_name(src)
        try:
            src.run(self.stop_sources)
        except Exception as e:
            log.exception("%s failed", name)
            self.health.add(f"{name}.failures")
            rs = self.running[choice.capability]
            rs.failed, rs.error = True, repr(e)
            nxt = ladder.next_after(choice, src.mechanism)
            if nxt is None or self.stop_sources.is_set():
                self.health.note(f"{name} failed ({e!r}); no collector left for {choice.capability}")
                return
            self.health.note(f"{name} failed ({e!r}); falling back to {source_name(nxt)}")
            try:
                self._start_with_fallback(choice, nxt)
            except Exception:
                log.exception("no fallback could start for %s", choice.capability)

    def collectors_in_use(self) -> dict[str, str]:
        return {cap: rs.source.mechanism for cap, rs in self.running.items() if not rs.failed}

    # -- pipeline ----------------------------------------------------------------------------
    def health_event(self) -> AgentHealth:
        for name in ("pipeline.queue_depth",):
            self.health.set(name, self.queue.qsize())
        self.health.set("process.table_size", len(self.table))
        return AgentHealth(
            ts=time.time_ns(),
            source="agent",
            agent_version=__version__,
            uptime_s=round(time.monotonic() - self.health.started, 3),
            collectors=self.collectors_in_use(),
            counters=self.health.snapshot(),
            cpu_s=round(cpu_seconds(), 3),
            rss_bytes=rss_bytes(),
            messages=self.health.take_messages(),
        )

    def _ship(self, events: list[Event]) -> None:
        for sink in self.sinks:
            try:
                sink.write(events)
                self.health.add(f"sink.{sink.name}.written", len(events))
            except Exception as e:  # one broken sink must not stop the others
                self.health.add(f"sink.{sink.name}.errors")
                log.error("sink %s failed: %r", sink.name, e)

    def _process(self, batch: Sequence[Event], now: int) -> None:
        p = self.pipeline
        self.health.add("pipeline.received", len(batch))
        ready = p.enrich(batch, now)
        kept = p.filter(ready)
        before = p.dedupe.folded
        p.out.extend(p.dedupe.push(kept, now))
        if p.dedupe.folded != before:
            self.health.add("dedupe.folded", p.dedupe.folded - before)

    def _release_held(self, now: int, everything: bool = False) -> None:
        """Network/file events the enricher held back for their process's exec."""
        p = self.pipeline
        if not p.enrich.held:
            return
        before = p.enrich.unresolved
        ready = p.enrich.release(now, everything)
        if p.enrich.unresolved != before:
            self.health.add("enrich.unresolved", p.enrich.unresolved - before)
        if ready:
            p.out.extend(p.dedupe.push(p.filter(ready), now))

    def _process_guarded(self, batch: Sequence[Event], now: int) -> None:
        """A bug or a hostile record in one batch costs that batch (counted), never the pipeline."""
        try:
            self._process(batch, now)
        except Exception:
            log.exception("pipeline failed on a batch of %d events", len(batch))
            self.health.add("pipeline.errors")
            self.health.add("pipeline.dropped", len(batch))

    def _pipeline_loop(self) -> None:
        cfg = self.config
        last_ship = time.monotonic()
        next_health = time.monotonic()
        next_sweep = time.monotonic() + SWEEP_INTERVAL_S
        while True:
            # Wake often only while something waits for a deadline (a folded repeat, batch delay);
            # an idle agent wakes once a second. stop() wakes it with an empty batch.
            busy = bool(self.pipeline.out) or self.pipeline.dedupe.pending > 0 or bool(self.pipeline.enrich.held)
            try:
                batch: Sequence[Event] | None = self.queue.get(timeout=0.1 if busy else 1.0)
            except queue.Empty:
                batch = None
            if batch:
                self._dequeued(batch)
            mono = time.monotonic()
            with self._lock:
                now = time.time_ns()
                if batch:
                    self._process_guarded(batch, now)
                    # Drain what is already queued before shipping: bigger batches, fewer writes.
                    while len(self.pipeline.out) < cfg.batch_max_events:
                        try:
                            more = self.queue.get_nowait()
                        except queue.Empty:
                            break
                        self._dequeued(more)
                        self._process_guarded(more, now)
                else:
                    self.pipeline.out.extend(self.pipeline.dedupe.release(now))
                finishing = not batch and self.stop_sources.is_set() and self._sources_done()
                try:
                    self._release_held(now, everything=finishing)
                except Exception:
                    log.exception("releasing held events failed")
                    self.health.add("pipeline.errors")
                    self.pipeline.enrich.held.clear()
                if finishing:
                    self.pipeline.out.extend(self.pipeline.dedupe.release(now, everything=True))
                if mono >= next_health or finishing:
                    next_health = mono + cfg.health_interval_s
                    self.pipeline.out.append(self.health_event())
                if mono >= next_sweep:
                    next_sweep = mono + SWEEP_INTERVAL_S
                    try:
                        self.health.add("process.table_swept", self.table.sweep(self.host.proc_root))
                    except Exception:
                        log.exception("process table sweep failed")
                        self.health.add("pipeline.errors")
                out = self.pipeline.out
                if out and (len(out) >= cfg.batch_max_events or mono - last_ship >= cfg.batch_max_delay_s
                            or finishing):
                    self.pipeline.out = []
                    self._ship(out)
                    last_ship = mono
            if finishing:
                break

    def _sources_done(self) -> bool:
        return all(not rs.thread.is_alive() for rs in self.running.values()) and self.queue.empty()

    def stop(self, timeout: float = 30.0) -> None:
        """Drain everything observed so far into the sinks, then flush and close them."""
        self.stop_sources.set()
        deadline = time.monotonic() + timeout
        for rs in list(self.running.values()):
            rs.thread.join(max(0.1, deadline - time.monotonic()))
        self.queue.put_nowait(())  # wake the pipeline: the sources are done
        if self._pipeline_thread is not None:
            self._pipeline_thread.join(max(0.1, deadline - time.monotonic()))
        for sink in self.sinks:
            try:
                sink.flush()
                sink.close()
            except Exception as e:
                log.error("closing sink %s: %r", sink.name, e)
        self.stopped.set()
