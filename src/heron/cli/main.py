"""The ``heron`` command: argument parsing only; each command calls into the packages below."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from heron import __version__

if TYPE_CHECKING:  # the CLI imports the heavy packages lazily, per command
    from heron.agent.config import AgentConfig
    from heron.agent.fim.scan import ScanProgress
    from heron.agent.health import Health
    from heron.agent.sinks.base import Sink

DEFAULT_LISTEN = "127.0.0.1:8737"
DEFAULT_DATA = Path("/var/lib/heron")


DATA_DIR_HELP = "data dir holding platform/admin.token (default: the running `heron up`'s, else /var/lib/heron)"
UP_RECORD = Path("/run/heron/up.json")  # where `heron up` says which platform it runs (URL and data dir)


def _write_up_record(url: str, data_dir: Path) -> None:
    try:
        UP_RECORD.parent.mkdir(mode=0o755, exist_ok=True)
        tmp = UP_RECORD.with_name(f".up.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"url": url, "data_dir": str(data_dir.resolve()), "pid": os.getpid()}, f)
        os.replace(tmp, UP_RECORD)
    except OSError:
        pass  # not root: clients then need --url/--data-dir


def _remove_up_record() -> None:
    try:
        if json.loads(UP_RECORD.read_text()).get("pid") == os.getpid():
            UP_RECORD.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def _client(args: argparse.Namespace) -> tuple[str, str]:
    """URL and token for a client command: --url, --token/HERON_TOKEN and --data-dir when given; with no
    --url, the platform a running `heron up` recorded (its URL and data dir), else the defaults."""
    url, data_dir = args.url, args.data_dir
    if url is None:
        record: dict[str, object] = {}
        try:
            loaded = json.loads(UP_RECORD.read_text())
            record = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            pass
        url = str(record.get("url") or f"http://{DEFAULT_LISTEN}")
        data_dir = data_dir or record.get("data_dir")
    data = Path(str(data_dir or DEFAULT_DATA))
    token = args.token or os.environ.get("HERON_TOKEN", "")
    if not token:
        path = data / "platform" / "admin.token"
        try:
            token = path.read_text().strip()
        except OSError:
            raise SystemExit(f"heron: no token: pass --token, set HERON_TOKEN or create {path}") from None
    return url, token


def _split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"heron: --listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def _collector_pins(pins: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pin in pins:
        cap, sep, mech = pin.partition("=")
        if not sep or not cap or not mech:
            raise SystemExit(f"heron: --collector must be CAPABILITY=MECHANISM, got {pin!r}")
        out[cap] = mech.removeprefix(f"{cap}.")
    return out


# -- doctor ------------------------------------------------------------------------------------
def cmd_doctor(args: argparse.Namespace) -> int:
    from heron.agent import doctor

    rep = doctor.report(pinned=_collector_pins(args.collector))
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print(doctor.render(rep))
    return 0


# -- agent -------------------------------------------------------------------------------------
def _build_sinks(args: argparse.Namespace, config: AgentConfig, health: Health) -> list[Sink]:
    from heron.agent.sinks.jsonl import JsonlSink

    sinks: list[Sink] = []
    outputs = list(args.output) or (["platform"] if config.platform.url else ["stdout"])
    for spec in outputs:
        kind, _, arg = spec.partition(":")
        if kind == "jsonl":
            if not arg:
                raise SystemExit("heron: --output jsonl:PATH needs a path")
            try:
                sinks.append(JsonlSink(arg))
            except OSError as e:
                raise SystemExit(f"heron: cannot write {arg}: {e.strerror or e}") from None
        elif kind == "stdout":
            sinks.append(JsonlSink(None))
        elif kind == "platform":
            try:
                sinks.append(_platform_sink(config, health))
            except OSError as e:
                raise SystemExit(f"heron: cannot use state dir {config.state_dir}: {e.strerror or e}") from None
        else:
            raise SystemExit(f"heron: unknown output {spec!r} (jsonl:PATH, stdout, platform)")
    return sinks


def _platform_sink(config: AgentConfig, health: Health) -> Sink:
    from heron.agent.host import detect_host
    from heron.agent.sinks.platform import PlatformSink

    pc = config.platform
    if not pc.url:
        raise SystemExit("heron: output 'platform' needs platform.url (config) or --platform URL")
    token = pc.enrollment_token
    if not token and pc.enrollment_token_file:
        try:
            token = Path(pc.enrollment_token_file).read_text().strip()
        except OSError as e:
            raise SystemExit(f"heron: cannot read enrolment token file: {e}") from None
    state = Path(config.state_dir)
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    return PlatformSink(
        url=pc.url,
        enrollment_token=token,
        state_dir=state,
        host=detect_host().info,
        spool_dir=state / "spool",
        ca_file=pc.ca_file or None,
        spool_max_bytes=config.spool.max_mb << 20,
        spool_segment_bytes=config.spool.segment_mb << 20,
        health=health,
        batch_max_events=config.batch_max_events,
        batch_max_delay_s=config.batch_max_delay_s,
    )


def _load_agent_config(args: argparse.Namespace) -> AgentConfig:
    import msgspec

    from heron.agent.config import ConfigError, load_config

    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        raise SystemExit(f"heron: {e}") from None
    pins = {**cfg.collectors, **_collector_pins(args.collector)}
    changes: dict[str, object] = {"collectors": pins}
    if args.state_dir:
        changes["state_dir"] = args.state_dir
    platform = cfg.platform
    if args.platform:
        platform = msgspec.structs.replace(platform, url=args.platform)
    if args.enrollment_token_file:
        platform = msgspec.structs.replace(platform, enrollment_token_file=args.enrollment_token_file)
    changes["platform"] = platform
    if args.watch or args.no_default_policy:
        from heron.agent.config import FileWatch

        extra = [FileWatch(path=os.path.abspath(p)) for p in args.watch]
        changes["file"] = msgspec.structs.replace(
            cfg.file, watches=[*cfg.file.watches, *extra],
            default_policy=cfg.file.default_policy and not args.no_default_policy)
    return msgspec.structs.replace(cfg, **changes)


def run_agent(args: argparse.Namespace, extra_sinks: Sequence[Sink] = ()) -> int:
    from heron.agent.config import ConfigError, load_config
    from heron.agent.health import Health
    from heron.agent.runtime import Agent
    from heron.agent.sources import ladder

    config = _load_agent_config(args)
    health = Health()
    sinks = _build_sinks(args, config, health) + list(extra_sinks)
    agent = Agent(config, sinks, health=health)
    done = threading.Event()
    reload_requested = threading.Event()

    # Handlers only set flags: the work happens on the main loop below, never inside a handler
    # (a handler runs between two bytecodes of whatever the main thread holds, locks included).
    def _stop(signum: int, _frame: object) -> None:
        done.set()

    def _hup(signum: int, _frame: object) -> None:
        reload_requested.set()

    def reload() -> None:
        try:
            agent.reconfigure(load_config(args.config))
        except ConfigError as e:  # keep the last good config
            agent.health.note(f"config reload rejected, keeping the last good config: {e}")
            logging.getLogger("heron").error("%s", e)

    # Handlers before start: a SIGTERM during start-up still flushes what was observed.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _hup)
    try:
        agent.start()
    except (ladder.PinnedMechanismUnavailable, ladder.UnknownMechanism) as e:
        print(f"heron: {e}", file=sys.stderr)
        agent.stop(timeout=5)
        return 2
    except Exception as e:  # a collector that passed its probe and then failed to start
        logging.getLogger("heron").exception("start-up failed")
        print(f"heron: start-up failed: {e!r}", file=sys.stderr)
        agent.stop(timeout=5)
        return 2
    in_use = ", ".join(f"{c}={m}" for c, m in agent.collectors_in_use().items()) or "none"
    print(f"heron agent {__version__}: collectors {in_use}", file=sys.stderr, flush=True)
    while not done.wait(0.5):
        if reload_requested.is_set():
            reload_requested.clear()
            if args.config:
                reload()
    agent.stop()
    return 0


def cmd_agent(args: argparse.Namespace) -> int:
    return run_agent(args)


# -- platform ----------------------------------------------------------------------------------
def cmd_server(args: argparse.Namespace) -> int:
    import sqlalchemy as sa

    from heron.platform import settings
    from heron.platform.server import serve
    from heron.platform.storage.db import DatabaseUnavailable

    host, port = _split_listen(args.listen)
    try:
        config = settings.load(Path(args.config) if args.config else None, Path(args.data_dir))
    except (settings.SettingsError, OSError) as e:
        raise SystemExit(f"heron: platform settings: {e}") from None
    try:
        serve(host, port, Path(args.data_dir), database=args.database, config=config)
    except OSError as e:
        raise SystemExit(f"heron: cannot serve on {args.listen}: {e.strerror or e}") from None
    except (DatabaseUnavailable, ValueError, sa.exc.ArgumentError) as e:
        raise SystemExit(f"heron: database: {e}") from None  # not the URL: it may hold a password
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from heron.platform import settings
    from heron.platform.server import start_in_thread

    data = Path(args.data_dir)
    host, port = _split_listen(args.listen)
    if args.port is not None:
        port = args.port
    try:
        config = settings.load(Path(args.platform_config) if args.platform_config else None, data / "platform")
        server = start_in_thread(host, port, data / "platform", config=config)
    except settings.SettingsError as e:
        raise SystemExit(f"heron: platform settings: {e}") from None
    except OSError as e:
        raise SystemExit(f"heron: cannot serve on {args.listen}: {e.strerror or e}") from None
    url = f"http://{host}:{server.port}"
    password_file = data / "platform" / "admin.password"
    token_url = f"{url}/#token=" + (data / "platform" / "admin.token").read_text().strip()
    # Never the password itself: terminals get scrolled back and recorded. The token link is the
    # local root user's shortcut (the token file is root's too).
    login = f"\n  log in:  as admin, password in {password_file}" if password_file.exists() else ""
    print(f"heron {__version__} is up.\n  console: {token_url}{login}\n"
          f"  events:  heron events --follow\n  alerts:  heron alerts\n  stop:    Ctrl-C", file=sys.stderr, flush=True)
    _write_up_record(url, data)
    args.platform = url
    args.enrollment_token_file = str(data / "platform" / "enrollment.token")
    args.state_dir = args.state_dir or str(data / "agent")
    args.output = [*args.output, "platform"]
    try:
        return run_agent(args)
    finally:
        _remove_up_record()
        server.stop()


def cmd_events(args: argparse.Namespace) -> int:
    from heron.platform.client import events_command

    url, token = _client(args)
    filters = {k: v for k, v in {"type": args.type, "host": args.host, "exe": args.exe}.items() if v}
    return events_command(url, token, args.follow, filters, args.json, sys.stdout, limit=args.limit)


def cmd_alerts(args: argparse.Namespace) -> int:
    from heron.platform.alerts.cli import alerts_command

    url, token = _client(args)
    return alerts_command(url, token, as_json=args.json, state=args.state, limit=args.limit,
                          severity=args.severity, host=args.host)


# -- vulnerabilities ---------------------------------------------------------------------------
def cmd_vulndb_import(args: argparse.Namespace) -> int:
    from heron.vuln.commands import import_command

    return import_command(args.paths, args.data_dir)


def cmd_vulndb_update(args: argparse.Namespace) -> int:
    from heron.vuln.commands import update_command

    return update_command(args.ecosystem, args.data_dir, base_url=args.mirror)


def cmd_vulns(args: argparse.Namespace) -> int:
    from heron.vuln.commands import vulns_command

    url, token = _client(args)
    filters = {k: v for k, v in {"severity": args.severity, "active": args.active,
                                  "recent_days": args.recent_days}.items() if v is not None}
    return vulns_command(url, token, args.json, sys.stdout, host=args.host, limit=args.limit, filters=filters)


# -- users and tokens --------------------------------------------------------------------------
def cmd_user(args: argparse.Namespace) -> int:
    from heron.platform.auth import cli

    store = cli.open_store(args.data_dir, args.database)
    try:
        if args.user_command == "add":
            return cli.user_add(store, args.name, args.role, args.password_file)
        if args.user_command == "passwd":
            return cli.user_passwd(store, args.name, args.password_file)
        if args.user_command == "disable":
            return cli.user_disable(store, args.name)
        return cli.user_list(store, args.json)
    finally:
        store.db.close()


def cmd_token(args: argparse.Namespace) -> int:
    from heron.platform.auth import cli

    store = cli.open_store(args.data_dir, args.database)
    try:
        if args.subcommand == "create":
            return cli.token_create(store, args.name, args.role, args.expires_days)
        if args.subcommand == "revoke":
            if args.agent is not None:
                return cli.agent_token_revoke(store, args.agent)
            return cli.token_revoke(store, args.id)
        return cli.token_list(store, args.json)
    finally:
        store.db.close()


def _local_db_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", "--data-dir", dest="data_dir", default=str(DEFAULT_DATA), metavar="DIR",
                   help="the data dir of heron up (platform database in DIR/platform/heron.db)")
    p.add_argument("--database", metavar="URL", help="the platform's database instead (postgresql://...)")


# -- fim -----------------------------------------------------------------------------------------
def _printable(text: str) -> str:
    """A file name for a terminal: control characters (newline, escape sequences) as \\xNN, so a
    hostile name can neither forge an output line nor drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                   for c in text)


