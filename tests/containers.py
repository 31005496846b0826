"""Real containers for tests: a docker daemon (started here if it is installed but not running), a
tiny image made from the host's static busybox, and containers that are removed afterwards.

No image registry is reachable, so the image is imported from a rootfs holding one static busybox
binary (Debian's busybox-static). Containers run with ``--network none`` and a daemon started here
runs with ``--bridge=none --iptables=false --ip-forward=false``: no interface, firewall rule or
sysctl is left behind.

Use from a test module (tests/ is on sys.path through tests/conftest.py)::

    from containers import docker_container, docker_daemon  # noqa: F401  (pytest fixtures)

    def test_x(docker_container: RunningContainer) -> None:
        docker_container.id, docker_container.pid, docker_container.exec("sh", "-c", "id")

or, outside pytest fixtures, ``with DockerDaemon.ensure() as d, d.container() as c: ...``.
A test skips (with the reason) when docker is not installed or cannot start here.
``scripts/ci-containers.sh`` installs docker.io and busybox-static and starts the same daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import pytest

IMAGE = "heron-test:latest"
# A daemon of our own keeps its state apart from any docker the machine already runs.
OWN_ROOT = "/run/heron-test-docker"
OWN_SOCKET = f"unix://{OWN_ROOT}/docker.sock"
OWN_DATA = "/var/lib/heron-test-docker"
BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
START_TIMEOUT = 30.0


class DockerUnavailable(Exception):
    """Docker is not installed, or its daemon cannot run here: the reason is the message."""


@dataclass
class RunningContainer:
    id: str  # 64 hex digits
    name: str
    pid: int  # host pid of the container's first process
    daemon: DockerDaemon | None  # None for podman

    def exec(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run argv inside the container (docker exec), return the finished process."""
        assert self.daemon is not None, "exec is for docker containers"
        return self.daemon.cli("exec", self.id, *argv, timeout=timeout, check=False)

    def cgroup_text(self) -> str:
        with open(f"/proc/{self.pid}/cgroup") as f:
            return f.read()


