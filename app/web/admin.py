"""``/v1/quarantine`` (list, show, replay one, replay every one matching a filter) and
``/v1/audit`` (who did what, through the API or the console). Replays are
:mod:`app.operations` functions, the console's too."""

from __future__ import annotations

import base64
from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from app import operations, store
from app.errors import NotFoundError
from app.models import QuarantinedNotification
from app.web import actor, require_api_key, services
from app.web.filters import Reader, filter_body, quarantine_filter
from app.web.inputs import ROW_ID

quarantine_bp = Blueprint("quarantine", __name__, url_prefix="/v1/quarantine")
audit_bp = Blueprint("audit", __name__, url_prefix="/v1/audit")

REPLAY_FIELDS = frozenset(
    {"error", "source", "job_id", "received_after", "received_before", "pending", "dry_run"}
)


def quarantined_view(item: QuarantinedNotification, *, with_body: bool) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": item.id,
        "received_at": item.received_at.isoformat().replace("+00:00", "Z"),
        "source": item.source,
        "job_id": item.job_id,
        "content_type": item.content_type,
        "error": item.error,
        "reasons": item.reasons,
        "replayed_at": item.replayed_at.isoformat().replace("+00:00", "Z")
        if item.replayed_at
        else None,
        "replay_outcome": item.replay_outcome,
    }
    if with_body:
        view["headers"] = item.headers
        try:
            view["body"] = item.body.decode("utf-8")
        except UnicodeDecodeError:  # a malformed one may be anything
            view["body_base64"] = base64.b64encode(item.body).decode()
    return view


def _paging() -> tuple[int, int | None]:
    """``limit`` (1 to 200, default 50) and ``before`` (an id), or a 400."""
    read = Reader(request.args)
    limit, before = read.limit(), read.row_id("before")
    read.done("invalid query parameters")
    return limit, before


@quarantine_bp.get("")
@require_api_key
def list_quarantined() -> ResponseReturnValue:
    """Newest first. Filters: ``error``, ``source``, ``job_id``, ``received_after``/
    ``received_before``, ``pending`` (not yet replayed); ``before`` (an id) pages."""
    which = quarantine_filter(request.args)
    limit, before = _paging()
    with services().engine.connect() as conn:
        items = store.list_quarantined(
            conn, which=which, after=before, newest_first=True, limit=limit
        )
    return jsonify(
        {
            "quarantined": [quarantined_view(i, with_body=False) for i in items],
            "next_before": items[-1].id if len(items) == limit else None,
        }
    )


@quarantine_bp.get(f"/<{ROW_ID}:ident>")
@require_api_key
def show_quarantined(ident: int) -> ResponseReturnValue:
    """One, with its headers and body (``body``, or ``body_base64`` when not UTF-8)."""
    with services().engine.connect() as conn:
        item = store.get_quarantined(conn, ident)
    if item is None:
        raise NotFoundError(f"no quarantined notification {ident}")
    return jsonify(quarantined_view(item, with_body=True))


@quarantine_bp.post(f"/<{ROW_ID}:ident>/replay")
@require_api_key
def replay_one(ident: int) -> ResponseReturnValue:
    """Send it through ingestion again: 200 ``{"outcome": "accepted"}`` (or what it came
    to: ``duplicate``, ``stale``, ``schema_violation``…)."""
    svc = services()
    outcome = operations.replay_quarantined(svc.receiver, ident, actor(), svc.clock())
    return jsonify({"id": ident, "outcome": outcome})


@quarantine_bp.post("/replay")
@require_api_key
def replay_matching() -> ResponseReturnValue:
    """Replay every quarantined notification matching the filter (the list's names, in a
    JSON body), at most 1,000, oldest first. ``"dry_run": true``: 200 ``{"matching": n}``;
    else 200 ``{"replayed": n, "outcomes": {...}, "remaining": m}``."""
    svc = services()
    body = filter_body(REPLAY_FIELDS, "a replay")
    which = quarantine_filter(body)
    if body.get("dry_run") is True:
        return jsonify({"matching": operations.count_quarantined(svc.engine, which)})
    return jsonify(
        operations.replay_quarantined_matching(svc.receiver, which, actor(), svc.clock())
    )


@audit_bp.get("")
@require_api_key
def list_audit() -> ResponseReturnValue:
    """Newest first: every action taken through the API or the console. Filters:
    ``actor`` (a key's name), ``action``, ``subject``; ``before`` (an id) pages."""
    limit, before = _paging()
    args = {name: request.args.get(name) or None for name in ("actor", "action", "subject")}
    with services().engine.connect() as conn:
        entries = store.list_audit(conn, **args, before=before, limit=limit)
    return jsonify(
        {
            "audit": [e.view() for e in entries],
            "next_before": entries[-1].id if len(entries) == limit else None,
        }
    )
