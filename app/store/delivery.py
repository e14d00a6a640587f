"""Deliveries: fan-out and replays create them, workers claim and finish them under a lease,
old ones are pruned; and the figures the health check and metrics report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.models import (
    Claim,
    DeliveryState,
    Event,
    Figures,
    Subscription,
    TypeFilter,
)
from app.store.outbox import of_types
from app.store.quarantine import count_quarantined
from app.store.schema import UTCDateTime, deliveries, delivery_attempts, events, subscriptions


def fan_out(conn: Connection, subscription: Subscription, *, limit: int, now: datetime) -> int:
    """Create the deliveries of the next (at most ``limit``) events after the subscription's
    cursor that match its types, and move the cursor past them. Returns how many."""
    after = subscription.fanout_seq
    window = (
        sa.select(events.c.seq).where(events.c.seq > after).order_by(events.c.seq).limit(limit)
    ).subquery()
    last = conn.execute(sa.select(sa.func.max(window.c.seq))).scalar_one()
    if last is None:
        return 0
    created = _insert_deliveries(
        conn,
        subscription.id,
        sa.and_(
            events.c.seq > after,
            events.c.seq <= last,
            of_types(TypeFilter.from_patterns(subscription.event_types)),
        ),
        origin="fanout",
        now=now,
    )
    conn.execute(
        sa.update(subscriptions)
        .where(subscriptions.c.id == subscription.id)
        .values(fanout_seq=int(last))
    )
    return created


def _insert_deliveries(
    conn: Connection, subscription_id: str, which: sa.ColumnElement[bool], *, origin: str,
    now: datetime,
) -> int:  # fmt: skip
    chosen = sa.select(
        sa.literal(subscription_id, sa.String(40)),
        events.c.seq,
        events.c.job_id,
        sa.literal(DeliveryState.PENDING.value, sa.String(16)),
        sa.literal(0, sa.Integer),
        sa.literal(now, UTCDateTime),
        sa.literal(origin, sa.String(40)),
        sa.literal(now, UTCDateTime),
    ).where(which)
    insert = sa.insert(deliveries).from_select(
        ["subscription_id", "event_seq", "order_key", "state", "attempts", "next_attempt_at",
         "origin", "created_at"],
        chosen,
    )  # fmt: skip
    return len(conn.execute(insert.returning(deliveries.c.id)).all())


def enqueue_replay(
    conn: Connection,
    subscription: Subscription,
    *,
    origin: str,
    now: datetime,
    event_seq: int | None = None,
    since: datetime | None = None,
) -> int:
    """New deliveries of one event (``event_seq``) or of every matching event since a time."""
    if event_seq is not None:
        which = events.c.seq == event_seq
    else:
        assert since is not None
        which = sa.and_(
            events.c.time >= since, of_types(TypeFilter.from_patterns(subscription.event_types))
        )
    return _insert_deliveries(conn, subscription.id, which, origin=origin, now=now)


def progress(conn: Connection, origin: str) -> dict[str, int]:
    """How many deliveries of one origin (a replay) are in each state."""
    query = (
        sa.select(deliveries.c.state, sa.func.count())
        .where(deliveries.c.origin == origin)
        .group_by(deliveries.c.state)
    )
    return {str(state): int(n) for state, n in conn.execute(query)}


def _claimable(now: datetime) -> sa.ColumnElement[bool]:
    """Due, not leased by a live worker, of an enabled subscription, and not behind an
    unfinished earlier delivery of the same job to the same subscription."""
    earlier = deliveries.alias("earlier")
    return sa.and_(
        deliveries.c.state == DeliveryState.PENDING.value,
        deliveries.c.next_attempt_at <= now,
        sa.or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < now),
        sa.select(subscriptions.c.enabled)
        .where(subscriptions.c.id == deliveries.c.subscription_id)
        .scalar_subquery(),
        ~sa.exists().where(
            earlier.c.subscription_id == deliveries.c.subscription_id,
            earlier.c.order_key == deliveries.c.order_key,
            earlier.c.state == DeliveryState.PENDING.value,
            sa.or_(
                earlier.c.event_seq < deliveries.c.event_seq,
                sa.and_(
                    earlier.c.event_seq == deliveries.c.event_seq, earlier.c.id < deliveries.c.id
                ),
            ),
        ),
    )


def _leased(now: datetime) -> sa.ColumnElement[bool]:
    """Being attempted under a live lease. A claimed delivery was due when claimed and its
    ``next_attempt_at`` does not move while leased: the bound lets the index on
    ``(state, next_attempt_at)`` find them among the due ones."""
    return sa.and_(
        deliveries.c.state == DeliveryState.PENDING.value,
        deliveries.c.next_attempt_at <= now,
        deliveries.c.lease_until >= now,
    )


def _at_cap(now: datetime, cap: int) -> sa.Select[tuple[str]]:
    """The subscriptions with ``cap`` deliveries (or more) leased, by any worker."""
    return (
        sa.select(deliveries.c.subscription_id)
        .where(_leased(now))
        .group_by(deliveries.c.subscription_id)
        .having(sa.func.count() >= cap)
    )


def has_claimable(conn: Connection, now: datetime, per_subscription: int | None = None) -> bool:
    query = sa.select(deliveries.c.id).where(_claimable(now)).limit(1)
    if per_subscription is not None:
        query = query.where(deliveries.c.subscription_id.not_in(_at_cap(now, per_subscription)))
    return conn.execute(query).first() is not None


#: any constant: the advisory lock that makes claims count each other's leases (PostgreSQL)
_CLAIMS_LOCK = 0x636972656C6C6173  # "cirellas"
#: queries a claim makes at most to fill its slots past subscriptions at their cap
_CLAIM_PASSES = 4


def claim_deliveries(
    conn: Connection,
    *,
    now: datetime,
    owner: str,
    lease_until: datetime,
    limit: int,
    per_subscription: int | None = None,
) -> list[Claim]:
    """Lease up to ``limit`` claimable deliveries to ``owner``; rows another worker is
    claiming at the same moment are skipped (``FOR UPDATE SKIP LOCKED`` on PostgreSQL;
    SQLite has one writer at a time).

    With ``per_subscription``, no subscription has more than that many deliveries leased at
    once, counted in the database over every worker: a slow subscriber cannot take every
    slot. On PostgreSQL claims then take turns (a transaction-level advisory lock, taken
    after anything else the claim's transaction locks and never held while waiting for
    another lock), so two workers do not both fill the same subscription's last slots."""
    if per_subscription is None:
        ids = [ident for ident, _ in _due(conn, now, limit, skip_ids=[], full=None)]
    else:
        ids = _due_within_caps(conn, now, limit, per_subscription)
    if not ids:
        return []
    conn.execute(
        sa.update(deliveries)
        .where(deliveries.c.id.in_(ids))
        .values(lease_owner=owner, lease_until=lease_until)
    )
    query = (
        sa.select(
            deliveries.c.id.label("delivery_id"),
            deliveries.c.attempts,
            deliveries.c.origin,
            *(c.label(f"s_{c.name}") for c in subscriptions.c),
            *(c.label(f"e_{c.name}") for c in events.c),
        )
        .join(subscriptions, subscriptions.c.id == deliveries.c.subscription_id)
        .join(events, events.c.seq == deliveries.c.event_seq)
        .where(deliveries.c.id.in_(ids))
        .order_by(deliveries.c.id)
    )
    claims = []
    for m in conn.execute(query).mappings():
        claims.append(
            Claim(
                delivery_id=int(m["delivery_id"]),
                attempt=int(m["attempts"]) + 1,
                lease_owner=owner,
                origin=m["origin"],
                subscription=Subscription(**{c.name: m[f"s_{c.name}"] for c in subscriptions.c}),
                event=Event(**{c.name: m[f"e_{c.name}"] for c in events.c}),
            )
        )
    return claims


