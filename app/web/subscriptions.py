"""``/v1/subscriptions``: create, list, get, update, delete, rotate the signing secret."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from app import store, subscriptions
from app.errors import NotFoundError, UnprocessableError
from app.models import Subscription, new_id
from app.web import require_api_key, services

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
        request.get_json(silent=True), svc.settings.delivery_allowed_networks
    )
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
        store.insert_subscription(conn, item)
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
        request.get_json(silent=True), svc.settings.delivery_allowed_networks, partial=True
    )
    if values.get("enabled") is True:
        values["disabled_reason"] = None  # re-enabled by hand
    with store.transaction(svc.engine) as conn:
        if not store.update_subscription(conn, ident, values | {"updated_at": svc.clock()}):
            raise NotFoundError(f"no subscription {ident!r}")
    return jsonify(_get(ident).view())


@bp.delete("/<ident>")
@require_api_key
def delete(ident: str) -> ResponseReturnValue:
    with store.transaction(services().engine) as conn:
        if not store.delete_subscription(conn, ident):
            raise NotFoundError(f"no subscription {ident!r}")
    return Response(status=204)


@bp.post("/<ident>/rotate-secret")
@require_api_key
def rotate_secret(ident: str) -> ResponseReturnValue:
    """A new secret, returned this once; the old one keeps working for ``grace_seconds``
    (default a day, at most a week), during which deliveries are signed with both."""
    svc = services()
    body = request.get_json(silent=True) or {}
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
    return jsonify(rotated.view() | {"secret": rotated.secret})


def _get(ident: str) -> Subscription:
    with services().engine.connect() as conn:
        item = store.get_subscription(conn, ident)
    if item is None:
        raise NotFoundError(f"no subscription {ident!r}")
    return item
