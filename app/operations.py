"""What an operator does, through the admin API or the console: the one service function per
action, so both take the same path and each action is recorded in the audit log (with the
API key's name, never the key) in the transaction of the change it makes.

Subscriptions (create, update, delete, rotate the secret, send a test event), replays,
retries of deliveries (one, or every one matching a filter), and replays of quarantined
notifications (one, or every one matching a filter). Nothing here answers HTTP; the web layer
(``app/web/subscriptions.py``, ``app/web/admin.py``, ``app/web/console/``) parses requests
and renders what these return or raise.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection, Engine

from app import delivery, store, subscriptions
from app.delivery.sender import AttemptReport, Sender, signed_headers
from app.errors import ConflictError, NotFoundError, UnprocessableError
from app.ingest import Receiver
from app.models import (
    Actor,
    DeliveryFilter,
    DeliveryState,
    QuarantineFilter,
    Subscription,
    new_id,
)

log = logging.getLogger(__name__)

#: the most deliveries one "retry every one matching" or quarantined notifications one
#: "replay every one matching" takes; the answer says how many remain
MAX_BATCH = 1000
#: how long a rotated-out secret keeps signing and verifying, unless the request says
DEFAULT_GRACE = timedelta(hours=24)
MAX_GRACE = timedelta(days=7)
#: a test event's type: sent to one subscription directly, never put in the outbox
TEST_EVENT_TYPE = "com.cirelay.subscription.test"


@contextmanager
def _recorded(
    engine: Engine, actor: Actor, action: str, subject: str | None, now: datetime,
    details: dict[str, Any],
) -> Iterator[Connection]:  # fmt: skip
    """A transaction that records the action in the audit log when it commits; then the
    "who did what" log line. ``details`` may be filled in inside the block."""
    with store.transaction(engine) as conn:
        yield conn
        store.insert_audit(conn, actor, action, subject, details, now)
    _log(actor, action, subject, details)


def record(
    engine: Engine, actor: Actor, action: str, subject: str | None, now: datetime,
    **details: Any,
) -> None:  # fmt: skip
    """Record an action whose change committed on its own (a submitted job)."""
    with _recorded(engine, actor, action, subject, now, details):
        pass


def _log(actor: Actor, action: str, subject: str | None, details: dict[str, Any]) -> None:
    fields = {"subject": subject, **details}
    text = " ".join(f"{name}={value}" for name, value in fields.items() if value is not None)
    extra = {k: v for k, v in fields.items() if k not in {"message", "args"}}
    log.info("%s by %s: %s", action, actor.name, text,
             extra={"api_key": actor.name, "via": actor.via, **extra})  # fmt: skip


# --- subscriptions --------------------------------------------------------------------------


def create_subscription(
    engine: Engine, values: dict[str, Any], actor: Actor, now: datetime
) -> Subscription:
    """A new subscription from :func:`app.subscriptions.parse`'s values; returned with its
    secret, which is shown this once."""
    item = Subscription(
        id=new_id("sub", now),
        url=values["url"],
        event_types=values["event_types"],
        description=values.get("description", ""),
        enabled=values.get("enabled", True),
        secret=subscriptions.new_secret(),
        previous_secret=None,
        previous_secret_expires_at=None,
        disabled_reason=None,
        created_at=now,
        updated_at=now,
    )
    # the URL as answers show it: a broker's credentials never reach the log or the audit
    details = {"url": subscriptions.mask_url(item.url)}
    with _recorded(engine, actor, "subscription created", item.id, now, details) as c:
        # deliveries start with the events after this moment
        item = dataclasses.replace(item, fanout_seq=store.events_head(c))
        store.insert_subscription(c, item)
    return item


def update_subscription(
    engine: Engine, ident: str, values: dict[str, Any], actor: Actor, now: datetime
) -> Subscription:
    changed = {"fields": sorted(values)}
    with _recorded(engine, actor, "subscription updated", ident, now, changed) as conn:
        current = store.get_subscription(conn, ident)
        if current is None:
            raise NotFoundError(f"no subscription {ident!r}")
        if values.get("enabled") is True and not current.enabled:
            # re-enabled by hand: pending deliveries resume; events of the disabled period
            # are not sent (a replay since a time brings them)
            values = values | {
                "disabled_reason": None, "failing_since": None, "successes_in_a_row": 0,
                "paused_until": None, "fanout_seq": store.events_head(conn),
            }  # fmt: skip
        if "url" in values:  # a new endpoint is tried at once, not at the old one's probe
            values = values | {"paused_until": None}
        store.update_subscription(conn, ident, values | {"updated_at": now})
        updated = store.get_subscription(conn, ident)
    assert updated is not None
    return updated


def delete_subscription(engine: Engine, ident: str, actor: Actor, now: datetime) -> None:
    with _recorded(engine, actor, "subscription deleted", ident, now, {}) as conn:
        if not store.delete_subscription(conn, ident):
            raise NotFoundError(f"no subscription {ident!r}")


def parse_grace(body: Any) -> int:
    """A rotation's ``grace_seconds`` (default a day, at most a week) from its JSON body."""
    body = {} if body is None else body
    if not isinstance(body, dict):
        raise UnprocessableError(
            "a rotation is a JSON object", [{"field": "body", "message": '{"grace_seconds": 60}'}]
        )
    grace = body.get("grace_seconds", int(DEFAULT_GRACE.total_seconds()))
    if (
        not isinstance(grace, int)
        or isinstance(grace, bool)
        or not 0 <= grace <= MAX_GRACE.total_seconds()
    ):
        raise UnprocessableError(
            "invalid grace period",
            [{"field": "grace_seconds", "message": f"0 to {int(MAX_GRACE.total_seconds())}"}],
        )
    return grace


