"""Deliveries: fan-out and replays create them, workers claim and finish them under a lease,
old ones are pruned; and the figures the health check and metrics report."""

from __future__ import annotations

import functools
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import ReturningInsert

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


def fan_out(
    conn: Connection, subscription: Subscription, *, limit: int, now: datetime,
    head: int | None = None,
) -> int:  # fmt: skip
    """Create the deliveries of the next (at most ``limit``) events after the subscription's
    cursor that match its types, and move the cursor past them. Returns how many. ``head``,
    when the caller has read it (:func:`app.store.events_head`): no more than ``limit`` events
    lie between the cursor and it, the window ends there without another read (sequence
    numbers are distinct, so at most ``head - cursor`` events lie in between)."""
    after = subscription.fanout_seq
    if head is not None and after < head <= after + limit:
        last = head
    else:
        last = conn.execute(_FAN_OUT_LAST, {"after": after, "n": limit}).scalar_one()
    if last is None:
        return 0
    wanted = TypeFilter.from_patterns(subscription.event_types)
    params = {"sub": subscription.id, "after": after, "last": last, "now": now, "origin": "fanout"}
    if conn.dialect.name == "postgresql":  # the cursor moved in the same statement
        return len(conn.execute(_fan_out_insert_moving(wanted), params).all())
    created = len(conn.execute(_fan_out_insert(wanted), params).all())
    conn.execute(_MOVE_CURSOR, {"sub": subscription.id, "last": int(last)})
    return created


def _insert_deliveries(which: sa.ColumnElement[bool]) -> ReturningInsert[tuple[int]]:
    """New pending deliveries for the subscription ``sub`` of the events ``which`` selects.
    Parameters: ``sub``, ``now``, ``origin`` and those of ``which``."""
    sub = sa.bindparam("sub", type_=sa.String(40))
    now = sa.bindparam("now", type_=UTCDateTime)
    # behind a job's delivery that waits on a retry, the job's next ones wait as long (so a
    # claim never walks rows that cannot go yet; see _PUSH_BACK)
    earlier = deliveries.alias("earlier")
    waits_until = (
        sa.select(sa.func.max(earlier.c.next_attempt_at))
        .where(
            earlier.c.subscription_id == sub,
            earlier.c.order_key == events.c.job_id,
            earlier.c.state == DeliveryState.PENDING.value,
            earlier.c.next_attempt_at > now,
        )
        .scalar_subquery()
    )
    chosen = sa.select(
        sub,
        events.c.seq,
        events.c.job_id,
        sa.literal(DeliveryState.PENDING.value, sa.String(16)),
        sa.literal(0, sa.Integer),
        sa.func.coalesce(waits_until, now),
        sa.bindparam("origin", type_=sa.String(40)),
        now,
    ).where(which)
    # the new rows' ids are returned to be counted: a rowcount is not known yet inside
    # psycopg's pipeline mode
    return sa.insert(deliveries).from_select(
        ["subscription_id", "event_seq", "order_key", "state", "attempts", "next_attempt_at",
         "origin", "created_at"],
        chosen,
    ).returning(deliveries.c.id)  # fmt: skip


#: built once (a worker fans out every round): the newest of the next ``n`` events after
#: ``after``, and the cursor's move
_FAN_OUT_WINDOW = (
    sa.select(events.c.seq)
    .where(events.c.seq > sa.bindparam("after", type_=sa.Integer))
    .order_by(events.c.seq)
    .limit(sa.bindparam("n", type_=sa.Integer))
    .subquery()
)
_FAN_OUT_LAST = sa.select(sa.func.max(_FAN_OUT_WINDOW.c.seq))
_MOVE_CURSOR = (
    sa.update(subscriptions)
    .where(subscriptions.c.id == sa.bindparam("sub", type_=sa.String(40)))
    .values(fanout_seq=sa.bindparam("last", type_=sa.Integer))
)


@functools.lru_cache(maxsize=256)
def _fan_out_insert(wanted: TypeFilter) -> ReturningInsert[tuple[int]]:
    """The fan-out's insert for one set of type patterns, built once: the events after
    ``after`` up to ``last`` that match."""
    return _insert_deliveries(
        sa.and_(
            events.c.seq > sa.bindparam("after", type_=sa.Integer),
            events.c.seq <= sa.bindparam("last", type_=sa.Integer),
            of_types(wanted),
        )
    )