def _scan_line(p: ScanProgress, width: int) -> str:
    from heron.agent.fim.paths import display_path

    rate = p.files_seen / p.elapsed_s if p.elapsed_s > 0 else 0.0
    head = (f"{p.files_seen:,} files ({rate:,.0f}/s), {p.files_hashed:,} hashed ({p.bytes_hashed / 1e6:,.0f} MB), "
            f"{p.changes} changes, {p.errors} errors")
    room = width - len(head) - 3
    cur = _printable(display_path(p.current)[0])
    if room > 10:
        head += "  " + (cur if len(cur) <= room else "…" + cur[-room + 1:])
    return head[:width]


# The CLI's own baseline: a scan run by hand must not record, and so silence, what the agent has yet to report.
CLI_BASELINE = "fim-cli-baseline.db"


def cmd_fim_scan(args: argparse.Namespace) -> int:
    import shutil
    import time

    from heron.agent.fim.baseline import BaselineStore
    from heron.agent.fim.hashing import IoBudget
    from heron.agent.fim.policy import Policy
    from heron.agent.fim.scan import ScanProgress, scan
    from heron.schema.events import to_json

    config = _load_agent_config(args)  # applies --path (as --watch) and --no-default-policy
    fc = config.file
    try:
        policy = Policy.from_config(fc)
        if args.baseline:
            where = Path(args.baseline)
            store = BaselineStore.open(str(where.parent), where.name)
        else:
            store = BaselineStore.open(config.state_dir, CLI_BASELINE)
    except ValueError as e:
        raise SystemExit(f"heron: {e}") from None
    except OSError as e:
        raise SystemExit(f"heron: cannot use state dir {config.state_dir}: {e.strerror or e}") from None
    if store.note:
        print(f"heron: {store.note}", file=sys.stderr)
    budget = None if args.no_throttle else IoBudget(fc.scan_max_mb_per_s, fc.scan_cpu_percent)
    tty = sys.stderr.isatty()
    last: list[ScanProgress] = []
    next_line = [time.monotonic() + 5.0]

    def progress(p: ScanProgress) -> None:
        last[:] = [p]
        if tty:
            width = shutil.get_terminal_size().columns - 1
            print("\r" + _scan_line(p, width).ljust(width), end="", file=sys.stderr, flush=True)
        elif time.monotonic() >= next_line[0] and not p.done:
            next_line[0] = time.monotonic() + 5.0
            print("scanning: " + _scan_line(p, 200), file=sys.stderr, flush=True)

    out = sys.stdout
    interrupted = False
    try:
        for change in scan(policy, store, budget=budget, progress=progress):
            if tty:
                print("\r\x1b[K", end="", file=sys.stderr)
            if args.json:
                out.write(to_json(change).decode() + "\n")
            else:
                extra = f" (from {_printable(change.old_path)})" if change.old_path else ""
                out.write(f"{change.action:7} {_printable(change.path)}{extra}  [{_printable(change.rule)}]\n")
            out.flush()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        store.close()
    if tty:
        print("\r\x1b[K", end="", file=sys.stderr)
    p = last[0] if last else ScanProgress()
    mb = p.bytes_hashed / 1e6
    secs = max(p.elapsed_s, 1e-9)
    by_action = ", ".join(f"{a} {n}" for a, n in sorted(p.by_action.items())) or "none"
    lines = [
        f"fim scan {'interrupted' if interrupted else 'done'}: {p.files_seen:,} files in {p.roots} roots, "
        f"{p.files_hashed:,} hashed ({mb:,.1f} MB), {p.errors} errors",
        f"  changes: {p.changes} ({by_action})",
        f"  duration {p.elapsed_s:.1f} s, {p.files_seen / secs:,.0f} files/s, {mb / secs:,.1f} MB/s hashed",
    ]
    if p.baseline_files:
        lines.append(f"  first scan of its roots: baseline recorded for {p.baseline_files:,} files (not reported)")
    if p.hash_skipped:
        lines.append("  not hashed: " + ", ".join(f"{k} {v}" for k, v in sorted(p.hash_skipped.items())))
    lines += [f"  error: {_printable(e)}" for e in p.error_samples[:5]]
    print("\n".join(lines), file=sys.stderr if args.json else sys.stdout, flush=True)
    return 130 if interrupted else 0