def rotate_secret(
    engine: Engine, ident: str, grace_seconds: int, actor: Actor, now: datetime
) -> Subscription:
    """A new secret, returned this once; the old one keeps signing for ``grace_seconds``."""
    details = {"grace_seconds": grace_seconds}
    with _recorded(engine, actor, "subscription secret rotated", ident, now, details) as conn:
        current = store.get_subscription(conn, ident)
        if current is None:
            raise NotFoundError(f"no subscription {ident!r}")
        rotated = dataclasses.replace(
            current,
            secret=subscriptions.new_secret(),
            previous_secret=current.secret,
            previous_secret_expires_at=now + timedelta(seconds=grace_seconds),
            updated_at=now,
        )
        store.update_subscription(
            conn, ident,
            {"secret": rotated.secret, "previous_secret": rotated.previous_secret,
             "previous_secret_expires_at": rotated.previous_secret_expires_at, "updated_at": now},
        )  # fmt: skip
    return rotated


def send_test_event(
    engine: Engine, sender: Sender, ident: str, actor: Actor, now: datetime
) -> AttemptReport:
    """POST a signed test event (``com.cirelay.subscription.test``) to the subscription now,
    outside the outbox (no other subscriber sees it), and say what it answered."""
    with engine.connect() as conn:
        sub = store.get_subscription(conn, ident)
    if sub is None:
        raise NotFoundError(f"no subscription {ident!r}")
    if subscriptions.transport_of(sub.url) != "http":
        # the broker connections live in the worker, not in the web tier
        raise ConflictError(
            f"subscription {ident!r} publishes to a broker: test events go to webhooks only "
            "(replay an event to it instead)"
        )
    event_id = new_id("evt", now)
    document = {
        "specversion": "1.0", "id": event_id, "type": TEST_EVENT_TYPE,
        "source": "/cirelay/console", "subject": sub.id, "datacontenttype": "application/json",
        "time": now.isoformat().replace("+00:00", "Z"),
        "data": {"subscription_id": sub.id, "test": True, "sent_by": actor.name},
    }  # fmt: skip
    body = json.dumps(document, separators=(",", ":"))
    headers = signed_headers(event_id, body, sub.signing_secrets(now), datetime.now(UTC))
    report = sender.post(sub.url, body.encode(), headers)  # no transaction is open
    details = {"event_id": event_id, "result": report.result.value,
               "status_code": report.status_code}  # fmt: skip
    record(engine, actor, "test event sent", ident, now, **details)
    return report


# --- replays and retries --------------------------------------------------------------------


def start_replay(
    engine: Engine, ident: str, actor: Actor, now: datetime, *,
    event_id: str | None = None, since: datetime | None = None,
) -> delivery.Replay:  # fmt: skip
    """Deliver one event again, or every matching event since a time
    (:func:`app.delivery.start_replay`), recorded."""
    done = delivery.start_replay(engine, ident, now=now, event_id=event_id, since=since)
    record(engine, actor, "replay started", ident, now, replay_id=done.id,
           deliveries=done.deliveries, event_id=event_id,
           since=since.isoformat() if since else None)  # fmt: skip
    return done


