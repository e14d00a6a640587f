"""Replays: deliver one event again, or every matching event since a time, with the same
``webhook-id`` as before.

A replay is a batch of new ``deliveries`` rows whose ``origin`` is the replay's id; the worker
sends them like any other, and :func:`replay_progress` counts them by state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from app import store
from app.errors import ConflictError, NotFoundError, UnprocessableError
from app.models import new_id


@dataclass(frozen=True)
class Replay:
    """A replay just enqueued: its id (the ``origin`` of its deliveries) and how many."""

    id: str
    subscription_id: str
    deliveries: int


def parse_since(value: object) -> datetime:
    """A replay's ``since``: an RFC 3339 time with an offset (UnprocessableError otherwise)."""
    problem = [{"field": "since", "message": "an RFC 3339 time with offset, e.g. …T08:00:00Z"}]
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
        if parsed is not None and parsed.tzinfo is not None:
            return parsed.astimezone(UTC)  # OverflowError: 0001-01-01T00:00+14:00 has no UTC
    except (ValueError, OverflowError):
        pass
    raise UnprocessableError("invalid since", problem)


def start_replay(
    engine: Engine,
    subscription_id: str,
    *,
    now: datetime,
    event_id: str | None = None,
    since: datetime | None = None,
) -> Replay:
    """Deliver one event again (``event_id``), or every event since a time that matches the
    subscription's types, with the same ``webhook-id`` as before."""
    if (event_id is None) == (since is None):
        raise UnprocessableError(
            "say which events to replay",
            [{"field": "event_id|since", "message": "exactly one of event_id and since"}],
        )
    replay_id = new_id("rpl", now)
    with store.transaction(engine) as conn:
        subscription = store.get_subscription(conn, subscription_id)
        if subscription is None:
            raise NotFoundError(f"no subscription {subscription_id!r}")
        if not subscription.enabled:
            raise ConflictError("the subscription is disabled: enable it before a replay")
        seq = None
        if event_id is not None:
            event = store.find_event(conn, event_id)
            if event is None:
                raise NotFoundError(f"no event {event_id!r}")
            seq = event.seq
        count = store.enqueue_replay(
            conn, subscription, origin=replay_id, now=now, event_seq=seq, since=since
        )
    return Replay(replay_id, subscription_id, count)


def replay_progress(engine: Engine, replay: Replay) -> dict[str, int]:
    """How many of the replay's deliveries are in each state."""
    with engine.connect() as conn:
        return store.progress(conn, replay.id)
