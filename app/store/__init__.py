"""Tables and queries (SQLAlchemy Core): the only package that builds SQL.

Works unchanged on SQLite (the embedded default, WAL, ``synchronous=FULL`` so a commit is on
disk before we answer) and on PostgreSQL (psycopg 3). Functions take an open connection inside
a transaction the caller owns; they return models from :mod:`app.models`, never rows. Callers
use this package's names (``store.get_job``); the modules are where each lives:

- :mod:`~app.store.schema`: the tables and ``metadata`` (what Alembic compares with);
- :mod:`~app.store.engine`: engines, transactions, SQLite's writer lock, the JSON codec,
  which errors mean "unavailable" or "try again", psycopg's pipeline, the events lock;
- :mod:`~app.store.batched`: the group committer's many-row writes (``executemany``);
- :mod:`~app.store.job`: jobs and the notifications recorded for them;
- :mod:`~app.store.outbox`: events;
- :mod:`~app.store.quarantine`: notifications kept aside to be replayed;
- :mod:`~app.store.subscription`: subscriptions, their fan-out cursors and failures;
- :mod:`~app.store.delivery`: fan-out, replays, claims and leases, pruning, figures;
- :mod:`~app.store.workflow`: workflow instances and their tasks;
- :mod:`~app.store.delivery_filter`: deliveries by a filter: listed, counted, retried;
- :mod:`~app.store.overview`: jobs by state and notifications by outcome, recently;
- :mod:`~app.store.audit`: the audit log of actions taken in the console and the admin API.

Module names are singular so that none hides a table of the same name (``store.jobs`` is the
table).
"""

from app.store.audit import insert_audit, list_audit
from app.store.batched import insert_events, insert_jobs, insert_notifications, update_jobs
from app.store.delivery import (
    bring_forward,
    claim_deliveries,
    enqueue_replay,
    fan_out,
    figures,
    finish_attempts,
    has_claimable,
    progress,
    prune_deliveries,
    renew_leases,
)
from app.store.delivery_filter import count_retryable, list_deliveries, retry_deliveries
from app.store.engine import (
    EVENTS_CHANNEL,
    KEEPALIVE,
    READY_TIMEOUT_SECONDS,
    DatabaseTimeouts,
    HeldConnection,
    WriterLock,
    check_database,
    create_engine,
    hold_events_lock,
    is_transient,
    is_unavailable,
    json_dumps,
    json_loads,
    listening_connection,
    ping,
    pipelined,
    raising_unavailable,
    sqlite_file,
    transaction,
    unavailable_error,
    watch_pool,
)
from app.store.job import (
    NOTIFIED_COLUMNS,
    find_job,
    find_job_by_idempotency_key,
    get_job,
    insert_job,
    job_traceparent,
    job_values,
    list_jobs,
    list_notifications,
    list_silent_jobs,
    list_unbound_jobs,
    lock_jobs,
    mark_polled,
    update_job,
)
from app.store.outbox import events_head, find_event, insert_event, list_events
from app.store.overview import count_jobs_by_state, count_notifications_by_outcome
from app.store.quarantine import (
    count_matching_quarantined,
    count_quarantined,
    count_recent_quarantined,
    get_quarantined,
    insert_quarantined,
    list_quarantined,
    mark_replayed,
)
from app.store.schema import (
    BigId,
    UTCDateTime,
    audit_log,
    deliveries,
    delivery_attempts,
    events,
    jobs,
    metadata,
    notifications,
    quarantined_notifications,
    subscriptions,
    workflow_executions,
    workflow_tasks,
)
from app.store.subscription import (
    behind_head,
    delete_subscription,
    disable_subscription,
    get_subscription,
    head_and_behind,
    insert_subscription,
    list_subscriptions,
    record_failure,
    record_success,
    subscriptions_to_fan_out,
    update_subscription,
)
from app.store.workflow import (
    execution_digests,
    execution_values,
    get_execution,
    insert_executions,
    job_ids_by_ci_id,
    list_executions,
)

__all__ = [
    "EVENTS_CHANNEL",
    "KEEPALIVE",
    "NOTIFIED_COLUMNS",
    "READY_TIMEOUT_SECONDS",
    "BigId",
    "DatabaseTimeouts",
    "HeldConnection",
    "UTCDateTime",
    "WriterLock",
    "audit_log",
    "behind_head",
    "bring_forward",
    "check_database",
    "claim_deliveries",
    "count_jobs_by_state",
    "count_matching_quarantined",
    "count_notifications_by_outcome",
    "count_quarantined",
    "count_recent_quarantined",
    "count_retryable",
    "create_engine",
    "delete_subscription",
    "deliveries",
    "delivery_attempts",
    "disable_subscription",
    "enqueue_replay",
    "events",
    "events_head",
    "execution_digests",
    "execution_values",
    "fan_out",
    "figures",
    "find_event",
    "find_job",
    "find_job_by_idempotency_key",
    "finish_attempts",
    "get_execution",
    "get_job",
    "get_quarantined",
    "get_subscription",
    "has_claimable",
    "head_and_behind",
    "hold_events_lock",
    "insert_audit",
    "insert_event",
    "insert_events",
    "insert_executions",
    "insert_job",
    "insert_jobs",
    "insert_notifications",
    "insert_quarantined",
    "insert_subscription",
    "is_transient",
    "is_unavailable",
    "job_ids_by_ci_id",
    "job_traceparent",
    "job_values",
    "jobs",
    "json_dumps",
    "json_loads",
    "list_audit",
    "list_deliveries",
    "list_events",
    "list_executions",
    "list_jobs",
    "list_notifications",
    "list_quarantined",
    "list_silent_jobs",
    "list_subscriptions",
    "list_unbound_jobs",
    "listening_connection",
    "lock_jobs",
    "mark_polled",
    "mark_replayed",
    "metadata",
    "notifications",
    "ping",
    "pipelined",
    "progress",
    "prune_deliveries",
    "quarantined_notifications",
    "raising_unavailable",
    "record_failure",
    "record_success",
    "renew_leases",
    "retry_deliveries",
    "sqlite_file",
    "subscriptions",
    "subscriptions_to_fan_out",
    "transaction",
    "unavailable_error",
    "update_job",
    "update_jobs",
    "update_subscription",
    "watch_pool",
    "workflow_executions",
    "workflow_tasks",
]