class DockerDaemon:
    """A docker daemon to run test containers in.

    The machine's own daemon (DOCKER_HOST or /run/docker.sock) is used as it is and never stopped.
    Otherwise our own daemon at OWN_SOCKET is used, started if needed; test sessions running at the
    same time share it, each holding a shared lock on users.lock, and the last one to leave stops
    it (whoever started it: a session, or scripts/ci-containers.sh). start.lock serialises start
    and stop, so a session never finds a daemon that is about to go away."""

    def __init__(self, host: str, docker: str) -> None:
        self.host = host  # the DOCKER_HOST the cli talks to
        self.docker = docker
        self.proc: subprocess.Popen[bytes] | None = None  # the dockerd this session started
        self.users: IO[str] | None = None  # our shared lock while we use our own daemon
        self.start_seconds = 0.0

    @property
    def own(self) -> bool:
        """True when this is our own daemon (at OWN_SOCKET), not the machine's."""
        return self.host == OWN_SOCKET

    def daemon_pid(self) -> int | None:
        """Pid of our own dockerd, from its pidfile."""
        try:
            with open(f"{OWN_ROOT}/docker.pid") as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError):
            return None
        return pid if b"dockerd" in cmdline and OWN_SOCKET.encode() in cmdline else None

    # -- cli ------------------------------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, DOCKER_HOST=self.host)
        r = subprocess.run([self.docker, *args], env=env, capture_output=True, timeout=timeout, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {r.stderr.strip()}")
        return r

    def _responds(self) -> bool:
        try:
            return self.cli("version", "--format", "{{.Server.Version}}", timeout=10,
                            check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    # -- life cycle -------------------------------------------------------------------------------
    @classmethod
    def ensure(cls) -> DockerDaemon:
        """A responding daemon: the machine's own, our own already running, or a new one of ours."""
        docker = shutil.which("docker")
        if docker is None:
            raise DockerUnavailable("docker cli not installed (scripts/ci-containers.sh installs docker.io)")
        system = [os.environ["DOCKER_HOST"]] if os.environ.get("DOCKER_HOST") else []
        for host in [*system, "unix:///run/docker.sock"]:
            d = cls(host, docker)
            if d._responds():
                return d
        os.makedirs(OWN_ROOT, exist_ok=True)
        d = cls(OWN_SOCKET, docker)
        with _flock(f"{OWN_ROOT}/start.lock"):
            d.users = open(f"{OWN_ROOT}/users.lock", "a")  # noqa: SIM115 - held until stop()
            fcntl.flock(d.users, fcntl.LOCK_SH)
            if not d._responds():
                try:
                    d._start()
                except BaseException:
                    d.users.close()
                    d.users = None
                    raise
        return d

    def _start(self) -> None:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise DockerUnavailable("dockerd not installed (scripts/ci-containers.sh installs docker.io)")
        os.makedirs(OWN_DATA, exist_ok=True)
        log = open(f"{OWN_ROOT}/dockerd.log", "ab")  # noqa: SIM115 - the daemon owns it
        t0 = time.monotonic()
        self.proc = subprocess.Popen([dockerd, *dockerd_flags()], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        while time.monotonic() - t0 < START_TIMEOUT:
            if self.proc.poll() is not None:
                tail = _tail(OWN_ROOT + "/dockerd.log")
                raise DockerUnavailable(f"dockerd exited with {self.proc.returncode}: {tail}")
            if self._responds():
                self.start_seconds = time.monotonic() - t0
                return
            time.sleep(0.1)
        self._stop_daemon()
        raise DockerUnavailable(f"dockerd did not answer within {START_TIMEOUT:.0f}s: "
                                f"{_tail(OWN_ROOT + '/dockerd.log')}")

    def stop(self) -> None:
        """Leave the daemon; stop our own one if no other session uses it."""
        if self.users is None:
            return
        with _flock(f"{OWN_ROOT}/start.lock"):
            try:
                fcntl.flock(self.users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                last = True
            except BlockingIOError:
                last = False
            if last:
                self._stop_daemon()
            self.users.close()
            self.users = None

    def _stop_daemon(self) -> None:
        """SIGTERM dockerd (it stops the containerd it started), SIGKILL it after 20 s."""
        if self.proc is not None:
            self.proc.poll()  # reap it if it already died
        pid = self.proc.pid if self.proc is not None else self.daemon_pid()
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, self.proc, 20):
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
                _wait_gone(pid, self.proc, 10)
        self.proc = None
        _remove_empty_cgroups("docker")

    def __enter__(self) -> DockerDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- image and containers ---------------------------------------------------------------------
    def ensure_image(self) -> str:
        if self.cli("image", "inspect", IMAGE, check=False).returncode == 0:
            return IMAGE
        env = dict(os.environ, DOCKER_HOST=self.host)
        subprocess.run([self.docker, "import", "-", IMAGE], input=_rootfs_tar(), env=env,
                       capture_output=True, check=True, timeout=60)
        return IMAGE

    @contextlib.contextmanager
    def container(self, *argv: str) -> Iterator[RunningContainer]:
        """Run a container (default: sleep) and remove it, whatever happens."""
        image = self.ensure_image()
        name = f"heron-test-{uuid.uuid4().hex[:12]}"
        cmd = list(argv) or ["/bin/sleep", "600"]
        try:
            cid = self.cli("run", "-d", "--network", "none", "--name", name, image, *cmd).stdout.strip()
            info = json.loads(self.cli("inspect", "--format", "{{json .State}}", cid).stdout)
            yield RunningContainer(id=cid, name=name, pid=int(info["Pid"]), daemon=self)
        finally:
            self.cli("rm", "-f", name, check=False)


def dockerd_flags() -> list[str]:
    """How we run dockerd: no bridge, no firewall or sysctl changes, state under our own dirs."""
    return [
        f"--host={OWN_SOCKET}",
        f"--exec-root={OWN_ROOT}/exec",
        f"--data-root={OWN_DATA}",
        f"--pidfile={OWN_ROOT}/docker.pid",
        "--bridge=none",
        "--iptables=false",
        "--ip6tables=false",
        "--ip-masq=false",
        "--ip-forward=false",
        "--userland-proxy=false",
    ]


def _rootfs_tar() -> bytes:
    """A tar of a root filesystem holding only a static busybox and a few applet links."""
    busybox = static_busybox()
    with tempfile.TemporaryDirectory(prefix="heron-rootfs-") as root:
        os.makedirs(f"{root}/bin")
        os.makedirs(f"{root}/tmp")
        shutil.copy2(busybox, f"{root}/bin/busybox")
        for applet in ("sh", "sleep", "cat", "ls", "id", "true", "echo", "ps"):
            os.symlink("busybox", f"{root}/bin/{applet}")
        return subprocess.run(["tar", "-C", root, "-c", "."], capture_output=True, check=True).stdout


def static_busybox() -> str:
    """A busybox that runs without the host's libraries (from busybox-static)."""
    for path in BUSYBOX_CANDIDATES:
        if os.path.exists(path) and _is_static_elf(path):
            return path
    raise DockerUnavailable("no static busybox for the test image (apt-get install busybox-static)")


def _is_static_elf(path: str) -> bool:
    """True for a 64-bit little-endian ELF without an interpreter (PT_INTERP)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            return False
        phoff, = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def _remove_empty_cgroups(name: str) -> None:
    """Runtimes leave their empty parent cgroups behind (cgroupfs driver). rmdir, deepest first,
    fails on a cgroup that still holds a process, so nothing in use is touched."""
    for base in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        with contextlib.suppress(OSError):
            for controller in [base, *(os.path.join(base, c) for c in os.listdir(base))]:
                top = os.path.join(controller, name)
                if not os.path.isdir(top):
                    continue
                for dirpath, _, _ in os.walk(top, topdown=False):
                    with contextlib.suppress(OSError):
                        os.rmdir(dirpath)


@contextlib.contextmanager
def _flock(path: str) -> Iterator[None]:
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _alive(pid: int) -> bool:
    """True while pid runs (a zombie, which init may never reap here, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X")


def _wait_gone(pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    if proc is not None:  # our child: reap it
        try:
            proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


def _tail(path: str, n: int = 400) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace").strip().replace("\n", " | ")
    except OSError:
        return ""


class Podman:
    """Daemonless podman with its storage in a temporary directory, removed by ``close``.

    cgroupfs manager (no systemd here), file events, and rlimits no higher than ours: podman
    otherwise asks for nofile/nproc limits that an unprivileged-rlimit sandbox refuses."""

    def __init__(self) -> None:
        podman = shutil.which("podman")
        if podman is None:
            raise DockerUnavailable("podman not installed (apt-get install podman)")
        self.dir = tempfile.mkdtemp(prefix="heron-podman-")
        self.base = [podman, "--root", f"{self.dir}/root", "--runroot", f"{self.dir}/run",
                     "--tmpdir", f"{self.dir}/tmp",
                     "--cgroup-manager", "cgroupfs", "--events-backend", "file", "--log-level", "error"]

    def cli(self, *args: str, timeout: float = 60, check: bool = True,
            input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        r = subprocess.run([*self.base, *args], capture_output=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args)}: {r.stderr.decode(errors='replace').strip()}")
        return r

    def ensure_image(self) -> str:
        if self.cli("image", "exists", IMAGE, check=False).returncode != 0:
            self.cli("import", "-", IMAGE, input=_rootfs_tar())
        return IMAGE

    @contextlib.contextmanager
    def container(self, *argv: str) -> Iterator[RunningContainer]:
        image = self.ensure_image()
        name = f"heron-test-{uuid.uuid4().hex[:12]}"
        nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 1024)
        nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[0], 1024)
        limits = [f"--ulimit=nofile={nofile}:{nofile}", f"--ulimit=nproc={nproc}:{nproc}"]
        try:
            cid = self.cli("run", "-d", "--network", "none", *limits, "--name", name, image,
                           *(argv or ("/bin/sleep", "600"))).stdout.decode().strip()
            pid = int(self.cli("inspect", "--format", "{{.State.Pid}}", cid).stdout)
            yield RunningContainer(id=cid, name=name, pid=pid, daemon=None)
        finally:
            self.cli("rm", "-f", "-t", "0", name, check=False)

    def close(self) -> None:
        self.cli("rm", "-a", "-f", "-t", "0", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        _remove_empty_cgroups("libpod_parent")


# -- pytest fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def docker_daemon() -> Iterator[DockerDaemon]:
    """A running docker daemon; stopped at the end of the session if it was started here."""
    if os.geteuid() != 0:
        pytest.skip("real containers need root")
    try:
        d = DockerDaemon.ensure()
        d.ensure_image()
    except DockerUnavailable as e:
        pytest.skip(f"docker unavailable: {e}")
    except (RuntimeError, subprocess.SubprocessError) as e:
        pytest.skip(f"docker cannot run containers here: {e}")
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture
def docker_container(docker_daemon: DockerDaemon) -> Iterator[RunningContainer]:
    """A running busybox container (sleep), removed after the test."""
    with docker_daemon.container() as c:
        yield c


@pytest.fixture(scope="session")
def podman() -> Iterator[Podman]:
    """Podman with throw-away storage; skips when podman is not installed."""
    if os.geteuid() != 0:
        pytest.skip("real containers need root")
    try:
        p = Podman()
    except DockerUnavailable as e:
        pytest.skip(str(e))
    try:
        p.ensure_image()
    except (DockerUnavailable, RuntimeError, subprocess.SubprocessError) as e:
        p.close()
        pytest.skip(f"podman cannot run containers here: {e}")
    try:
        yield p
    finally:
        p.close()