#: PostgreSQL: the cursor's move as a data-modifying CTE of the insert (one round trip, not two)
_MOVE_CURSOR_FIRST = _MOVE_CURSOR.returning(subscriptions.c.id).cte("moved")


@functools.lru_cache(maxsize=256)
def _fan_out_insert_moving(wanted: TypeFilter) -> ReturningInsert[tuple[int]]:
    """:func:`_fan_out_insert` that also moves the cursor (PostgreSQL; SQLite has no
    data-modifying CTE). The insert reads no cursor, so it sees what it would without it."""
    return _fan_out_insert(wanted).add_cte(_MOVE_CURSOR_FIRST)


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
    insert = _insert_deliveries(which)
    params = {"sub": subscription.id, "now": now, "origin": origin}
    return len(conn.execute(insert, params).all())


def progress(conn: Connection, origin: str) -> dict[str, int]:
    """How many deliveries of one origin (a replay) are in each state."""
    query = (
        sa.select(deliveries.c.state, sa.func.count())
        .where(deliveries.c.origin == origin)
        .group_by(deliveries.c.state)
    )
    return {str(state): int(n) for state, n in conn.execute(query)}


def _candidates_of_one_subscription() -> sa.Select[tuple[int, datetime, str | None, int]]:
    """One subscription's deliveries that are due and not leased by a live worker, oldest
    due first, found with the index on ``(subscription_id, state, next_attempt_at)`` (so
    another subscription's backlog is never walked). Parameters: ``sub``, ``now``, ``n``."""
    now = sa.bindparam("now", type_=UTCDateTime)
    return (
        sa.select(
            deliveries.c.id,
            deliveries.c.next_attempt_at,
            deliveries.c.order_key,
            deliveries.c.event_seq,
        )
        .where(
            deliveries.c.subscription_id == sa.bindparam("sub", type_=sa.String),
            deliveries.c.state == DeliveryState.PENDING.value,
            deliveries.c.next_attempt_at <= now,
            sa.or_(deliveries.c.lease_until.is_(None), deliveries.c.lease_until < now),
        )
        .order_by(deliveries.c.next_attempt_at, deliveries.c.id)
        .limit(sa.bindparam("n", type_=sa.Integer))
    )


#: built once: a claim runs these for every subscription below its cap, every round
_CANDIDATES = _candidates_of_one_subscription()
_CLAIMABLE_CANDIDATES = _CANDIDATES.with_for_update(skip_locked=True, of=deliveries)
#: the unfinished deliveries of some jobs (``keys``) to one subscription, each job's first
#: (the one that may go) first; found with the index on ``(subscription_id, order_key,
#: event_seq)``
_PENDING_OF_JOBS = (
    sa.select(deliveries.c.order_key, deliveries.c.event_seq, deliveries.c.id)
    .where(
        deliveries.c.subscription_id == sa.bindparam("sub", type_=sa.String),
        deliveries.c.order_key.in_(sa.bindparam("keys", expanding=True)),
        deliveries.c.state == DeliveryState.PENDING.value,
    )
    .order_by(deliveries.c.order_key, deliveries.c.event_seq, deliveries.c.id)
)
#: a claim looks at this many times the deliveries it may take (and a few more), so that a
#: job's later deliveries waiting behind its earlier one seldom leave a claim short
_LOOK_AHEAD = 4


def _due(conn: Connection, sub: str, now: datetime, n: int, *, lock: bool) -> list[Any]:
    """Up to ``n`` of one subscription's deliveries that may go now, oldest due first: due,
    not leased by a live worker, and each its job's first unfinished delivery (per-job
    order). Two index lookups, never a join of the backlog with itself, whose cost under a
    burst the planner has no statistics for yet grows with the square of the backlog (a
    claim then outlasted PostgreSQL's statement timeout)."""
    query = _CLAIMABLE_CANDIDATES if lock else _CANDIDATES
    rows = conn.execute(query, {"sub": sub, "now": now, "n": n * _LOOK_AHEAD + 16}).all()
    keys = sorted({row.order_key for row in rows if row.order_key is not None})
    first: dict[str, tuple[int, int]] = {}
    if keys:
        for key, seq, ident in conn.execute(_PENDING_OF_JOBS, {"sub": sub, "keys": keys}):
            first.setdefault(key, (int(seq), int(ident)))
    may_go = [
        row for row in rows
        if row.order_key is None or first.get(row.order_key) == (row.event_seq, row.id)
    ]  # fmt: skip
    return may_go[:n]


