"""Subscriptions: their settings, their fan-out cursors and whether they are failing."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.models import Subscription
from app.store.schema import subscriptions


def insert_subscription(conn: Connection, item: Subscription) -> None:
    conn.execute(sa.insert(subscriptions).values(**dataclasses.asdict(item)))


def get_subscription(conn: Connection, ident: str) -> Subscription | None:
    row = conn.execute(sa.select(subscriptions).where(subscriptions.c.id == ident)).mappings()
    found = row.first()
    return Subscription(**dict(found)) if found else None


def list_subscriptions(conn: Connection) -> list[Subscription]:
    rows = conn.execute(sa.select(subscriptions).order_by(subscriptions.c.id)).mappings()
    return [Subscription(**dict(m)) for m in rows]


def update_subscription(conn: Connection, ident: str, values: dict[str, Any]) -> bool:
    query = sa.update(subscriptions).where(subscriptions.c.id == ident).values(**values)
    return bool(conn.execute(query).rowcount)


def delete_subscription(conn: Connection, ident: str) -> bool:
    query = sa.delete(subscriptions).where(subscriptions.c.id == ident)
    return bool(conn.execute(query).rowcount)


def any_behind(conn: Connection, head: int) -> bool:
    """Whether an enabled subscription's fan-out cursor is behind ``head`` (a cheap read)."""
    query = sa.select(subscriptions.c.id).where(
        subscriptions.c.enabled, subscriptions.c.fanout_seq < head
    )
    return conn.execute(query.limit(1)).first() is not None


def subscriptions_to_fan_out(conn: Connection, head: int) -> list[Subscription]:
    """Enabled subscriptions whose fan-out cursor is behind ``head``, locked for this
    transaction; on PostgreSQL, those another worker holds are skipped."""
    query = (
        sa.select(subscriptions)
        .where(subscriptions.c.enabled, subscriptions.c.fanout_seq < head)
        .order_by(subscriptions.c.id)
        .with_for_update(skip_locked=True)
    )
    return [Subscription(**dict(m)) for m in conn.execute(query).mappings()]


def record_failure(
    conn: Connection, subscription_id: str, now: datetime, *, pause_until: datetime | None = None
) -> datetime | None:
    """Note a failed attempt (with ``pause_until``, one of the endpoint's own: no delivery
    before then); returns since when the subscription has been failing (``None`` when it is
    gone)."""
    values: dict[str, Any] = {
        "failing_since": sa.func.coalesce(subscriptions.c.failing_since, now),
        "last_failure_at": now,
        "successes_in_a_row": 0,
    }
    if pause_until is not None:
        values["paused_until"] = pause_until
    conn.execute(
        sa.update(subscriptions).where(subscriptions.c.id == subscription_id).values(values)
    )
    query = sa.select(subscriptions.c.failing_since).where(subscriptions.c.id == subscription_id)
    value: datetime | None = conn.execute(query).scalar_one_or_none()
    return value


def record_success(
    conn: Connection, subscription_id: str, count: int, *, streak: int, quiet_since: datetime
) -> None:
    """Note ``count`` 2xx in a row (which ends a pause); a failing subscription is healthy
    again after ``streak`` in a row, or when its last failure was before ``quiet_since``."""
    row = subscriptions.c
    conn.execute(
        sa.update(subscriptions)
        .where(row.id == subscription_id)
        .values(successes_in_a_row=row.successes_in_a_row + count, paused_until=None)
    )
    conn.execute(
        sa.update(subscriptions)
        .where(
            row.id == subscription_id,
            row.failing_since.is_not(None),
            sa.or_(row.successes_in_a_row >= streak, row.last_failure_at < quiet_since),
        )
        .values(failing_since=None)
    )


def disable_subscription(
    conn: Connection, subscription_id: str, reason: str, now: datetime
) -> bool:
    """Disable an enabled subscription; False when it was not enabled (or is gone)."""
    result = conn.execute(
        sa.update(subscriptions)
        .where(subscriptions.c.id == subscription_id, subscriptions.c.enabled)
        .values(enabled=False, disabled_reason=reason, updated_at=now)
    )
    return bool(result.rowcount)