def _due(
    conn: Connection, now: datetime, limit: int, *, skip_ids: list[int],
    full: sa.Select[tuple[str]] | list[str] | None,
) -> list[tuple[int, str]]:  # fmt: skip
    query = (
        sa.select(deliveries.c.id, deliveries.c.subscription_id)
        .where(_claimable(now))
        .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=deliveries)
    )
    if skip_ids:
        query = query.where(deliveries.c.id.not_in(skip_ids))
    if full is not None:
        query = query.where(deliveries.c.subscription_id.not_in(full))
    return [(int(i), str(s)) for i, s in conn.execute(query)]


def _due_within_caps(conn: Connection, now: datetime, limit: int, cap: int) -> list[int]:
    """Due deliveries, oldest first, taking no subscription past ``cap`` leased."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_CLAIMS_LOCK)))
    busy: dict[str, int] = {
        str(sub): int(n)
        for sub, n in conn.execute(
            sa.select(deliveries.c.subscription_id, sa.func.count())
            .where(_leased(now))
            .group_by(deliveries.c.subscription_id)
        )
    }
    full = [sub for sub, n in busy.items() if n >= cap]
    taken: list[int] = []
    seen: list[int] = []
    for _ in range(_CLAIM_PASSES):
        rows = _due(conn, now, limit - len(taken), skip_ids=seen, full=full)
        skipped = False
        for ident, sub in rows:
            seen.append(ident)
            if busy.get(sub, 0) >= cap:
                skipped = True
                continue
            busy[sub] = busy.get(sub, 0) + 1
            taken.append(ident)
            if busy[sub] >= cap:
                full.append(sub)
        if not skipped or not rows or len(taken) >= limit:
            break
    return taken


def bring_forward(
    conn: Connection, subscription_id: str, *, now: datetime, interval: float, limit: int
) -> int:
    """A subscription answers again: its deliveries waiting on a retry's backoff are due
    now, one every ``interval`` seconds, in event order (at most ``limit`` of them; one is
    never moved later than it was). Returns how many moved."""
    ids = conn.execute(
        sa.select(deliveries.c.id)
        .where(
            deliveries.c.subscription_id == subscription_id,
            deliveries.c.state == DeliveryState.PENDING.value,
            deliveries.c.next_attempt_at > now,
            sa.or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < now),
        )
        .order_by(deliveries.c.event_seq, deliveries.c.id)
        .limit(limit)
    ).scalars()
    rows = [
        {"b_id": int(i), "at": now + timedelta(seconds=n * interval)} for n, i in enumerate(ids)
    ]
    if rows:
        conn.execute(_BRING_FORWARD, rows)
    return len(rows)


_BRING_FORWARD = (
    sa.update(deliveries)
    .where(
        deliveries.c.id == sa.bindparam("b_id"),
        deliveries.c.next_attempt_at > sa.bindparam("at", type_=UTCDateTime),
    )
    .values(next_attempt_at=sa.bindparam("at", type_=UTCDateTime))
)


_FINISH = (
    sa.update(deliveries)
    .where(deliveries.c.id == sa.bindparam("b_id"))
    .values(
        state=sa.bindparam("state"),
        attempts=sa.bindparam("attempts"),
        next_attempt_at=sa.bindparam("next_attempt_at", type_=UTCDateTime),
        completed_at=sa.bindparam("completed_at", type_=UTCDateTime),
        last_status_code=sa.bindparam("last_status_code"),
        last_error=sa.bindparam("last_error"),
        lease_owner=None,
        lease_until=None,
    )
)


def renew_leases(conn: Connection, owner: str, ids: list[int], until: datetime) -> None:
    """Extend ``owner``'s leases on deliveries it is still attempting."""
    conn.execute(
        sa.update(deliveries)
        .where(deliveries.c.id.in_(ids), deliveries.c.lease_owner == owner)
        .values(lease_until=until)
    )


