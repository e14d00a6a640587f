"""Subscriptions: their settings, their fan-out cursors and whether they are failing."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.models import Subscription
from app.store.schema import UTCDateTime, events, subscriptions


def insert_subscription(conn: Connection, item: Subscription) -> None:
    conn.execute(sa.insert(subscriptions).values(**dataclasses.asdict(item)))


def get_subscription(conn: Connection, ident: str) -> Subscription | None:
    found = conn.execute(_BY_ID, {"ident": ident}).mappings().first()
    return Subscription(**found) if found else None


_BY_ID = sa.select(subscriptions).where(
    subscriptions.c.id == sa.bindparam("ident", type_=sa.String)
)


def list_subscriptions(conn: Connection) -> list[Subscription]:
    rows = conn.execute(sa.select(subscriptions).order_by(subscriptions.c.id)).mappings()
    return [Subscription(**dict(m)) for m in rows]


def update_subscription(conn: Connection, ident: str, values: dict[str, Any]) -> bool:
    query = sa.update(subscriptions).where(subscriptions.c.id == ident).values(**values)
    return bool(conn.execute(query).rowcount)


def delete_subscription(conn: Connection, ident: str) -> bool:
    query = sa.delete(subscriptions).where(subscriptions.c.id == ident)
    return bool(conn.execute(query).rowcount)


def head_and_behind(conn: Connection, now: datetime) -> tuple[int, bool]:
    """The sequence number of the newest event (0 when there is none), and whether a
    subscription to fan out is behind it (see :func:`subscriptions_to_fan_out`): one read."""
    head, behind = conn.execute(_HEAD_AND_BEHIND, {"now": now}).one()
    return int(head), bool(behind)


def subscriptions_to_fan_out(conn: Connection, head: int, now: datetime) -> list[Subscription]:
    """Enabled subscriptions whose fan-out cursor is behind ``head``, locked for this
    transaction; on PostgreSQL, those another worker holds are skipped. A paused one (its
    endpoint cannot be reached) is not among them until its pause ends: its new events
    could not go before then, and fanning them out one round at a time would cost every
    round a subscription that delivers nothing (the backlog's oldest delivery, the one that
    failed, still ages meanwhile)."""
    params = {"head": head, "now": now}
    return [Subscription(**m) for m in conn.execute(_TO_FAN_OUT, params).mappings()]


def behind_head(conn: Connection, now: datetime) -> tuple[int, list[Subscription]]:
    """PostgreSQL's round, in one read (one round trip to the server where
    :func:`head_and_behind` then :func:`subscriptions_to_fan_out` take two): the
    subscriptions to fan out, locked as that function locks them, and the newest event's
    sequence number; ``(0, [])`` when none is behind."""
    rows = conn.execute(_BEHIND_HEAD, {"now": now}).mappings().all()
    if not rows:
        return 0, []
    head = int(rows[0]["head"])
    return head, [Subscription(**{k: v for k, v in m.items() if k != "head"}) for m in rows]


#: built once: a worker runs these every round (building a statement costs more than
#: running it)
_TO_FAN_OUT_NOW = sa.and_(
    subscriptions.c.enabled,
    sa.or_(
        subscriptions.c.paused_until.is_(None),
        subscriptions.c.paused_until <= sa.bindparam("now", type_=UTCDateTime),
    ),
)
_HEAD = sa.select(sa.func.coalesce(sa.func.max(events.c.seq), 0)).scalar_subquery()
_HEAD_AND_BEHIND = sa.select(
    _HEAD, sa.exists().where(_TO_FAN_OUT_NOW, subscriptions.c.fanout_seq < _HEAD)
)
_TO_FAN_OUT = (
    sa.select(subscriptions)
    .where(_TO_FAN_OUT_NOW, subscriptions.c.fanout_seq < sa.bindparam("head", type_=sa.Integer))
    .order_by(subscriptions.c.id)
    .with_for_update(skip_locked=True)
)
_BEHIND_HEAD = (
    sa.select(subscriptions, _HEAD.label("head"))
    .where(_TO_FAN_OUT_NOW, subscriptions.c.fanout_seq < _HEAD)
    .order_by(subscriptions.c.id)
    .with_for_update(skip_locked=True, of=subscriptions)
)


def record_failure(
    conn: Connection, subscription_id: str, now: datetime, *, pause_until: datetime | None = None
) -> datetime | None:
    """Note a failed attempt (with ``pause_until``, one of the endpoint's own: no delivery
    before then); returns since when the subscription has been failing (``None`` when it is
    gone)."""
    params = {"sid": subscription_id, "now": now, "pause_until": pause_until}
    conn.execute(_FAILED, params)
    value: datetime | None = conn.execute(_FAILING_SINCE, params).scalar_one_or_none()
    return value


def record_success(
    conn: Connection, subscription_id: str, count: int, *, streak: int, quiet_since: datetime
) -> None:
    """Note ``count`` 2xx in a row (which ends a pause); a failing subscription is healthy
    again after ``streak`` in a row, or when its last failure was before ``quiet_since``."""
    params = {"sid": subscription_id, "count": count, "streak": streak, "quiet": quiet_since}
    conn.execute(_SUCCEEDED, params)


_ROW = subscriptions.c
_THIS = _ROW.id == sa.bindparam("sid", type_=sa.String)
_NOW = sa.bindparam("now", type_=UTCDateTime)
_FAILED = (
    sa.update(subscriptions)
    .where(_THIS)
    .values(
        failing_since=sa.func.coalesce(_ROW.failing_since, _NOW),
        last_failure_at=_NOW,
        successes_in_a_row=0,
        # no pause given: the one it has (if any) stands
        paused_until=sa.func.coalesce(
            sa.bindparam("pause_until", type_=UTCDateTime), _ROW.paused_until
        ),
    )
)
_FAILING_SINCE = sa.select(_ROW.failing_since).where(_THIS)
_SUCCEEDED = (
    sa.update(subscriptions)
    .where(_THIS)
    .values(
        successes_in_a_row=_ROW.successes_in_a_row + sa.bindparam("count", type_=sa.Integer),
        paused_until=None,
        # healthy again (the right-hand sides read the row as it was)
        failing_since=sa.case(
            (
                sa.or_(
                    _ROW.successes_in_a_row + sa.bindparam("count", type_=sa.Integer)
                    >= sa.bindparam("streak", type_=sa.Integer),
                    _ROW.last_failure_at < sa.bindparam("quiet", type_=UTCDateTime),
                ),
                None,
            ),
            else_=_ROW.failing_since,
        ),
    )
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
