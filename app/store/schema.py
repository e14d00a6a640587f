"""The tables, with the column types both databases share: what the queries read and write
and what Alembic compares the migrations with (``app/migrations/env.py``)."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, also on SQLite (which keeps no offset)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("ci_job_id", sa.String(64), unique=True),
    sa.Column("origin", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("tag", sa.String(32), nullable=False),
    sa.Column("queue_id", sa.String(64)),
    sa.Column("code", sa.String(128)),
    sa.Column("message", sa.Text),
    sa.Column("user_data", sa.Text),
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Column("ci_created_at", UTCDateTime),
    sa.Column("ci_started_at", UTCDateTime),
    sa.Column("ci_ended_at", UTCDateTime),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("last_notified_at", UTCDateTime),
    # submission (jobs cirelay sent to CI): the CI request as sent, the client's
    # Idempotency-Key with a digest of what it asked for, and CI's error if it refused
    sa.Column("request", sa.JSON),
    sa.Column("idempotency_key", sa.String(255), unique=True),
    sa.Column("request_digest", sa.String(64)),
    sa.Column("submit_error", sa.JSON),
    # reconciliation: when CI was last asked about this job
    sa.Column("last_polled_at", UTCDateTime),
    # tracing: the W3C traceparent of the client's submit (CIRELAY_TRACING=on), so CI's
    # callback and every delivery about the job join the submitter's trace
    sa.Column("traceparent", sa.String(55)),
    sa.Index(None, "state", "id"),
    sa.Index(None, "created_at"),
)

notifications = sa.Table(
    "notifications",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id"), nullable=False),
    sa.Column("ci_job_id", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("wire_format", sa.String(8), nullable=False),
    sa.Column("content_type", sa.String(64), nullable=False),
    sa.Column("headers", sa.JSON, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("job_id", "digest"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("seq", BigId, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(40), nullable=False, unique=True),
    sa.Column("type", sa.String(80), nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("subject", sa.String(64)),
    sa.Column("job_id", sa.String(40)),
    sa.Column("time", UTCDateTime, nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
    sa.Index(None, "job_id", "seq"),
)

quarantined_notifications = sa.Table(
    "quarantined_notifications",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("received_at", UTCDateTime, nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("job_id", sa.String(40)),
    sa.Column("content_type", sa.String(128), nullable=False),
    sa.Column("headers", sa.JSON, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("error", sa.String(64), nullable=False),
    sa.Column("reasons", sa.JSON, nullable=False),
    sa.Column("replayed_at", UTCDateTime),
    sa.Column("replay_outcome", sa.String(32)),
    # a source's writes of the last minute (CIRELAY_QUARANTINE_PER_MINUTE)
    sa.Index(None, "source", "job_id", "received_at"),
)


subscriptions = sa.Table(
    "subscriptions",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("url", sa.Text, nullable=False),
    sa.Column("event_types", sa.JSON, nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("secret", sa.String(128), nullable=False),
    sa.Column("previous_secret", sa.String(128)),
    sa.Column("previous_secret_expires_at", UTCDateTime),
    sa.Column("disabled_reason", sa.Text),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.Column("fanout_seq", BigId, nullable=False, server_default="0"),
    sa.Column("failing_since", UTCDateTime),
    sa.Column("last_failure_at", UTCDateTime),
    sa.Column("successes_in_a_row", sa.Integer, nullable=False, server_default="0"),
    # its endpoint cannot be reached: nothing before this, then one at a time until a 2xx
    sa.Column("paused_until", UTCDateTime),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column(
        "subscription_id",
        sa.String(40),
        sa.ForeignKey("subscriptions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("event_seq", BigId, sa.ForeignKey("events.seq"), nullable=False),
    # one job's deliveries to one subscription go out in event order
    sa.Column("order_key", sa.String(40)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", UTCDateTime, nullable=False),
    # a claimed delivery belongs to one worker until its lease ends (a dead worker's lapses)
    sa.Column("lease_owner", sa.String(64)),
    sa.Column("lease_until", UTCDateTime),
    sa.Column("origin", sa.String(40), nullable=False),  # "fanout", or a replay's id (rpl_…)
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("completed_at", UTCDateTime),
    sa.Column("last_status_code", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Index(None, "state", "next_attempt_at"),
    # a claim: each subscription's due deliveries, and the leased ones alone
    sa.Index(None, "subscription_id", "state", "next_attempt_at"),
    sa.Index(None, "state", "lease_until"),
    sa.Index(None, "subscription_id", "order_key", "event_seq"),
    sa.Index(None, "origin"),
)

delivery_attempts = sa.Table(
    "delivery_attempts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column(
        "delivery_id",
        BigId,
        sa.ForeignKey("deliveries.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("duration_ms", sa.Float, nullable=False),
    sa.Column("result", sa.String(24), nullable=False),
    sa.Column("status_code", sa.Integer),
    sa.Column("error", sa.Text),
)

# --- workflow instances (WorkflowFinish notifications) -------------------------------------

workflow_executions = sa.Table(
    "workflow_executions",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),  # wfx_<ULID>: sorts by arrival
    sa.Column("run_id", sa.String(64), nullable=False, unique=True),
    sa.Column("workflow_id", sa.String(80), nullable=False),
    sa.Column("workflow_name", sa.Text),
    sa.Column("bucket", sa.String(80)),
    sa.Column("object", sa.Text),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("ci_created_at", UTCDateTime),
    # cos_headers and tasks, as the API shows them
    sa.Column("detail", sa.JSON, nullable=False),
    # the notification that recorded it: a repeat with the same digest is a duplicate
    sa.Column("digest", sa.String(64), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("wire_format", sa.String(8), nullable=False),
    sa.Column("content_type", sa.String(64), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Index(None, "workflow_id", "id"),
    sa.Index(None, "state", "id"),
)

#: each instance's tasks, one row per task, linked to the jobs by CI JobId (``jobs.ci_job_id``)
workflow_tasks = sa.Table(
    "workflow_tasks",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column(
        "execution_id",
        sa.String(40),
        sa.ForeignKey("workflow_executions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("ci_job_id", sa.String(64)),
    sa.Index(None, "ci_job_id"),
    sa.Index(None, "execution_id", "position"),
)

#: every action taken in the console or the admin API (replays, retries, subscription
#: changes, rotations): who (the API key's name, never the key), when, through what
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", UTCDateTime, nullable=False, index=True),
    sa.Column("actor", sa.String(64), nullable=False),
    sa.Column("via", sa.String(16), nullable=False),  # "api", "console" or "cli"
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("subject", sa.String(80)),
    sa.Column("details", sa.JSON, nullable=False),
)
