"""Browser-test helpers: the real platform on a loopback port with an enrolled agent and a batch of
realistic events, Debian's chromium driven by Playwright, and a stdlib PNG decoder for screenshot checks.

Fixtures (import them into a test module by name): ``console`` (a fresh platform per test),
``chromium`` (one headless browser per test session) and ``page`` (a fresh browser context per test, so
sessionStorage starts empty). Without playwright or chromium the fixtures skip, saying which is missing;
``scripts/bootstrap.sh --test`` installs both. Playwright never downloads a browser here: it is pointed at
the system chromium with ``executable_path``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import zstandard

from heron.platform.server import ServerHandle, start_in_thread
from heron.platform.storage.db import Database
from heron.schema.events import (
    AgentHealth,
    Ancestor,
    DnsQuery,
    Event,
    FileChange,
    FileMeta,
    NetFlow,
    NetListen,
    Process,
    ProcessExec,
    ProcessExit,
    ProcessRef,
    encode_events,
    process_key,
)
from heron.vuln.db import AdvisoryDB, vulndb_path

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

BOOT_ID = "0123456789abcdef0123456789abcdef"
HOSTNAME = "web-1"
COLLECTORS = {"process": "ebpf", "network": "ebpf", "file": "fanotify", "package": "procfs"}
_batch_ids = itertools.count(1)


def chromium_path() -> str | None:
    """Debian's chromium (HERON_CHROMIUM overrides), or None."""
    override = os.environ.get("HERON_CHROMIUM")
    if override:
        return override if os.access(override, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


# -- the platform ---------------------------------------------------------------------------------

def _key(pid: int) -> str:
    return process_key(BOOT_ID, pid, 1000 + pid)


def _ref(pid: int, exe: str, user: str = "root", uid: int = 0) -> ProcessRef:
    # What the agent's enricher fills in from its process table.
    return ProcessRef(key=_key(pid), pid=pid, exe=exe, comm=Path(exe).name, uid=uid, user=user)


def exec_event(pid: int, exe: str, argv: list[str], ts: int | None = None) -> ProcessExec:
    return ProcessExec(ts=ts or time.time_ns(), source="process.ebpf",
                       process=Process(key=_key(pid), pid=pid, exe=exe, argv=argv, uid=0, user="root",
                                       start_ticks=1000 + pid))


def shell_from_web_server(now: int) -> list[Event]:
    """nginx runs ``bash -i`` which connects out: the default rules flag a shell spawned by a server
    process (and a shell's network connection), so the pipeline raises an alert with a tree and a graph."""
    s = 10**9
    nginx = exec_event(800, "/usr/sbin/nginx", ["nginx", "-g", "daemon off;"], ts=now - 30 * s)
    shell = exec_event(6666, "/usr/bin/bash", ["bash", "-i"], ts=now - 20 * s)
    shell.process.ppid = 800
    shell.process.parent_key = _key(800)
    shell.process.ancestors = [Ancestor(800, _key(800), "/usr/sbin/nginx")]
    shell.process.user = "www-data"
    child = exec_event(6667, "/usr/bin/id", ["id"], ts=now - 19 * s)
    child.process.ppid = 6666
    child.process.parent_key = _key(6666)
    child.process.ancestors = [Ancestor(6666, _key(6666), "/usr/bin/bash"), Ancestor(800, _key(800), "/usr/sbin/nginx")]
    flow = NetFlow(ts=now - 18 * s, source="network.ebpf", process=_ref(6666, "/usr/bin/bash", user="www-data",
                                                                         uid=33),
                   direction="out", protocol="tcp", local_addr="10.0.0.5", local_port=0, remote_addr="203.0.113.9",
                   remote_port=4444, connections=1, bytes_out=300, bytes_in=900)
    return [nginx, shell, child, flow]


HOSTILE_ARGV = ["sh", "-c", "<script>window.__pwned=1</script><img src=x onerror=window.__pwned=2>",
                "\u202eexe.txt", "A" * 10_000]


def hostile_event(now: int) -> ProcessExec:
    """Markup, an RTL override and a 10k-character argument: all must render as text."""
    return exec_event(9999, "/tmp/<b>bold</b>", HOSTILE_ARGV, ts=now)


def sample_events(now: int) -> list[Event]:
    """One of each event type the console shows, as an agent would send them (a few seconds apart)."""
    from heron.schema.events import PackageActivity, PackageInventory, PackageUse
    from vulnfixtures import packages  # tests/ is on sys.path next to this module

    pkgs = {p.name: p for p in packages()}
    s = 10**9
    curl = _ref(4242, "/usr/bin/curl", user="deploy", uid=1001)
    nginx = _ref(800, "/usr/sbin/nginx", user="www-data", uid=33)
    return [
        PackageInventory(ts=now - 9 * s, source="package.procfs", scope="host", distro="debian:12", full=True,
                         added=list(pkgs.values())),
        PackageActivity(ts=now - 8 * s, source="package.procfs", scope="host", full=True, active=[
            PackageUse(purl=pkgs["libssl3"].purl, processes=[nginx], files=["/usr/lib/x86_64-linux-gnu/libssl.so.3"])]),
        NetListen(ts=now - 7 * s, source="network.ebpf", process=nginx, protocol="tcp", addr="0.0.0.0", port=443,
                  since_ts=now - 60 * s),
        exec_event(4242, "/usr/bin/curl", ["curl", "-fsS", "https://updates.example.org/feed.json"], ts=now - 6 * s),
        DnsQuery(ts=now - 5 * s, source="network.ebpf", process=curl, query="updates.example.org", qtype="A",
                 answers=["93.184.215.14"], ttl=300, server="127.0.0.53:53", count=2),
        NetFlow(ts=now - 4 * s, source="network.ebpf", process=curl, direction="out", protocol="tcp",
                local_addr="10.0.0.5", local_port=51234, remote_addr="93.184.215.14", remote_port=443,
                domain="updates.example.org", connections=1, bytes_out=2048, bytes_in=1_572_864,
                packets_out=12, packets_in=1100),  # remote_class: the platform sets it
        ProcessExit(ts=now - 3 * s, source="process.ebpf", key=_key(4242), pid=4242, exe="/usr/bin/curl",
                    exit_code=22),
        FileChange(ts=now - 2 * s, source="file.fanotify", path="/etc/cron.d/backup", action="modify",
                   actions=["modify"], process=_ref(5150, "/usr/bin/vim.basic"), rule="/etc/cron.d",
                   new=FileMeta(mode=0o100644, uid=0, gid=0, size=120)),
        AgentHealth(ts=now - 1 * s, source="agent", agent_version="0.1.0", uptime_s=42.0, collectors=COLLECTORS,
                    counters={"network.ebpf.dropped": 0}, cpu_s=0.4, rss_bytes=40 << 20),
    ]


@dataclass
class Console:
    """A running platform with one enrolled agent; ``url`` serves the console."""

    handle: ServerHandle
    data_dir: Path
    agent_id: str
    agent_token: str
    http: httpx.Client = field(repr=False)

    @property
    def url(self) -> str:
        return self.handle.url

    @property
    def admin_token(self) -> str:
        return self.handle.credentials.admin_token

    def ingest(self, events: list[Event]) -> None:
        body = zstandard.ZstdCompressor().compress(encode_events(events))
        r = self.http.post("/api/v1/ingest", content=body, headers={
            "Authorization": f"Bearer {self.agent_token}", "X-Heron-Agent": self.agent_id,
            "X-Heron-Batch": f"spool-{next(_batch_ids)}:0", "Content-Type": "application/x-msgpack",
            "Content-Encoding": "zstd"})
        assert r.status_code == 200 and r.json()["accepted"] == len(events), r.text

    @property
    def db(self) -> Database:
        db = self.handle.storage.db
        assert isinstance(db, Database)
        return db

    def add_user(self, username: str, password: str, role: str) -> None:
        from heron.platform.auth.passwords import hash_password
        from heron.platform.auth.store import AuthStore

        AuthStore(self.db).add_user(username, hash_password(password), role, time.time_ns())

    def get(self, path: str, **params: str | int) -> Any:
        r = self.http.get(path, params=params, headers={"Authorization": f"Bearer {self.admin_token}"})
        assert r.status_code == 200, r.text
        return r.json()

    def wait_for_alert(self, timeout: float = 5.0) -> dict[str, Any]:
        """The first alert the pipeline raised (after ingesting ``shell_from_web_server``)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.get("/api/v1/alerts")["alerts"]
            if found:
                return dict(found[-1])
            assert time.monotonic() < deadline, "no alert raised: is the pipeline wired into ingest?"
            time.sleep(0.05)

    def import_advisories(self, tmp_dir: Path) -> None:
        from vulnfixtures import write_advisories

        write_advisories(tmp_dir / "osv")
        AdvisoryDB(vulndb_path(self.data_dir)).import_paths([tmp_dir / "osv"])


def _wire_pipeline(handle: ServerHandle) -> None:
    """Fill the stages of the analysis pipeline the app left empty (the rule engine and alert recorder of
    heron.platform.alerts, the graph builder of heron.platform.graph), so ingested events raise real alerts.
    A no-op once create_app wires them itself."""
    from starlette.applications import Starlette

    from heron.platform.api.context import PlatformContext
    from heron.platform.graph.builder import GraphBuilder

    app = handle.server.config.app
    assert isinstance(app, Starlette)
    ctx = app.state.heron
    assert isinstance(ctx, PlatformContext)
    pipeline = ctx.pipeline
    if ctx.alerts is not None:
        pipeline.rules = pipeline.rules or ctx.alerts.engine
        pipeline.alerts = pipeline.alerts or ctx.alerts.recorder
    pipeline.graph = pipeline.graph or GraphBuilder(ctx.config)


def start_console(data_dir: Path) -> Iterator[Console]:
    """The platform on 127.0.0.1 (ephemeral port), an agent enrolled as web-1, the sample batch ingested."""
    handle = start_in_thread("127.0.0.1", 0, data_dir)
    try:
        _wire_pipeline(handle)
        with httpx.Client(base_url=handle.url, timeout=10) as http:
            facts = {"hostname": HOSTNAME, "machine_id": "m" * 32, "boot_id": BOOT_ID, "kernel": "6.18.0",
                     "distro": "debian:12", "arch": "x86_64"}
            r = http.post("/api/v1/enroll", json={"name": None, "agent_version": "0.1.0", "host": facts},
                          headers={"Authorization": f"Bearer {handle.credentials.enrollment_token}"})
            assert r.status_code == 201, r.text
            console = Console(handle, data_dir, r.json()["agent_id"], r.json()["token"], http)
            console.ingest(sample_events(time.time_ns()))
            yield console
    finally:
        handle.stop()


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    yield from start_console(tmp_path / "platform")


# -- the browser ----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (scripts/bootstrap.sh --test installs it)")
    executable = chromium_path()
    if executable is None:
        pytest.skip("chromium is not installed (scripts/bootstrap.sh --test installs Debian's chromium)")
    with sync_playwright() as pw:
        # --no-sandbox: the tests run as root, where chromium refuses its sandbox.
        browser = pw.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(chromium: Browser) -> Iterator[Page]:
    context = chromium.new_context(viewport={"width": 1400, "height": 900}, device_scale_factor=1)
    context.set_default_timeout(5000)
    errors: list[str] = []
    pg = context.new_page()
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield pg
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


def open_console(page: Page, console: Console, token: str | None = None) -> None:
    """Open the console with a token in the URL fragment, as `heron up` prints it."""
    page.goto(f"{console.url}/#token={token or console.admin_token}")


# -- screenshots ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Image:
    width: int
    height: int
    channels: int
    pixels: bytes  # rows of width * channels bytes, no filter bytes

    def pixel(self, x: int, y: int) -> tuple[int, ...]:
        i = (y * self.width + x) * self.channels
        return tuple(self.pixels[i:i + min(self.channels, 3)])


def decode_png(data: bytes) -> Image:
    """An 8-bit RGB or RGBA, non-interlaced PNG (what chromium writes) decoded with zlib."""
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    pos, idat, header = 8, bytearray(), b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            break
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", header)
    channels = {2: 3, 6: 4}.get(color)
    if depth != 8 or channels is None or interlace:
        raise ValueError(f"unsupported PNG: depth {depth}, color type {color}, interlace {interlace}")
    raw = zlib.decompress(bytes(idat))
    stride = width * channels
    out = bytearray(stride * height)
    prev = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if kind == 1:
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 0xFF
        elif kind == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - channels] if i >= channels else 0
                b = prev[i]
                c = prev[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        elif kind != 0:
            raise ValueError(f"bad PNG filter {kind} on row {y}")
        out[y * stride:(y + 1) * stride] = line
        prev = line
    return Image(width, height, channels, bytes(out))


def ink(image: Image) -> float:
    """Share of pixels that differ from the most common colour (the background): ~0 for a blank render."""
    counts: dict[tuple[int, ...], int] = {}
    for y in range(image.height):
        for x in range(image.width):
            px = image.pixel(x, y)
            counts[px] = counts.get(px, 0) + 1
    total = image.width * image.height
    return 1 - max(counts.values()) / total if total else 0.0


def ink_rows(image: Image) -> int:
    """Rows of pixels that hold anything but the background: text lines make many of them."""
    background = image.pixel(0, 0)
    rows = 0
    for y in range(image.height):
        if any(image.pixel(x, y) != background for x in range(image.width)):
            rows += 1
    return rows


__all__ = ["HOSTILE_ARGV", "Console", "Image", "chromium", "chromium_path", "console", "decode_png", "exec_event",
           "hostile_event", "ink", "ink_rows", "open_console", "page", "sample_events", "shell_from_web_server",
           "start_console"]
