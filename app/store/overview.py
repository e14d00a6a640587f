"""What the console's overview counts: jobs by state and notifications by outcome over a
recent window (the figures the metrics also report are :func:`app.store.figures`)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.store.schema import jobs, notifications, quarantined_notifications


def count_jobs_by_state(conn: Connection, *, since: datetime) -> dict[str, int]:
    """Jobs created since ``since``, by their state now."""
    query = (
        sa.select(jobs.c.state, sa.func.count())
        .where(jobs.c.created_at >= since)
        .group_by(jobs.c.state)
    )
    return {str(state): int(n) for state, n in conn.execute(query)}


def count_notifications_by_outcome(conn: Connection, *, since: datetime) -> dict[str, int]:
    """Notifications received since ``since``, by outcome: those recorded (accepted,
    duplicate, stale) and those quarantined (by their error)."""
    recorded = (
        sa.select(notifications.c.outcome, sa.func.count())
        .where(notifications.c.received_at >= since)
        .group_by(notifications.c.outcome)
    )
    refused = (
        sa.select(quarantined_notifications.c.error, sa.func.count())
        .where(quarantined_notifications.c.received_at >= since)
        .group_by(quarantined_notifications.c.error)
    )
    counts: dict[str, int] = {}
    for query in (recorded, refused):
        for outcome, n in conn.execute(query):
            counts[str(outcome)] = counts.get(str(outcome), 0) + int(n)
    return counts