# -- packages ----------------------------------------------------------------------------------
def cmd_packages(args: argparse.Namespace) -> int:
    from heron.agent.sources.package.scan import ScopeNotFound, local_report

    try:
        facts, rows = local_report(container=args.container)
    except ScopeNotFound as e:
        print(f"heron: {e}", file=sys.stderr)
        return 1
    for err in facts["errors"]:
        print(f"heron: {facts['scope']}: {err}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    cols = ("name", "version", "ecosystem", "manager", "active")
    table = [[str(r[c] if c != "active" else ("yes" if r[c] else "")) for c in cols] for r in rows]
    widths = [max([len(c), *(len(t[i]) for t in table)]) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)).rstrip())
    active = sum(1 for r in rows if r["active"])
    where = facts["scope"] + (f" ({facts['distro']})" if facts["distro"] else "")
    print(f"{len(rows)} packages, {active} active, in {where}")
    return 0


# -- parser ------------------------------------------------------------------------------------
def _agent_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="agent config file (TOML)")
    p.add_argument("--output", action="append", default=[],
                   help="jsonl:PATH, stdout or platform (repeatable)")
    p.add_argument("--collector", action="append", default=[], metavar="CAPABILITY=MECHANISM",
                   help="pin a collector, e.g. process=audit (repeatable)")
    p.add_argument("--platform", help="platform URL (for --output platform)")
    p.add_argument("--enrollment-token-file", help="file holding the platform's enrolment token")
    p.add_argument("--state-dir", help="where the agent keeps its spool and identity")
    p.add_argument("--watch", action="append", default=[], metavar="PATH",
                   help="watch PATH recursively for every file change, beside the policy (repeatable)")
    p.add_argument("--no-default-policy", action="store_true",
                   help="watch only --watch paths and the config's file.watches, not the built-in policy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heron", description="heron runtime security agent and platform")
    parser.add_argument("--version", action="version", version=f"heron {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("HERON_LOG", "warning"))
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("agent", help="run the agent in the foreground")
    _agent_args(p)
    p.set_defaults(func=cmd_agent)

    p = sub.add_parser("doctor", help="what this host offers and which collectors the agent would use")
    p.add_argument("--json", action="store_true")
    p.add_argument("--collector", action="append", default=[], metavar="CAPABILITY=MECHANISM")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("server", help="run the platform (ingest, API, console)")
    p.add_argument("--listen", default=DEFAULT_LISTEN)
    p.add_argument("--data-dir", default=str(DEFAULT_DATA / "platform"))
    p.add_argument("--database", metavar="URL",
                   help="postgresql://user@host/db (several servers may share it) or a SQLite path; "
                        "default DATA_DIR/heron.db. Token files stay in --data-dir")
    p.add_argument("--config", metavar="FILE", help="platform settings, TOML (docs/configuration.md, Platform)")
    p.set_defaults(func=cmd_server)

    p = sub.add_parser("up", help="agent + embedded platform + console on this host")
    _agent_args(p)
    p.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT of the platform and console")
    p.add_argument("--port", type=int, help="the console/API port (on --listen's address)")
    p.add_argument("--data", "--data-dir", dest="data_dir", default=str(DEFAULT_DATA),
                   help="platform database, tokens and agent state")
    p.add_argument("--platform-config", metavar="FILE",
                   help="platform settings, TOML (docs/configuration.md, Platform); --config is the agent's")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("events", help="list or follow events from a platform")
    p.add_argument("--url", help=f"platform URL (default: the running `heron up`, else http://{DEFAULT_LISTEN})")
    p.add_argument("--token", help="API token (default: HERON_TOKEN or the local admin token)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--follow", "-f", action="store_true")
    p.add_argument("--type", help="process.exec, process.exit, agent.health")
    p.add_argument("--host")
    p.add_argument("--exe")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_events)

    p = sub.add_parser("alerts", help="alerts of a platform (the local one by default)")
    p.add_argument("--url", "--server", dest="url",
                   help=f"platform URL (default: the running `heron up`, else http://{DEFAULT_LISTEN})")
    p.add_argument("--token", help="API token (default: HERON_TOKEN or the local admin token)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--state", help="open, acknowledged, closed (comma-separated; default all)")
    p.add_argument("--severity", help="info, low, medium, high, critical (comma-separated)")
    p.add_argument("--host")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true", help="a JSON array of alerts (rule, kind, severity, host, pid, "
                   "exe, time, time_ns, ...)")
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser("vulndb", help="the local platform's advisory database (OSV)")
    vsub = p.add_subparsers(dest="vulndb_command", required=True)
    v = vsub.add_parser("import", help="import OSV records: .json files, directories of them, or .zip files")
    v.add_argument("paths", nargs="+", metavar="PATH")
    v.add_argument("--data-dir", default=str(DEFAULT_DATA), help="the data dir of heron up (platform in DIR/platform)")
    v.set_defaults(func=cmd_vulndb_import)
    v = vsub.add_parser("update", help="download and import osv.dev's advisories for the ecosystems seen")
    v.add_argument("--ecosystem", action="append", default=[], metavar="E",
                   help="OSV ecosystem, e.g. Debian, Alpine, PyPI, npm (repeatable; default: those inventoried)")
    v.add_argument("--mirror", default="https://osv-vulnerabilities.storage.googleapis.com",
                   help="base URL holding <ECOSYSTEM>/all.zip")
    v.add_argument("--data-dir", default=str(DEFAULT_DATA))
    v.set_defaults(func=cmd_vulndb_update)

    p = sub.add_parser("vulns", help="vulnerabilities of the inventoried packages, active ones first")
    p.add_argument("--url", help=f"platform URL (default: the running `heron up`, else http://{DEFAULT_LISTEN})")
    p.add_argument("--token", help="API token (default: HERON_TOKEN or the local admin token)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--host")
    p.add_argument("--severity", help="critical,high,medium,low,negligible,unknown (comma-separated)")
    p.add_argument("--active", choices=("true", "false"), help="only packages in use (true) or not (false)")
    p.add_argument("--recent-days", type=float, help="how long a package that stopped being used ranks as "
                   "recently active (default 7)")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true", help="one JSON object per finding per line")
    p.set_defaults(func=cmd_vulns)

    p = sub.add_parser("packages", help="installed packages of this host (or a container) and which are in use")
    p.add_argument("--json", action="store_true", help="a JSON array of packages")
    p.add_argument("--container", metavar="ID", help="a running container's packages (id or its prefix)")
    p.set_defaults(func=cmd_packages)

    users = sub.add_parser("user", help="console users of the local platform").add_subparsers(
        dest="user_command", required=True)
    p = users.add_parser("add", help="add a console user (password from a prompt or --password-file)")
    p.add_argument("name")
    p.add_argument("--role", choices=("admin", "reader"), default="reader")
    p.add_argument("--password-file", metavar="PATH", help="read the password from the first line of PATH")
    p = users.add_parser("passwd", help="set a user's password (ends its sessions)")
    p.add_argument("name")
    p.add_argument("--password-file", metavar="PATH")
    p = users.add_parser("list", help="list the console users")
    p.add_argument("--json", action="store_true")
    p = users.add_parser("disable", help="disable a user (ends its sessions; the last admin cannot be)")
    p.add_argument("name")
    for p in users.choices.values():
        _local_db_args(p)
        p.set_defaults(func=cmd_user)

    tokens = sub.add_parser("token", help="API tokens of the local platform").add_subparsers(
        dest="subcommand", required=True)
    p = tokens.add_parser("create", help="create an API token and print it (shown only once)")
    p.add_argument("--name", required=True)
    p.add_argument("--role", choices=("admin", "reader", "enroll"), required=True)
    p.add_argument("--expires-days", type=float, metavar="DAYS", help="valid for DAYS (default: until revoked)")
    p = tokens.add_parser("list", help="list API tokens (never the tokens themselves)")
    p.add_argument("--json", action="store_true")
    p = tokens.add_parser("revoke", help="revoke an API token by its id (see heron token list), or an agent's token "
                          "with --agent AGENT_ID (the console's Hosts page shows agent ids)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="the token id (16 hex digits)")
    which.add_argument("--agent", metavar="AGENT_ID", help="revoke this agent's token (it must enrol again)")
    for p in tokens.choices.values():
        _local_db_args(p)
        p.set_defaults(func=cmd_token)

    fim = sub.add_parser("fim", help="file integrity monitoring").add_subparsers(dest="fim_command", required=True)
    p = fim.add_parser("scan", help="scan the watched files against the stored baseline (the first scan records it)",
                       description="Compare the watched files with a baseline and print the changes. The CLI keeps "
                       f"its own baseline (STATE_DIR/{CLI_BASELINE}), apart from the running agent's: what it prints "
                       "is not taken from what the agent reports to the platform. --baseline chooses another file.")
    p.add_argument("--config", help="agent config file (TOML): its [file] policy and state_dir")
    p.add_argument("--state-dir", help="where the baseline is kept (default: the agent's state dir)")
    p.add_argument("--path", dest="watch", action="append", default=[], metavar="PATH",
                   help="also watch PATH recursively, like the agent's --watch (repeatable)")
    p.add_argument("--no-default-policy", action="store_true", help="only the config's and --path watches")
    p.add_argument("--no-throttle", action="store_true", help="ignore the config's scan I/O and CPU budget")
    p.add_argument("--json", action="store_true", help="each change as a JSON line on stdout")
    p.add_argument("--baseline", metavar="PATH",
                   help=f"the baseline file (default: STATE_DIR/{CLI_BASELINE}, not the agent's own)")
    p.set_defaults(func=cmd_fim_scan, collector=[], platform=None, enrollment_token_file=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        rc: int = args.func(args)
    except KeyboardInterrupt:
        rc = 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
