"""Deliveries found by a filter (:class:`~app.models.DeliveryFilter`): listed with every
attempt, counted, and sent again — the one query behind the deliveries API, the console's
pages and "retry every failed delivery that matches"."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.models import Delivery, DeliveryAttempt, DeliveryFilter, DeliveryState
from app.store.schema import deliveries, delivery_attempts, events


def _matching(which: DeliveryFilter) -> sa.ColumnElement[bool]:
    conditions: list[sa.ColumnElement[bool]] = []
    if which.subscription_id is not None:
        conditions.append(deliveries.c.subscription_id == which.subscription_id)
    if which.delivery_id is not None:
        conditions.append(deliveries.c.id == which.delivery_id)
    if which.states:
        conditions.append(deliveries.c.state.in_(list(which.states)))
    if which.job_id is not None:  # a delivery's order key is its event's job
        conditions.append(deliveries.c.order_key == which.job_id)
    if which.created_after is not None:
        conditions.append(deliveries.c.created_at >= which.created_after)
    if which.created_before is not None:
        conditions.append(deliveries.c.created_at < which.created_before)
    return sa.and_(sa.true(), *conditions)


def list_deliveries(
    conn: Connection, *, which: DeliveryFilter, before: int | None = None, limit: int = 50
) -> list[Delivery]:
    """The deliveries ``which`` selects, newest first, each with its attempts; ``before`` (a
    delivery id) pages."""
    query = (
        sa.select(deliveries, events.c.id.label("event_id"), events.c.type.label("event_type"))
        .join(events, events.c.seq == deliveries.c.event_seq)
        .where(_matching(which))
        .order_by(deliveries.c.id.desc())
        .limit(limit)
    )
    if before is not None:
        query = query.where(deliveries.c.id < before)
    rows = list(conn.execute(query).mappings())
    history: dict[int, list[DeliveryAttempt]] = {}
    if rows:
        attempts_query = (
            sa.select(delivery_attempts)
            .where(delivery_attempts.c.delivery_id.in_([r["id"] for r in rows]))
            .order_by(delivery_attempts.c.id)
        )
        for a in conn.execute(attempts_query).mappings():
            values = {k: v for k, v in a.items() if k != "id"}
            history.setdefault(int(a["delivery_id"]), []).append(DeliveryAttempt(**values))
    fields = {f.name for f in dataclasses.fields(Delivery)} - {"history"}
    return [
        Delivery(**{k: r[k] for k in fields}, history=history.get(int(r["id"]), [])) for r in rows
    ]


def _retryable(which: DeliveryFilter, now: datetime) -> sa.ColumnElement[bool]:
    """What a retry can take of ``which``: given up or pending, and not held by a worker
    under a live lease (a succeeded delivery is replayed, not retried)."""
    return sa.and_(
        _matching(which),
        deliveries.c.state.in_([DeliveryState.FAILED.value, DeliveryState.PENDING.value]),
        sa.or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < now),
    )


def count_retryable(conn: Connection, which: DeliveryFilter, *, now: datetime) -> int:
    """How many of ``which`` a retry would take now: the count shown before confirming."""
    query = sa.select(sa.func.count()).select_from(deliveries).where(_retryable(which, now))
    return int(conn.execute(query).scalar_one())


def retry_deliveries(conn: Connection, which: DeliveryFilter, *, now: datetime, limit: int) -> int:
    """Send the matching deliveries again now: given-up ones go back to pending (their
    attempts so far kept), pending ones waiting on a backoff become due; one a worker holds
    under a live lease is left to it. At most ``limit`` (the oldest first). Returns how many."""
    retryable = _retryable(which, now)
    ids = list(
        conn.execute(
            sa.select(deliveries.c.id).where(retryable).order_by(deliveries.c.id).limit(limit)
        ).scalars()
    )
    if not ids:
        return 0
    result = conn.execute(
        sa.update(deliveries)
        .where(deliveries.c.id.in_(ids), retryable)
        .values(
            state=DeliveryState.PENDING.value,
            next_attempt_at=now,
            completed_at=None,
            lease_owner=None,
            lease_until=None,
        )
    )
    return int(result.rowcount)