#: in one read (one round trip): the live leases' subscriptions, one row per lease (a few
#: dozen at most: counted here rather than grouped in SQL, where a GROUP BY would tempt
#: SQLite's planner into walking the subscription index, every delivery ever made, instead of
#: the leased rows alone), then the enabled subscriptions, each with its pause
_LEASED_THEN_ENABLED = sa.union_all(
    sa.select(
        sa.literal(True).label("leased"),
        deliveries.c.subscription_id.label("id"),
        sa.type_coerce(sa.null(), UTCDateTime).label("paused_until"),
    ).where(
        deliveries.c.state == DeliveryState.PENDING.value,
        deliveries.c.lease_until >= sa.bindparam("now", type_=UTCDateTime),
    ),
    sa.select(
        sa.literal(False).label("leased"), subscriptions.c.id, subscriptions.c.paused_until
    ).where(subscriptions.c.enabled),
).order_by("id")


def _open_subscriptions(conn: Connection, now: datetime, cap: int) -> dict[str, int]:
    """The enabled subscriptions with room for another delivery, each with how many more it
    may have: ``cap`` less those leased (by any worker; found by the index on ``(state,
    lease_until)``: a finished delivery's lease is cleared, so only live ones count). A
    paused subscription (its endpoint cannot be reached) has no room before its
    ``paused_until``, and then room for one: a probe, until a delivery succeeds and ends the
    pause."""
    rows = conn.execute(_LEASED_THEN_ENABLED, {"now": now}).all()
    leased = Counter(str(ident) for is_lease, ident, _ in rows if is_lease)
    room = {}
    for is_lease, ident, paused_until in rows:
        if is_lease or (paused_until is not None and paused_until > now):
            continue
        free = (1 if paused_until is not None else cap) - leased.get(str(ident), 0)
        if free > 0:
            room[str(ident)] = free
    return room


def has_claimable(conn: Connection, now: datetime, per_subscription: int | None = None) -> bool:
    """Whether a claim would find anything (a read, so an idle round writes nothing)."""
    cap = per_subscription or _NO_CAP
    return any(_due(conn, sub, now, 1, lock=False) for sub in _open_subscriptions(conn, now, cap))


#: any constant: the advisory lock that makes claims count each other's leases (PostgreSQL)
_CLAIMS_LOCK = 0x636972656C6C6173  # "cirellas"
#: no per-subscription cap: more than any claim takes
_NO_CAP = 1 << 30


def claim_deliveries(
    conn: Connection,
    *,
    now: datetime,
    owner: str,
    lease_until: datetime,
    limit: int,
    per_subscription: int | None = None,
) -> list[Claim]:
    """Lease up to ``limit`` claimable deliveries to ``owner``, oldest due first; rows
    another worker is claiming at the same moment are skipped (``FOR UPDATE SKIP LOCKED``
    on PostgreSQL; SQLite has one writer at a time).

    With ``per_subscription``, no subscription has more than that many deliveries leased at
    once, counted in the database over every worker: a slow subscriber cannot take every
    slot, and a subscription at its cap (or paused: its endpoint cannot be reached) is not
    even looked at; a paused one past its ``paused_until`` gets one delivery at a time. On
    PostgreSQL claims then take
    turns (a transaction-level advisory lock, taken after anything else the claim's
    transaction locks and never held while waiting for another lock), so two workers do not
    both fill the same subscription's last slots."""
    cap = per_subscription or _NO_CAP
    if per_subscription is not None and conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_CLAIMS_LOCK)))
    due: list[tuple[datetime, int]] = []
    for sub, room in _open_subscriptions(conn, now, cap).items():
        rows = _due(conn, sub, now, min(limit, room), lock=True)
        due.extend((row.next_attempt_at, int(row.id)) for row in rows)
    ids = [ident for _, ident in sorted(due)[:limit]]
    if not ids:
        return []
    params = {"ids": ids, "owner": owner, "until": lease_until}
    if conn.dialect.name == "postgresql":  # leased and read in one statement
        returned = conn.execute(_LEASE_RETURNING, params).mappings()
        claimed = sorted(returned, key=lambda m: int(m["delivery_id"]))  # RETURNING is unordered
    else:  # SQLite's RETURNING cannot name the tables of an UPDATE's FROM
        conn.execute(_LEASE, params)
        claimed = list(conn.execute(_CLAIMED, {"ids": ids}).mappings())
    return [
        Claim(
            delivery_id=int(m["delivery_id"]),
            attempt=int(m["attempts"]) + 1,
            lease_owner=owner,
            origin=m["origin"],
            subscription=Subscription(**{name: m[label] for name, label in _SUBSCRIPTION_COLUMNS}),
            event=Event(**{name: m[label] for name, label in _EVENT_COLUMNS}),
        )
        for m in claimed
    ]


