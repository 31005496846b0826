"""One database handle for SQLite and PostgreSQL (SQLAlchemy Core): engines, transactions, dialect helpers.

Every platform module talks SQL through a ``Database``: ``with db.begin() as conn`` for a write
transaction, ``with db.read() as conn`` for reads. Statements are SQLAlchemy Core expressions over
the tables of ``heron.platform.storage.schema``, so one code path serves both databases; the few
places that differ (upserts, partitions) ask ``db.dialect``. Errors that may pass (connection lost,
serialization failure, deadlock, a busy SQLite) become ``DatabaseUnavailable`` (answered 503, the
agent resends); any other database error stays what it is (``is_transient``).

SQLite: writes take ``BEGIN IMMEDIATE`` (a writer waits for the lock up front instead of failing
half-way on an upgrade from a read lock) and are serialised in-process by a lock, so concurrent
API threads queue instead of spinning on ``SQLITE_BUSY``; readers use their own connections (WAL).
PostgreSQL: a connection pool; several ``heron server`` processes on several machines share it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine

Dialect = Literal["sqlite", "postgresql"]


class DatabaseUnavailable(Exception):
    """The database cannot be reached or refused the work for a transient reason: retry later."""


# SQLSTATEs worth a retry: connection exceptions (08*), serialization failure, deadlock, lock wait
# timeout (our own ``lock_timeout``), too many connections, operator intervention (shutdown,
# restart: 57P0*). Anything else (a value too large for an index, a constraint, a bug) fails
# the same way on every retry, so it is a real error, not "unavailable".
_TRANSIENT_STATES = ("40001", "40P01", "55P03", "53300")
_TRANSIENT_CLASSES = ("08", "57P0")
_SQLITE_TRANSIENT = ("database is locked", "database is busy", "database table is locked")


def is_transient(error: BaseException) -> bool:
    """Whether a database error may go away on retry (the caller answers 503, an agent resends)."""
    if isinstance(error, sa.exc.TimeoutError | sa.exc.DisconnectionError):  # pool exhausted, connection lost
        return True
    if not isinstance(error, sa.exc.DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    orig = error.orig
    state = getattr(orig, "sqlstate", None)
    if isinstance(state, str) and state:
        return state in _TRANSIENT_STATES or state.startswith(_TRANSIENT_CLASSES)
    if type(orig).__module__.startswith("psycopg"):
        # no SQLSTATE: the client's own error (could not connect, connection closed)
        return isinstance(error, sa.exc.OperationalError | sa.exc.InterfaceError)
    code = getattr(orig, "sqlite_errorcode", None)  # sqlite3: SQLITE_BUSY (5), SQLITE_LOCKED (6)
    if isinstance(code, int):
        return code & 0xFF in (5, 6)
    message = str(orig).lower()
    return isinstance(error, sa.exc.OperationalError) and any(m in message for m in _SQLITE_TRANSIENT)


def _unavailable(error: BaseException) -> DatabaseUnavailable:
    orig = getattr(error, "orig", None)
    return DatabaseUnavailable(str(orig) if orig is not None else str(error))


def normalise_url(url: str) -> str:
    """Accept ``postgresql://`` / ``postgres://`` and a plain SQLite path; use the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    if "://" not in url:
        return "sqlite:///" + url
    return url


class Database:
    def __init__(self, url: str, *, pool_size: int = 5) -> None:
        self.url = normalise_url(url)
        backend = sa.engine.make_url(self.url).get_backend_name()
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database {backend!r}: use a SQLite path or postgresql://")
        self.dialect: Dialect = "sqlite" if backend == "sqlite" else "postgresql"
        self._write_lock = threading.Lock()
        if self.dialect == "sqlite":
            path = sa.engine.make_url(self.url).database or ":memory:"
            if path != ":memory:":
                # Create the file 0600 ourselves: sqlite would use the umask.
                os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            self.path: str | None = path
            self.engine = self._sqlite_engine(immediate=True)
            self.read_engine = self._sqlite_engine(immediate=False)
        else:
            self.path = None
            self.engine = sa.create_engine(self.url, pool_size=pool_size, max_overflow=pool_size,
                                           pool_pre_ping=True, pool_recycle=1800)
            self.read_engine = self.engine

    def _sqlite_engine(self, *, immediate: bool) -> Engine:
        engine = sa.create_engine(self.url, connect_args={"check_same_thread": False, "timeout": 30.0},
                                  poolclass=sa.pool.QueuePool, pool_size=4, max_overflow=8)

        @sa_event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (pysqlite's own is deferred)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @sa_event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A write transaction: committed when the block ends, rolled back if it raises."""
        try:
            if self.dialect == "sqlite":
                with self._write_lock, self.engine.begin() as conn:
                    yield conn
            else:
                with self.engine.begin() as conn:
                    yield conn
        except (sa.exc.DBAPIError, sa.exc.TimeoutError, sa.exc.DisconnectionError) as e:
            if is_transient(e):
                raise _unavailable(e) from e
            raise

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (a consistent snapshot on both databases)."""
        try:
            with self.read_engine.begin() as conn:
                yield conn
        except (sa.exc.DBAPIError, sa.exc.TimeoutError, sa.exc.DisconnectionError) as e:
            if is_transient(e):
                raise _unavailable(e) from e
            raise

    # -- dialect helpers ---------------------------------------------------------------------------
    def insert(self, table: sa.Table) -> Any:
        """An INSERT that supports ``.on_conflict_do_nothing`` / ``.on_conflict_do_update`` on both
        databases (their syntax is the same: ``index_elements=``, ``set_=``, ``excluded``)."""
        return (sqlite_dialect.insert(table) if self.dialect == "sqlite" else pg.insert(table))

    def close(self) -> None:
        self.engine.dispose()
        if self.read_engine is not self.engine:
            self.read_engine.dispose()