def retry_delivery(
    engine: Engine, subscription_id: str, delivery_id: int, actor: Actor, now: datetime
) -> int:
    """Send one delivery again now (given up, or waiting on its backoff). Returns 1, or 0
    when a worker is attempting it at this moment."""
    which = DeliveryFilter(subscription_id=subscription_id, delivery_id=delivery_id)
    details: dict[str, Any] = {"delivery_id": delivery_id}
    with _recorded(engine, actor, "delivery retried", subscription_id, now, details) as conn:
        found = store.list_deliveries(conn, which=which, limit=1)
        if not found:
            raise NotFoundError(f"no delivery {delivery_id} of subscription {subscription_id!r}")
        if found[0].state == DeliveryState.SUCCEEDED:
            raise ConflictError(f"delivery {delivery_id} succeeded: replay its event instead")
        details["retried"] = store.retry_deliveries(conn, which, now=now, limit=1)
    return int(details["retried"])


def count_retryable(engine: Engine, which: DeliveryFilter, now: datetime) -> int:
    """How many deliveries of ``which`` a "retry all" would take now: the count shown before
    confirming (:func:`retry_matching` takes exactly those, up to its limit)."""
    with engine.connect() as conn:
        return store.count_retryable(conn, which, now=now)


def retry_matching(
    engine: Engine, which: DeliveryFilter, actor: Actor, now: datetime, *,
    limit: int = MAX_BATCH,
) -> dict[str, int]:  # fmt: skip
    """Send every delivery matching ``which`` again now (at most ``limit``, oldest first):
    "retry all failed" is ``which`` with ``states=("failed",)``; succeeded ones are never
    taken. Returns how many were retried and how many retryable ones were left beyond the
    limit."""
    details: dict[str, Any] = {"filter": _filter_view(which)}
    subject = which.subscription_id
    with _recorded(engine, actor, "deliveries retried", subject, now, details) as conn:
        matching = store.count_retryable(conn, which, now=now)
        details["retried"] = store.retry_deliveries(conn, which, now=now, limit=limit)
    retried = int(details["retried"])
    return {"retried": retried, "remaining": max(0, matching - retried)}


# --- quarantine -----------------------------------------------------------------------------


def replay_quarantined(receiver: Receiver, ident: int, actor: Actor, now: datetime) -> str:
    """Send one quarantined notification through ingestion again; returns its outcome."""
    outcome = receiver.replay(ident, now)
    record(receiver.engine, actor, "quarantine replayed", str(ident), now, outcome=outcome)
    return outcome


def count_quarantined(engine: Engine, which: QuarantineFilter) -> int:
    with engine.connect() as conn:
        return store.count_matching_quarantined(conn, which)


def replay_quarantined_matching(
    receiver: Receiver, which: QuarantineFilter, actor: Actor, now: datetime, *,
    limit: int = MAX_BATCH,
) -> dict[str, Any]:  # fmt: skip
    """Replay every quarantined notification matching ``which`` (at most ``limit``: never
    replayed first, then those replayed longest ago, so the next round takes the rest).
    Returns how many, their outcomes and how many matching ones remain."""
    with receiver.engine.connect() as conn:
        matching = store.count_matching_quarantined(conn, which)
        items = store.list_quarantined(conn, which=which, limit=limit, least_recently_replayed=True)
    outcomes = Counter(receiver.replay(item.id, now) for item in items)
    remaining = max(0, matching - len(items))
    record(receiver.engine, actor, "quarantine replayed", None, now,
           filter=_filter_view(which), replayed=len(items),
           outcomes=dict(outcomes))  # fmt: skip
    return {"replayed": len(items), "outcomes": dict(outcomes), "remaining": remaining}


def _filter_view(which: DeliveryFilter | QuarantineFilter) -> dict[str, Any]:
    """A filter as the audit log and the API show it: only the fields set."""
    view: dict[str, Any] = {}
    for name, value in dataclasses.asdict(which).items():
        if value in (None, (), False):
            continue
        view[name] = value.isoformat() if isinstance(value, datetime) else value
    if "states" in view:
        view["states"] = list(view["states"])
    return view
