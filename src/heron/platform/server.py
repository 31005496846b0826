"""Run the platform: ``serve`` (blocking, for ``heron server``) or ``start_in_thread`` (``heron up``
and tests).

On first start the data directory (0700) gets the SQLite database, an admin token, an enrolment
token and the console user ``admin`` whose password is in ``admin.password`` (files 0600, each
logged once, by path, when created); later starts reuse them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from heron.platform.api.app import create_app
from heron.platform.api.auth import hash_token, new_token
from heron.platform.api.context import PlatformConfig
from heron.platform.auth.bootstrap import ensure_admin_user, write_secret
from heron.platform.storage.base import Storage, TokenKind
from heron.platform.storage.db import Database
from heron.platform.storage.sql import SqlStorage

log = logging.getLogger("heron.platform")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8737
DB_FILE = "heron.db"
ADMIN_TOKEN_FILE = "admin.token"  # noqa: S105 (a file name)
ENROLLMENT_TOKEN_FILE = "enrollment.token"  # noqa: S105


@dataclass(frozen=True)
class Credentials:
    admin_token: str
    enrollment_token: str


def ensure_token(storage: Storage, path: Path, kind: TokenKind) -> str:
    """The token kept in ``path``: reused when still valid, else created. Only the file's path is
    logged: log files travel further than a mode-0600 file."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    if token:
        record = storage.find_token(hash_token(token))
        if record is None:  # database recreated, file kept: the operator still holds this token
            storage.add_token(hash_token(token), kind, None, time.time_ns())
            return token
        if record.kind == kind and record.revoked is None:
            return token
    token = new_token()
    storage.add_token(hash_token(token), kind, None, time.time_ns())
    write_secret(path, token)
    log.warning("created %s token in %s", kind, path)
    return token


def open_data_dir(data_dir: Path, database: str | None = None) -> tuple[SqlStorage, Credentials]:
    """Open (and migrate) the platform's database: ``database`` (a postgresql:// URL or a SQLite
    path), by default ``data_dir/heron.db``. The token files always live in ``data_dir``."""
    if not data_dir.exists():
        data_dir.mkdir(parents=True, mode=0o700)
        os.chmod(data_dir, 0o700)  # mkdir's mode is filtered by the umask
    storage = SqlStorage.open(database or str(data_dir / DB_FILE))
    try:
        creds = Credentials(
            admin_token=ensure_token(storage, data_dir / ADMIN_TOKEN_FILE, "admin"),
            enrollment_token=ensure_token(storage, data_dir / ENROLLMENT_TOKEN_FILE, "enroll"),
        )
        db = getattr(storage, "db", None)  # the SQLAlchemy storage keeps console users
        if isinstance(db, Database):
            ensure_admin_user(db, data_dir)
    except BaseException:
        storage.close()
        raise
    return storage, creds


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def _uvicorn(storage: Storage, config: PlatformConfig | None, log_level: str) -> uvicorn.Server:
    app = create_app(storage, config)
    # log_config=None: leave the process's logging as the CLI configured it.
    return uvicorn.Server(uvicorn.Config(app, log_config=None, log_level=log_level, access_log=False,
                                         server_header=False, lifespan="on"))


DEFAULT_DATA_DIR = Path("/var/lib/heron/platform")


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, data_dir: Path = DEFAULT_DATA_DIR,
          *, config: PlatformConfig | None = None, log_level: str = "info", database: str | None = None) -> None:
    """Run the platform in the foreground until SIGINT/SIGTERM, then shut down cleanly and return.

    uvicorn serves from a thread and this thread waits for the signal: uvicorn's own handlers
    would re-raise the signal after shutdown and kill the process before storage is closed."""
    done = threading.Event()
    previous = {}
    # Handlers first: a signal that arrives while the server starts must stop it cleanly too.
    if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
        previous = {sig: signal.signal(sig, lambda *_: done.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    handle = start_in_thread(host, port, Path(data_dir), config=config, log_level=log_level, database=database)
    print(f"heron platform on {handle.url} (data in {data_dir})", file=sys.stderr, flush=True)
    try:
        while not done.is_set() and handle.thread.is_alive():
            done.wait(0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        handle.stop()


class ServerHandle:
    """A platform serving from a background thread; ``stop()`` shuts it down and closes storage."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, sock: socket.socket,
                 storage: SqlStorage, credentials: Credentials, host: str) -> None:
        self.server = server
        self.thread = thread
        self.storage = storage
        self.credentials = credentials
        self.host = host
        self.port: int = sock.getsockname()[1]
        self._sock = sock

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self._sock.close()
        if not self.thread.is_alive():
            self.storage.close()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(host: str = DEFAULT_HOST, port: int = 0, data_dir: Path = DEFAULT_DATA_DIR,
                    *, config: PlatformConfig | None = None, log_level: str = "warning",
                    timeout: float = 10.0, database: str | None = None) -> ServerHandle:
    """Start the platform in a daemon thread and return once it accepts connections.
    With ``port=0`` the kernel picks a free port: read it from ``handle.port``. ``database``: see
    ``open_data_dir``."""
    storage, creds = open_data_dir(Path(data_dir), database)
    config = dataclasses.replace(config or PlatformConfig(), data_dir=Path(data_dir))
    try:
        sock = _bind(host, port)
    except BaseException:
        storage.close()
        raise
    server = _uvicorn(storage, config, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="heron-platform",
                              daemon=True)
    thread.start()
    handle = ServerHandle(server, thread, sock, storage, creds, host)
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            handle.stop()
            raise RuntimeError(f"heron platform did not start on {host}:{port}")
        time.sleep(0.01)
    return handle
