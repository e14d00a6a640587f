"""Notifications we could not accept, kept to be looked at and replayed."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.models import QuarantinedNotification
from app.store.schema import quarantined_notifications


def _quarantined(m: sa.RowMapping) -> QuarantinedNotification:
    return QuarantinedNotification(**dict(m))


def insert_quarantined(conn: Connection, item: QuarantinedNotification) -> QuarantinedNotification:
    """Store ``item`` (its ``id`` is ignored); returns it with the id it was given."""
    values = {k: v for k, v in dataclasses.asdict(item).items() if k != "id"}
    result = conn.execute(
        sa.insert(quarantined_notifications)
        .values(**values)
        .returning(quarantined_notifications.c.id)
    )
    return dataclasses.replace(item, id=int(result.scalar_one()))


def count_recent_quarantined(
    conn: Connection, *, source: str, job_id: str | None, since: datetime
) -> int:
    """Rows ``source`` (and ``job_id``: a callback's job, None for the queue) stored after
    ``since``; index ``(source, job_id, received_at)``."""
    table = quarantined_notifications
    same_job = table.c.job_id.is_(None) if job_id is None else table.c.job_id == job_id
    query = sa.select(sa.func.count()).where(
        table.c.source == source, same_job, table.c.received_at > since
    )
    return int(conn.execute(query).scalar_one())


def get_quarantined(conn: Connection, ident: int) -> QuarantinedNotification | None:
    query = sa.select(quarantined_notifications).where(quarantined_notifications.c.id == ident)
    row = conn.execute(query).mappings().first()
    return _quarantined(row) if row else None


def list_quarantined(
    conn: Connection, *, pending_only: bool = False, limit: int = 100
) -> list[QuarantinedNotification]:
    query = (
        sa.select(quarantined_notifications).order_by(quarantined_notifications.c.id).limit(limit)
    )
    if pending_only:
        query = query.where(quarantined_notifications.c.replayed_at.is_(None))
    return [_quarantined(m) for m in conn.execute(query).mappings()]


def mark_replayed(conn: Connection, ident: int, at: datetime, outcome: str) -> None:
    conn.execute(
        sa.update(quarantined_notifications)
        .where(quarantined_notifications.c.id == ident)
        .values(replayed_at=at, replay_outcome=outcome)
    )


def count_quarantined(conn: Connection) -> int:
    """Quarantined notifications not yet replayed successfully."""
    query = sa.select(sa.func.count()).where(
        sa.or_(
            quarantined_notifications.c.replayed_at.is_(None),
            quarantined_notifications.c.replay_outcome.in_(["schema_violation", "malformed"]),
        )
    )
    return int(conn.execute(query).scalar_one())
