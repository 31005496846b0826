"""The storage interface of the platform: everything the API needs, nothing SQL-specific.

``SqlStorage`` (storage/sql.py) implements it for SQLite and PostgreSQL alike.
Times are integers, nanoseconds since the epoch, like event timestamps. Implementations must be
safe to call from several threads (the API calls them from a thread pool).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from sqlalchemy.engine import Connection

from heron.platform.storage.db import Database

TokenKind = Literal["admin", "reader", "enroll", "agent"]
TOKEN_KINDS: tuple[TokenKind, ...] = ("admin", "reader", "enroll", "agent")


@dataclass(frozen=True, slots=True)
class TokenRecord:
    token_hash: str
    kind: TokenKind
    agent_id: str | None
    created: int
    revoked: int | None = None
    name: str = ""  # an API token's name, or the username of a console session
    user_id: int | None = None  # the user of a console session; None for a token


@dataclass(frozen=True, slots=True)
class AgentRecord:
    agent_id: str
    name: str
    host: str  # host facts, JSON text
    hostname: str
    version: str
    first_seen: int
    last_seen: int
    last_health: str | None  # the last agent.health event, JSON text


@dataclass(frozen=True, slots=True)
class EventRow:
    """One event ready to store: indexed columns plus the event itself as JSON."""

    type: str
    ts: int
    key: str | None
    pid: int | None
    exe: str | None
    cmdline: str | None
    data: bytes


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    agent_id: str
    hostname: str
    data: bytes  # the event as JSON


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicate: bool
    # The ``analyse`` hook failed for a non-transient reason: its work was rolled back (a savepoint),
    # the events were stored anyway (a batch that always fails analysis must not block its agent).
    analysis_error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Filters of GET /api/v1/events. ``exe`` matches the full path or its last component;
    ``text`` is a substring of exe + argv. With ``after_id`` results are ascending (follow),
    otherwise newest first."""

    type: str | None = None
    agent_id: str | None = None
    hostname: str | None = None
    key: str | None = None
    pid: int | None = None
    exe: str | None = None
    text: str | None = None
    since: int | None = None
    until: int | None = None
    after_id: int | None = None
    limit: int = 100
    types: tuple[str, ...] = field(default=())  # alternative to ``type``: any of these


class Storage(Protocol):
    db: Database  # the SQLAlchemy database every platform module writes through

    # tokens
    def add_token(self, token_hash: str, kind: TokenKind, agent_id: str | None, now: int) -> None: ...
    def find_token(self, token_hash: str) -> TokenRecord | None: ...
    def revoke_token(self, token_hash: str, now: int) -> bool: ...

    # agents
    def add_agent(self, agent: AgentRecord, token_hash: str) -> None:
        """Create the agent and its token in one transaction."""
        ...

    def update_agent(self, agent_id: str, host: str, hostname: str, version: str, now: int) -> bool: ...
    def get_agent(self, agent_id: str) -> AgentRecord | None: ...
    def list_agents(self) -> list[AgentRecord]: ...

    # events
    def has_batch(self, agent_id: str, batch_id: str) -> bool: ...
    def ingest_batch(
        self, agent_id: str, batch_id: str, events: list[EventRow], last_health: bytes | None, now: int,
        *, analyse: Callable[[Connection], None] | None = None,
    ) -> IngestResult:
        """Store the batch and its events atomically; a batch id already stored changes nothing.
        Also refreshes the agent's last_seen and, when given, its last_health. ``analyse`` runs
        inside the same transaction after the events are inserted, for a new batch only, in a
        savepoint: a transient database error fails the whole batch (``DatabaseUnavailable``), any
        other error rolls back only the analysis and is returned in ``analysis_error``."""
        ...

    def query_events(self, query: EventQuery) -> list[StoredEvent]: ...
    def delete_events_before(self, ts: int) -> int:
        """Retention: delete events with ts < ``ts`` and batch records received before it."""
        ...

    def close(self) -> None: ...
