"""Notifications we could not accept, kept to be looked at and replayed."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.models import QuarantinedNotification, QuarantineFilter
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
    conn: Connection,
    *,
    pending_only: bool = False,
    limit: int = 100,
    which: QuarantineFilter | None = None,
    after: int | None = None,
    newest_first: bool = False,
    least_recently_replayed: bool = False,
) -> list[QuarantinedNotification]:
    """Oldest first (``after`` an id pages), or newest first (``after`` then means before),
    or for a bulk replay: never replayed first, then those replayed longest ago (so round
    after round of a bounded replay reaches every match)."""
    table = quarantined_notifications
    which = which or QuarantineFilter(pending_only=pending_only)
    query = sa.select(table).where(_matching(which)).limit(limit)
    if least_recently_replayed:
        query = query.order_by(table.c.replayed_at.is_not(None), table.c.replayed_at, table.c.id)
    elif newest_first:
        query = query.order_by(table.c.id.desc())
        if after is not None:
            query = query.where(table.c.id < after)
    else:
        query = query.order_by(table.c.id)
        if after is not None:
            query = query.where(table.c.id > after)
    return [_quarantined(m) for m in conn.execute(query).mappings()]


def count_matching_quarantined(conn: Connection, which: QuarantineFilter) -> int:
    query = sa.select(sa.func.count()).select_from(quarantined_notifications)
    return int(conn.execute(query.where(_matching(which))).scalar_one())


def _matching(which: QuarantineFilter) -> sa.ColumnElement[bool]:
    table = quarantined_notifications
    conditions: list[sa.ColumnElement[bool]] = []
    if which.pending_only:
        conditions.append(table.c.replayed_at.is_(None))
    if which.error:
        conditions.append(table.c.error == which.error)
    if which.source:
        conditions.append(table.c.source == which.source)
    if which.job_id:
        conditions.append(table.c.job_id == which.job_id)
    if which.received_after:
        conditions.append(table.c.received_at >= which.received_after)
    if which.received_before:
        conditions.append(table.c.received_at < which.received_before)
    return sa.and_(sa.true(), *conditions)


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
