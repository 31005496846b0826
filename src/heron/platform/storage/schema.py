"""The platform's tables, for SQLite and PostgreSQL alike (SQLAlchemy Core).

Times are integers, nanoseconds since the epoch (BIGINT). JSON is kept as text: both databases
store it, and the API embeds it as-is. Ids are 64-bit on PostgreSQL and SQLite's rowid alias on
SQLite (``ID``). These definitions are the current schema; ``migrations.py`` brings an older
database to it. On PostgreSQL ``events`` is range-partitioned by ``ts`` (``partitions.py``), so its
primary key is ``(id, ts)`` there.

Each area owns its tables: storage (agents..events), packages, auth (users, sessions),
graph + baselines, alerts (detections, alerts, alert_log, suppressions), notifications.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

# Autoincrementing 64-bit id; SQLite needs exactly INTEGER PRIMARY KEY for a rowid alias.
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
NS = sa.BigInteger  # ns since the epoch
TEXT = sa.Text


def _ts(name: str, nullable: bool = False) -> sa.Column[int]:
    return sa.Column(name, NS(), nullable=nullable)


# -- storage: agents, tokens, batches, events ------------------------------------------------------

agents = sa.Table(
    "agents", metadata,
    sa.Column("agent_id", TEXT, primary_key=True),
    sa.Column("name", TEXT, nullable=False, server_default=""),
    sa.Column("host", TEXT, nullable=False, server_default="{}"),  # host facts, JSON
    sa.Column("hostname", TEXT, nullable=False, server_default=""),
    sa.Column("version", TEXT, nullable=False, server_default=""),
    _ts("first_seen"),
    _ts("last_seen"),
    sa.Column("last_health", TEXT),  # last agent.health event, JSON
)

tokens = sa.Table(
    "tokens", metadata,
    sa.Column("token_hash", TEXT, primary_key=True),  # sha256 hex; the token itself is never stored
    sa.Column("kind", TEXT, nullable=False),  # admin, reader, enroll, agent
    sa.Column("agent_id", TEXT, sa.ForeignKey("agents.agent_id")),
    _ts("created"),
    _ts("revoked", nullable=True),
    # API tokens (migration 3): a name to tell them apart, who made them, last use, optional expiry.
    sa.Column("name", TEXT, nullable=False, server_default=""),
    sa.Column("user_id", sa.BigInteger, nullable=True),
    _ts("last_used", nullable=True),
    _ts("expires", nullable=True),
)

batches = sa.Table(
    "batches", metadata,
    sa.Column("agent_id", TEXT, primary_key=True),
    sa.Column("batch_id", TEXT, primary_key=True),
    _ts("received_at"),
    sa.Column("n_events", sa.Integer, nullable=False),
    sa.Index("batches_received", "received_at"),
)

events = sa.Table(
    "events", metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("agent_id", TEXT, nullable=False),
    sa.Column("hostname", TEXT, nullable=False),
    sa.Column("type", TEXT, nullable=False),
    _ts("ts"),
    sa.Column("key", TEXT),
    sa.Column("pid", sa.BigInteger),
    sa.Column("exe", TEXT),
    sa.Column("cmdline", TEXT),  # exe + argv (or the event's text), for search
    sa.Column("data", TEXT, nullable=False),  # the event as JSON
    sa.Index("events_ts_type", "ts", "type"),  # time ranges; covers the overview's per-type count
    sa.Index("events_type_id", "type", "id"),
    sa.Index("events_agent_id", "agent_id", "id"),
    sa.Index("events_host_id", "hostname", "id"),
    sa.Index("events_key", "key"),
    sa.Index("events_pid", "pid"),
    sa.Index("events_exe", "exe"),
    # A process's exec record by key (graph clusters, alert lineage and process tree); partial, so
    # only process.exec rows pay for it.
    sa.Index("events_exec_key", "agent_id", "key", "ts", sqlite_where=sa.text("type = 'process.exec'"),
             postgresql_where=sa.text("type = 'process.exec'")),
)

event_counts = sa.Table(
    "event_counts", metadata,  # events per hour, type and agent, kept by ingest (the overview reads these)
    sa.Column("hour", NS(), primary_key=True),  # start of the hour, ns
    sa.Column("type", TEXT, primary_key=True),
    sa.Column("agent_id", TEXT, primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False, server_default="0"),
)

# -- packages (heron.platform.packages) -------------------------------------------------------------

package_scopes = sa.Table(
    "package_scopes", metadata,
    sa.Column("agent_id", TEXT, primary_key=True),
    sa.Column("scope", TEXT, primary_key=True),  # 'host' or a container id
    sa.Column("container_id", TEXT),
    sa.Column("distro", TEXT, nullable=False, server_default=""),
    sa.Column("full_ts", NS(), nullable=False, server_default="0"),
    sa.Column("updated_ts", NS(), nullable=False, server_default="0"),
    sa.Column("errors", TEXT, nullable=False, server_default="[]"),
)

packages = sa.Table(
    "packages", metadata,
    sa.Column("agent_id", TEXT, primary_key=True),
    sa.Column("scope", TEXT, primary_key=True),
    sa.Column("purl", TEXT, primary_key=True),
    sa.Column("location", TEXT, primary_key=True, server_default=""),
    sa.Column("ecosystem", TEXT, nullable=False),
    sa.Column("name", TEXT, nullable=False),
    sa.Column("version", TEXT, nullable=False),
    sa.Column("data", TEXT, nullable=False),
    _ts("ts"),
    sa.Column("removed", sa.Integer, nullable=False, server_default="0"),
    sa.Index("packages_name", "ecosystem", "name"),
)

package_activity = sa.Table(
    "package_activity", metadata,
    sa.Column("agent_id", TEXT, primary_key=True),
    sa.Column("scope", TEXT, primary_key=True),
    sa.Column("purl", TEXT, primary_key=True),
    sa.Column("active", sa.Integer, nullable=False),
    sa.Column("last_used_ts", NS(), nullable=False, server_default="0"),
    _ts("ts"),
    sa.Column("processes", TEXT, nullable=False, server_default="[]"),
    sa.Column("files", TEXT, nullable=False, server_default="[]"),
)

listeners = sa.Table(
    "listeners", metadata,
    sa.Column("agent_id", TEXT, primary_key=True),
    sa.Column("protocol", TEXT, primary_key=True),
    sa.Column("addr", TEXT, primary_key=True),
    sa.Column("port", sa.Integer, primary_key=True),
    sa.Column("process_key", TEXT, primary_key=True, server_default=""),
    sa.Column("pid", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("exe", TEXT, nullable=False, server_default=""),
    sa.Column("state", TEXT, nullable=False),
    _ts("ts"),
)

# -- auth: console users and their sessions ---------------------------------------------------------

users = sa.Table(
    "users", metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("username", TEXT, nullable=False, unique=True),
    sa.Column("password_hash", TEXT, nullable=False),  # scrypt, parameters in the string
    sa.Column("role", TEXT, nullable=False),  # admin, reader
    _ts("created"),
    _ts("disabled", nullable=True),
    _ts("last_login", nullable=True),
)

sessions = sa.Table(
    "sessions", metadata,
    sa.Column("token_hash", TEXT, primary_key=True),  # sha256 of the cookie value
    sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("csrf", TEXT, nullable=False),  # sent back in X-Heron-CSRF on state-changing requests
    _ts("created"),
    _ts("expires"),
    _ts("last_seen"),
    sa.Index("sessions_user", "user_id"),
)

# -- behaviour graph and baselines (heron.platform.graph) -------------------------------------------

graph_nodes = sa.Table(
    "graph_nodes", metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("kind", TEXT, nullable=False),  # host, container, image, cluster, user, endpoint, fileclass, package
    sa.Column("key", TEXT, nullable=False),  # unique within kind
    sa.Column("label", TEXT, nullable=False, server_default=""),
    sa.Column("attrs", TEXT, nullable=False, server_default="{}"),  # JSON
    _ts("first_seen"),
    _ts("last_seen"),
    sa.Column("count", sa.BigInteger, nullable=False, server_default="0"),
    sa.UniqueConstraint("kind", "key", name="graph_nodes_kind_key"),
)

graph_edges = sa.Table(
    "graph_edges", metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("src", sa.BigInteger, nullable=False),  # graph_nodes.id
    sa.Column("dst", sa.BigInteger, nullable=False),
    sa.Column("kind", TEXT, nullable=False),  # spawned, connected, listened, resolved, wrote, uses, runs_on, ...
    sa.Column("agent_id", TEXT, nullable=False),  # per host; fleet-wide views aggregate over it
    _ts("first_seen"),
    _ts("last_seen"),
    sa.Column("count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("baseline", TEXT, nullable=False, server_default="learned"),  # learned, new, expected
    sa.UniqueConstraint("src", "dst", "kind", "agent_id", name="graph_edges_key"),
    sa.Index("graph_edges_dst", "dst"),
    sa.Index("graph_edges_last", "last_seen"),
)

baselines = sa.Table(
    "baselines", metadata,
    sa.Column("cluster", sa.BigInteger, primary_key=True),  # graph_nodes.id of a process cluster
    _ts("learning_since"),
    _ts("learning_until"),
    _ts("reset_at", nullable=True),
    sa.Column("reset_by", TEXT, nullable=True),
)

# -- alerts (heron.platform.alerts) -----------------------------------------------------------------

alerts = sa.Table(
    "alerts", metadata,  # an incident: related detections grouped
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("group_key", TEXT, nullable=False),
    sa.Column("agent_id", TEXT, nullable=False),
    sa.Column("hostname", TEXT, nullable=False),
    sa.Column("title", TEXT, nullable=False),
    sa.Column("kind", TEXT, nullable=False),  # rule, anomaly (of the first detection)
    sa.Column("rule", TEXT, nullable=False, server_default=""),  # rule name or anomaly kind of the first detection
    sa.Column("severity", TEXT, nullable=False),  # the highest of its detections
    sa.Column("score", sa.Float, nullable=False, server_default="0"),
    sa.Column("state", TEXT, nullable=False, server_default="open"),  # open, acknowledged, closed
    sa.Column("pid", sa.BigInteger),
    sa.Column("exe", TEXT),
    sa.Column("process_key", TEXT),
    sa.Column("container_id", TEXT),
    _ts("first_ts"),  # the first detection's event time
    _ts("last_ts"),
    _ts("created"),
    _ts("updated"),
    sa.Column("n_detections", sa.Integer, nullable=False, server_default="0"),
    sa.Column("tags", TEXT, nullable=False, server_default="[]"),
    # Grouping (heron.platform.alerts.grouping): the process keys of its detections and of their
    # ancestors, JSON lists, capped.
    sa.Column("process_keys", TEXT, nullable=False, server_default="[]"),
    sa.Column("ancestor_keys", TEXT, nullable=False, server_default="[]"),
    sa.Index("alerts_group", "group_key", "state"),
    sa.Index("alerts_agent_state", "agent_id", "state", "last_ts"),
    sa.Index("alerts_state_updated", "state", "updated"),
    sa.Index("alerts_last", "last_ts"),
)

detections = sa.Table(
    "detections", metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("alert_id", sa.BigInteger, nullable=False),
    sa.Column("kind", TEXT, nullable=False),  # rule, anomaly
    sa.Column("name", TEXT, nullable=False),  # rule name or anomaly kind
    sa.Column("severity", TEXT, nullable=False),
    sa.Column("score", sa.Float, nullable=False, server_default="0"),
    sa.Column("agent_id", TEXT, nullable=False),
    sa.Column("hostname", TEXT, nullable=False),
    _ts("ts"),  # the event's time
    _ts("received"),
    sa.Column("pid", sa.BigInteger),
    sa.Column("exe", TEXT),
    sa.Column("process_key", TEXT),
    sa.Column("summary", TEXT, nullable=False, server_default=""),
    sa.Column("tags", TEXT, nullable=False, server_default="[]"),
    sa.Column("event", TEXT, nullable=False),  # the triggering event, JSON (outlives event retention)
    sa.Column("dedupe_key", TEXT, nullable=False),
    sa.Column("count", sa.Integer, nullable=False, server_default="1"),  # duplicates folded into it
    _ts("last_ts", nullable=True),  # the last duplicate's time
    sa.Column("evidence", TEXT, nullable=False, server_default="{}"),  # JSON, e.g. an anomaly's edge
    sa.Column("cluster", sa.BigInteger, nullable=True),  # graph_nodes.id of the process cluster
    sa.Index("detections_alert", "alert_id", "ts"),
    sa.Index("detections_dedupe", "dedupe_key"),
)

alert_log = sa.Table(
    "alert_log", metadata,  # who changed an alert's state, and why
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("alert_id", sa.BigInteger, nullable=False),
    _ts("ts"),
    sa.Column("actor", TEXT, nullable=False),
    sa.Column("action", TEXT, nullable=False),
    sa.Column("note", TEXT, nullable=False, server_default=""),
    sa.Index("alert_log_alert", "alert_id"),
)

suppressions = sa.Table(
    "suppressions", metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("name", TEXT, nullable=False),
    sa.Column("rule", TEXT, nullable=False, server_default=""),  # rule name / anomaly kind; '' any
    sa.Column("condition", TEXT, nullable=False, server_default=""),  # rule-language condition; '' any
    sa.Column("hostname", TEXT, nullable=False, server_default=""),  # glob; '' any
    sa.Column("created_by", TEXT, nullable=False, server_default=""),
    _ts("created"),
    _ts("expires", nullable=True),
    sa.Column("enabled", sa.Integer, nullable=False, server_default="1"),
    sa.Column("hits", sa.BigInteger, nullable=False, server_default="0"),
    _ts("last_hit", nullable=True),
)

# -- notifications (heron.platform.alerts.notify) ---------------------------------------------------

notification_channels = sa.Table(
    "notification_channels", metadata,
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("name", TEXT, nullable=False, unique=True),
    sa.Column("kind", TEXT, nullable=False),  # webhook, syslog
    sa.Column("config", TEXT, nullable=False, server_default="{}"),  # JSON: url / address, ...
    sa.Column("min_severity", TEXT, nullable=False, server_default="high"),
    sa.Column("enabled", sa.Integer, nullable=False, server_default="1"),
    _ts("created"),
)

notifications = sa.Table(
    "notifications", metadata,  # the outbox: one row per (channel, alert event), retried until sent
    sa.Column("id", ID, primary_key=True, autoincrement=True),
    sa.Column("channel_id", sa.BigInteger, nullable=False),
    sa.Column("alert_id", sa.BigInteger, nullable=False),
    sa.Column("payload", TEXT, nullable=False),  # JSON
    sa.Column("state", TEXT, nullable=False, server_default="pending"),  # pending, sent, failed
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    _ts("next_attempt"),
    _ts("claimed_until", nullable=True),  # lease: one server sends it even when several run
    sa.Column("last_error", TEXT, nullable=False, server_default=""),
    _ts("created"),
    _ts("sent", nullable=True),
    sa.Index("notifications_due", "state", "next_attempt"),
)

schema_version = sa.Table(
    "schema_version", metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    _ts("applied", nullable=True),
)
