"""``/v1/subscriptions``: create, list, get, update, delete, rotate the signing secret, send a
test event, replay events, list deliveries and retry them (one, or every one matching a
filter). Each change is an :mod:`app.operations` function, the console's too."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from app import delivery, operations, store, subscriptions
from app.delivery.sender import Sender
from app.errors import BadRequestError, NotFoundError, UnprocessableError
from app.models import Subscription
from app.web import actor, require_api_key, services
from app.web.filters import Reader, delivery_filter, filter_body
from app.web.inputs import ROW_ID, json_body

bp = Blueprint("subscriptions", __name__, url_prefix="/v1/subscriptions")


@bp.post("")
@require_api_key
def create() -> ResponseReturnValue:
    """201 with the subscription and, this once, its ``secret``."""
    svc = services()
    values = subscriptions.parse(
        json_body(), svc.settings.delivery_allowed_networks,
        credentials=svc.settings.broker_logins,
    )  # fmt: skip
    item = operations.create_subscription(svc.engine, values, actor(), svc.clock())
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
    return jsonify(find_subscription(ident).view())


@bp.patch("/<ident>")
@require_api_key
def update(ident: str) -> ResponseReturnValue:
    svc = services()
    values = subscriptions.parse(
        json_body(), svc.settings.delivery_allowed_networks, partial=True,
        credentials=svc.settings.broker_logins,
    )  # fmt: skip
    item = operations.update_subscription(svc.engine, ident, values, actor(), svc.clock())
    return jsonify(item.view())


@bp.delete("/<ident>")
@require_api_key
def delete(ident: str) -> ResponseReturnValue:
    svc = services()
    operations.delete_subscription(svc.engine, ident, actor(), svc.clock())
    return Response(status=204)


@bp.post("/<ident>/rotate-secret")
@require_api_key
def rotate_secret(ident: str) -> ResponseReturnValue:
    """A new secret, returned this once; the old one keeps working for ``grace_seconds``
    (default a day, at most a week), during which deliveries are signed with both."""
    svc = services()
    grace = operations.parse_grace(json_body())
    rotated = operations.rotate_secret(svc.engine, ident, grace, actor(), svc.clock())
    return jsonify(rotated.view() | {"secret": rotated.secret})


@bp.post("/<ident>/test")
@require_api_key
def send_test(ident: str) -> ResponseReturnValue:
    """POST a signed ``com.cirelay.subscription.test`` event to the subscription now (not
    through the outbox: no other subscriber gets it); 200 with what it answered."""
    svc = services()
    report = operations.send_test_event(svc.engine, event_sender(), ident, actor(), svc.clock())
    return jsonify(
        {
            "result": report.result.value,
            "status_code": report.status_code,
            "duration_ms": round(report.duration_ms, 3),
            "error": report.error,
        }
    )


def event_sender() -> Sender:
    """The sender for test events: the SSRF rule and timeout of the deliveries."""
    settings = services().settings
    return Sender(
        allowed_networks=settings.delivery_allowed_networks,
        timeout=settings.delivery_timeout_seconds,
        pool_size=1,
    )


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
    done = operations.start_replay(
        svc.engine, ident, actor(), svc.clock(), event_id=event_id, since=since
    )
    response = jsonify(
        {"replay_id": done.id, "subscription_id": ident, "deliveries": done.deliveries}
    )
    response.status_code = 202
    return response


@bp.get("/<ident>/deliveries")
@require_api_key
def list_deliveries(ident: str) -> ResponseReturnValue:
    """The subscription's deliveries, newest first, each with every attempt (result, status
    code, latency, an excerpt of the error). Filters: ``state``, ``job_id``,
    ``created_after``/``created_before``; ``before`` (an id) pages."""
    find_subscription(ident)
    read = Reader(request.args)
    limit, before = read.limit(), read.row_id("before", "a delivery id")
    try:
        which = delivery_filter(request.args, ident)
    except BadRequestError as exc:
        read.problems[:0] = exc.details
    read.done("invalid query parameters")
    with services().engine.connect() as conn:
        items = store.list_deliveries(conn, which=which, before=before, limit=limit)
    return jsonify(
        {
            "deliveries": [d.view() for d in items],
            "next_before": items[-1].id if len(items) == limit else None,
        }
    )


@bp.post(f"/<ident>/deliveries/<{ROW_ID}:delivery_id>/retry")
@require_api_key
def retry_one(ident: str, delivery_id: int) -> ResponseReturnValue:
    """Send one delivery again now (given up, or waiting on its backoff): 202
    ``{"retried": 1}`` (0 while a worker is attempting it); 409 if it succeeded."""
    svc = services()
    retried = operations.retry_delivery(svc.engine, ident, delivery_id, actor(), svc.clock())
    return jsonify({"retried": retried}), 202


@bp.post("/<ident>/deliveries/retry")
@require_api_key
def retry_matching(ident: str) -> ResponseReturnValue:
    """Send every delivery of the subscription matching the filter again now (failed or
    pending ones: e.g. ``{"state": ["failed"]}``, every one given up), at most 1,000, oldest
    first. With ``"dry_run": true``: 200 ``{"matching": n}``, how many that would take, and
    nothing changes; else 202 ``{"retried": n, "remaining": m}``."""
    svc = services()
    body = filter_body(RETRY_FIELDS, "a retry")
    find_subscription(ident)
    which = delivery_filter(body, ident)
    if body.get("dry_run") is True:
        return jsonify({"matching": operations.count_retryable(svc.engine, which, svc.clock())})
    return jsonify(operations.retry_matching(svc.engine, which, actor(), svc.clock())), 202


RETRY_FIELDS = frozenset({"state", "job_id", "created_after", "created_before", "dry_run"})


def find_subscription(ident: str) -> Subscription:
    """The subscription, or a 404."""
    with services().engine.connect() as conn:
        item = store.get_subscription(conn, ident)
    if item is None:
        raise NotFoundError(f"no subscription {ident!r}")
    return item