#: built once, as the claim's other statements: the lease, and what the claims carry
_LEASE = (
    sa.update(deliveries)
    .where(deliveries.c.id.in_(sa.bindparam("ids", expanding=True)))
    .values(
        lease_owner=sa.bindparam("owner", type_=sa.String),
        lease_until=sa.bindparam("until", type_=UTCDateTime),
    )
)
_SUBSCRIPTION_COLUMNS = [(c.name, f"s_{c.name}") for c in subscriptions.c]
_EVENT_COLUMNS = [(c.name, f"e_{c.name}") for c in events.c]
_CLAIM_COLUMNS = (
    deliveries.c.id.label("delivery_id"),
    deliveries.c.attempts,
    deliveries.c.origin,
    *(c.label(f"s_{c.name}") for c in subscriptions.c),
    *(c.label(f"e_{c.name}") for c in events.c),
)
_CLAIMED = (
    sa.select(*_CLAIM_COLUMNS)
    .join(subscriptions, subscriptions.c.id == deliveries.c.subscription_id)
    .join(events, events.c.seq == deliveries.c.event_seq)
    .where(deliveries.c.id.in_(sa.bindparam("ids", expanding=True)))
    .order_by(deliveries.c.id)
)
#: PostgreSQL: the lease and what the claims carry, in one statement
_LEASE_RETURNING = _LEASE.where(
    subscriptions.c.id == deliveries.c.subscription_id,
    events.c.seq == deliveries.c.event_seq,
).returning(*_CLAIM_COLUMNS)


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


#: a delivery that waits on a retry holds its job's later deliveries back as long: they
#: could not go before it anyway, and a claim then never walks them (a subscriber that is
#: down would otherwise leave every claim scanning its whole backlog)
_PUSH_BACK = (
    sa.update(deliveries)
    .where(
        deliveries.c.subscription_id == sa.bindparam("p_sub"),
        deliveries.c.order_key == sa.bindparam("p_key"),
        deliveries.c.event_seq > sa.bindparam("p_seq"),
        deliveries.c.state == DeliveryState.PENDING.value,
        deliveries.c.next_attempt_at < sa.bindparam("p_at", type_=UTCDateTime),
    )
    .values(next_attempt_at=sa.bindparam("p_at", type_=UTCDateTime))
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
        ids = sorted({a["delivery_id"] for a in attempts})
        existing = set(conn.execute(_EXISTING, {"ids": ids}).scalars())
        kept = [a for a in attempts if a["delivery_id"] in existing]
        if kept:
            conn.execute(_INSERT_ATTEMPTS, kept)
    if not updates:
        return set()
    params = {"ids": [u["id"] for u in updates], "owner": owner}
    held = {int(row.id): row for row in conn.execute(_HELD, params)}
    rows = [{**u, "b_id": u["id"]} for u in updates if u["id"] in held]
    if rows:
        conn.execute(_FINISH, [{k: v for k, v in r.items() if k != "id"} for r in rows])
    retried = [
        {
            "p_sub": held[r["id"]].subscription_id,
            "p_key": held[r["id"]].order_key,
            "p_seq": held[r["id"]].event_seq,
            "p_at": r["next_attempt_at"],
        }
        for r in rows
        if r["state"] == DeliveryState.PENDING.value and held[r["id"]].order_key is not None
    ]
    if retried:
        conn.execute(_PUSH_BACK, retried)
    return set(held)


#: built once (a worker records attempts every few rounds): the deliveries that still
#: exist, and those still leased to the worker recording them
_EXISTING = (
    sa.select(deliveries.c.id)
    .where(deliveries.c.id.in_(sa.bindparam("ids", expanding=True)))
    .with_for_update(key_share=True)
)
_INSERT_ATTEMPTS = sa.insert(delivery_attempts)
_HELD = (
    sa.select(
        deliveries.c.id,
        deliveries.c.subscription_id,
        deliveries.c.order_key,
        deliveries.c.event_seq,
    )
    .where(
        deliveries.c.id.in_(sa.bindparam("ids", expanding=True)),
        deliveries.c.lease_owner == sa.bindparam("owner", type_=sa.String),
        deliveries.c.state == DeliveryState.PENDING.value,
    )
    .with_for_update()
)


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
