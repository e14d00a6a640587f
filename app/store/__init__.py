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
- :mod:`~app.store.delivery`: fan-out, replays, claims and leases, pruning, figures.

Module names are singular so that none hides a table of the same name (``store.jobs`` is the
table).
"""

from app.store.batched import insert_events, insert_jobs, insert_notifications, update_jobs
from app.store.delivery import (
    bring_forward,
    claim_deliveries,
    enqueue_replay,
    fan_out,
    figures,
    finish_attempts,
    has_claimable,
    list_deliveries,
    progress,
    prune_deliveries,
    renew_leases,
)
from app.store.engine import (
    EVENTS_CHANNEL,
    KEEPALIVE,
    DatabaseTimeouts,
    HeldConnection,
    WriterLock,
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
    transaction,
    unavailable_error,
)
from app.store.job import (
    NOTIFIED_COLUMNS,
    find_job,
    find_job_by_idempotency_key,
    get_job,
    insert_job,
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
from app.store.quarantine import (
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
    deliveries,
    delivery_attempts,
    events,
    jobs,
    metadata,
    notifications,
    quarantined_notifications,
    subscriptions,
)
from app.store.subscription import (
    any_behind,
    delete_subscription,
    disable_subscription,
    get_subscription,
    insert_subscription,
    list_subscriptions,
    record_failure,
    record_success,
    subscriptions_to_fan_out,
    update_subscription,
)

__all__ = [
    "EVENTS_CHANNEL",
    "KEEPALIVE",
    "NOTIFIED_COLUMNS",
    "BigId",
    "DatabaseTimeouts",
    "HeldConnection",
    "UTCDateTime",
    "WriterLock",
    "any_behind",
    "bring_forward",
    "claim_deliveries",
    "count_quarantined",
    "count_recent_quarantined",
    "create_engine",
    "delete_subscription",
    "deliveries",
    "delivery_attempts",
    "disable_subscription",
    "enqueue_replay",
    "events",
    "events_head",
    "fan_out",
    "figures",
    "find_event",
    "find_job",
    "find_job_by_idempotency_key",
    "finish_attempts",
    "get_job",
    "get_quarantined",
    "get_subscription",
    "has_claimable",
    "hold_events_lock",
    "insert_event",
    "insert_events",
    "insert_job",
    "insert_jobs",
    "insert_notifications",
    "insert_quarantined",
    "insert_subscription",
    "is_transient",
    "is_unavailable",
    "job_values",
    "jobs",
    "json_dumps",
    "json_loads",
    "list_deliveries",
    "list_events",
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
    "subscriptions",
    "subscriptions_to_fan_out",
    "transaction",
    "unavailable_error",
    "update_job",
    "update_jobs",
    "update_subscription",
]
