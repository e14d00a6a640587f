"""``/v1/subscriptions``: create, list, get, update, delete, rotate the signing secret."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from app import delivery, store, subscriptions
from app.errors import BadRequestError, NotFoundError, UnprocessableError
from app.models import DeliveryState, Subscription, new_id
from app.web import audit, require_api_key, services
from app.web.inputs import ascii_int, json_body

bp = Blueprint("subscriptions", __name__, url_prefix="/v1/subscriptions")

#: how long a rotated-out secret keeps signing and verifying, unless the request says
DEFAULT_GRACE = timedelta(hours=24)
MAX_GRACE = timedelta(days=7)


@bp.post("")
@require_api_key
def create() -> ResponseReturnValue:
    """201 with the subscription and, this once, its ``secret``."""
    svc = services()
    values = subscriptions.parse(
        json_body(), svc.settings.delivery_allowed_networks,
        credentials=svc.settings.broker_logins,
    )  # fmt: skip
    now = svc.clock()
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
    with store.transaction(svc.engine) as conn:
        # deliveries start with the events after this moment
        item = dataclasses.replace(item, fanout_seq=store.events_head(conn))
        store.insert_subscription(conn, item)
    audit("subscription created", subscription_id=item.id)
    response = jsonify(item.view() | {"secret": item.secret})
    response.status_code = 201
    response.headers["Location"] = f"/v1/subscriptions/{item.id}"
    return response


@bp.get("")
@require_api_key
def list_all() -> ResponseReturnValue:
    with services().engine.connect() as conn:
        items = store.list_subscriptions(conn)
    return jsonify({"subscriptions": [item.view() for item in items]})


@bp.get("/<ident>")
@require_api_key
def get(ident: str) -> ResponseReturnValue:
    return jsonify(_get(ident).view())


@bp.patch("/<ident>")
@require_api_key
def update(ident: str) -> ResponseReturnValue:
    svc = services()
    values = subscriptions.parse(
        json_body(), svc.settings.delivery_allowed_networks, partial=True,
        credentials=svc.settings.broker_logins,
    )  # fmt: skip
    with store.transaction(svc.engine) as conn:
        current = store.get_subscription(conn, ident)
        if current is None:
            raise NotFoundError(f"no subscription {ident!r}")
        if values.get("enabled") is True and not current.enabled:
            # re-enabled by hand: pending deliveries resume; events of the disabled period
            # are not sent (a replay since a time brings them)
            values |= {"disabled_reason": None, "failing_since": None, "successes_in_a_row": 0}
            values["fanout_seq"] = store.events_head(conn)
        store.update_subscription(conn, ident, values | {"updated_at": svc.clock()})
    audit("subscription updated", subscription_id=ident)
    return jsonify(_get(ident).view())


@bp.delete("/<ident>")
@require_api_key
def delete(ident: str) -> ResponseReturnValue:
    with store.transaction(services().engine) as conn:
        if not store.delete_subscription(conn, ident):
            raise NotFoundError(f"no subscription {ident!r}")
    audit("subscription deleted", subscription_id=ident)
    return Response(status=204)


@bp.post("/<ident>/rotate-secret")
@require_api_key
def rotate_secret(ident: str) -> ResponseReturnValue:
    """A new secret, returned this once; the old one keeps working for ``grace_seconds``
    (default a day, at most a week), during which deliveries are signed with both."""
    svc = services()
    body = json_body()
    body = {} if body is None else body
    if not isinstance(body, dict):
        raise UnprocessableError(
            "a rotation is a JSON object", [{"field": "body", "message": '{"grace_seconds": 60}'}]
        )
    grace_seconds = body.get("grace_seconds", int(DEFAULT_GRACE.total_seconds()))
    if (
        not isinstance(grace_seconds, int)
        or isinstance(grace_seconds, bool)
        or not 0 <= grace_seconds <= MAX_GRACE.total_seconds()
    ):
        raise UnprocessableError(
            "invalid grace period",
            [{"field": "grace_seconds", "message": f"0 to {int(MAX_GRACE.total_seconds())}"}],
        )
    now = svc.clock()
    current = _get(ident)
    rotated = dataclasses.replace(
        current,
        secret=subscriptions.new_secret(),
        previous_secret=current.secret,
        previous_secret_expires_at=now + timedelta(seconds=grace_seconds),
        updated_at=now,
    )
    with store.transaction(svc.engine) as conn:
        store.update_subscription(
            conn,
            ident,
            {
                "secret": rotated.secret,
                "previous_secret": rotated.previous_secret,
                "previous_secret_expires_at": rotated.previous_secret_expires_at,
                "updated_at": now,
            },
        )
    audit("subscription secret rotated", subscription_id=ident)
    return jsonify(rotated.view() | {"secret": rotated.secret})


@bp.post("/<ident>/replay")
@require_api_key
def replay(ident: str) -> ResponseReturnValue:
    """Deliver events again, with their original ``webhook-id``: ``{"event_id": "evt_…"}``
    for one event, or ``{"since": "2026-11-25T08:00:00Z"}`` for every event since then that
    matches the subscription's types. 202 with the replay's id and how many deliveries."""
    svc = services()
    body = json_body()
    if not isinstance(body, dict) or set(body) - {"event_id", "since"}:
        raise UnprocessableError(
            "a replay is a JSON object with event_id or since",
            [{"field": "body", "message": 'e.g. {"since": "2026-11-25T08:00:00Z"}'}],
        )
    event_id = body.get("event_id")
    if event_id is not None and not isinstance(event_id, str):
        raise UnprocessableError(
            "invalid event_id", [{"field": "event_id", "message": "an event id"}]
        )
    since = delivery.parse_since(body["since"]) if "since" in body else None
    done = delivery.start_replay(svc.engine, ident, now=svc.clock(), event_id=event_id, since=since)
    audit("replay started", subscription_id=ident, replay_id=done.id, deliveries=done.deliveries)
    response = jsonify(
        {"replay_id": done.id, "subscription_id": ident, "deliveries": done.deliveries}
    )
    response.status_code = 202
    return response


@bp.get("/<ident>/deliveries")
@require_api_key
def list_deliveries(ident: str) -> ResponseReturnValue:
    """The subscription's deliveries, newest first, each with every attempt (result, status
    code, latency, an excerpt of the error). ``state`` filters; ``before`` (an id) pages."""
    _get(ident)
    states = [s for raw in request.args.getlist("state") for s in raw.split(",") if s]
    bad = [s for s in states if s not in set(DeliveryState)]
    limit = ascii_int(request.args.get("limit", "50"), 1, 200)
    raw_before = request.args.get("before")
    before = ascii_int(raw_before) if raw_before is not None else None
    problems = []
    if bad:
        problems.append({"field": "state", "reason": f"one of {sorted(DeliveryState)}"})
    if limit is None:
        problems.append({"field": "limit", "reason": "an integer from 1 to 200"})
    if raw_before is not None and before is None:
        problems.append({"field": "before", "reason": "a delivery id"})
    if problems or limit is None:
        raise BadRequestError("invalid query parameters", problems)
    with services().engine.connect() as conn:
        items = store.list_deliveries(
            conn,
            ident,
            states=states,
            before=before,
            limit=limit,
        )
    return jsonify(
        {
            "deliveries": [d.view() for d in items],
            "next_before": items[-1].id if len(items) == limit else None,
        }
    )


def _get(ident: str) -> Subscription:
    with services().engine.connect() as conn:
        item = store.get_subscription(conn, ident)
    if item is None:
        raise NotFoundError(f"no subscription {ident!r}")
    return item
