"""Events (the outbox), read in sequence order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.models import Event, TypeFilter
from app.store.batched import insert_events
from app.store.schema import events


def insert_event(conn: Connection, values: dict[str, Any]) -> None:
    insert_events(conn, [values])


def list_events(
    conn: Connection,
    *,
    after: int = 0,
    limit: int = 100,
    types: Sequence[str] = (),
    type_prefixes: Sequence[str] = (),
    job_id: str | None = None,
    before: int | None = None,
) -> list[Event]:
    """Events after sequence number ``after``, oldest first (or, given ``before``, the
    newest before it, newest first); when ``types`` or ``type_prefixes`` are given, only
    events of one of those types or prefixes; with ``job_id``, only that job's."""
    query = sa.select(events).where(events.c.seq > after).limit(limit)
    if before is None:
        query = query.order_by(events.c.seq)
    else:
        query = query.where(events.c.seq < before).order_by(events.c.seq.desc())
    query = query.where(of_types(TypeFilter(tuple(types), tuple(type_prefixes))))
    if job_id is not None:
        query = query.where(events.c.job_id == job_id)
    return [Event(**dict(m)) for m in conn.execute(query).mappings()]


def of_types(wanted: TypeFilter) -> sa.ColumnElement[bool]:
    if wanted.everything:
        return sa.true()
    return sa.or_(
        events.c.type.in_(list(wanted.types)),
        *(events.c.type.startswith(p, autoescape=True) for p in wanted.prefixes),
    )


#: built once, as are the other statements a worker runs every round: building one costs
#: more than running it
_HEAD = sa.select(sa.func.coalesce(sa.func.max(events.c.seq), 0))


def events_head(conn: Connection) -> int:
    """The sequence number of the newest event (0 when there is none)."""
    return int(conn.execute(_HEAD).scalar_one())


def find_event(conn: Connection, event_id: str) -> Event | None:
    row = conn.execute(sa.select(events).where(events.c.id == event_id)).mappings().first()
    return Event(**dict(row)) if row else None