def finish_attempts(
    conn: Connection, owner: str, updates: list[dict[str, Any]], attempts: list[dict[str, Any]]
) -> set[int]:
    """Record attempts and move their deliveries on. Each update names ``id``, ``state``,
    ``attempts``, ``next_attempt_at``, ``completed_at``, ``last_status_code`` and
    ``last_error``; it applies only while ``owner`` still holds the delivery's lease (a lapsed
    lease belongs to whoever claimed the delivery since), and neither applies to a delivery
    deleted meanwhile (its subscription deleted). Returns the ids that applied."""
    if attempts:
        # a delivery deleted meanwhile (with its subscription) keeps no attempts; the rows
        # that remain are held against deletion until this transaction ends
        existing = set(
            conn.execute(
                sa.select(deliveries.c.id)
                .where(deliveries.c.id.in_({a["delivery_id"] for a in attempts}))
                .with_for_update(key_share=True)
            ).scalars()
        )
        kept = [a for a in attempts if a["delivery_id"] in existing]
        if kept:
            conn.execute(sa.insert(delivery_attempts), kept)
    if not updates:
        return set()
    held = set(
        conn.execute(
            sa.select(deliveries.c.id)
            .where(
                deliveries.c.id.in_([u["id"] for u in updates]),
                deliveries.c.lease_owner == owner,
                deliveries.c.state == DeliveryState.PENDING.value,
            )
            .with_for_update()
        ).scalars()
    )
    rows = [{**u, "b_id": u["id"]} for u in updates if u["id"] in held]
    if rows:
        conn.execute(_FINISH, [{k: v for k, v in r.items() if k != "id"} for r in rows])
    return {int(i) for i in held}


def prune_deliveries(conn: Connection, *, finished_before: datetime, limit: int) -> int:
    """Delete up to ``limit`` deliveries finished (succeeded or given up) before the time,
    with their attempts; pending ones are never touched. Returns how many went."""
    old = (
        sa.select(deliveries.c.id)
        .where(
            deliveries.c.state != DeliveryState.PENDING.value,
            deliveries.c.completed_at < finished_before,
        )
        .order_by(deliveries.c.id)
        .limit(limit)
    )
    ids = [int(i) for i in conn.execute(old).scalars()]
    if ids:
        conn.execute(sa.delete(delivery_attempts).where(delivery_attempts.c.delivery_id.in_(ids)))
        conn.execute(sa.delete(deliveries).where(deliveries.c.id.in_(ids)))
    return len(ids)


def figures(conn: Connection, now: datetime) -> Figures:
    pending = sa.select(
        sa.func.count(), sa.func.min(deliveries.c.created_at)
    ).where(
        deliveries.c.state == DeliveryState.PENDING.value,
        deliveries.c.subscription_id.in_(
            sa.select(subscriptions.c.id).where(subscriptions.c.enabled)
        ),
    )  # fmt: skip
    count, oldest = conn.execute(pending).one()
    if isinstance(oldest, str):  # SQLite's min() loses the column type
        oldest = datetime.fromisoformat(oldest)
    if oldest is not None and oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=UTC)
    disabled = conn.execute(sa.select(sa.func.count()).where(~subscriptions.c.enabled)).scalar_one()
    return Figures(
        quarantine_size=count_quarantined(conn),
        delivery_backlog=int(count),
        delivery_backlog_oldest_seconds=max(0.0, (now - oldest).total_seconds()) if oldest else 0.0,
        subscriptions_disabled=int(disabled),
    )
