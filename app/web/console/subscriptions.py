"""Subscriptions: list, create, edit, enable/disable, rotate the secret (shown once), send a
test event, replay since a time; their deliveries with filters, retry one, retry every
failed one matching the filter (the count first, then a confirmation)."""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import Response, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from app import delivery, operations, store, subscriptions
from app.errors import BadRequestError, UnprocessableError
from app.models import DeliveryFilter, DeliveryState, Subscription
from app.web import services
from app.web.console import actor, bp
from app.web.filters import delivery_filter
from app.web.inputs import ROW_ID, ascii_int
from app.web.subscriptions import event_sender, find_subscription

PAGE = 50
FILTER_FIELDS = ("state", "job_id", "created_after", "created_before")


def _form_values(*, partial: bool, shown_url: str | None = None) -> dict[str, Any]:
    """The subscription form as :func:`app.subscriptions.parse` reads a JSON body. An edit
    form shows the URL masked (``shown_url``): sent back unchanged, it is not a change."""
    form = request.form
    body: dict[str, Any] = {}
    if ("url" in form or not partial) and form.get("url", "").strip() != shown_url:
        body["url"] = form.get("url", "").strip()
    if "event_types" in form or not partial:
        body["event_types"] = [t.strip() for t in form.get("event_types", "*").split(",")
                               if t.strip()] or ["*"]  # fmt: skip
    if "description" in form:
        body["description"] = form["description"]
    settings = services().settings
    return subscriptions.parse(
        body, settings.delivery_allowed_networks, partial=partial,
        credentials=settings.broker_logins,
    )  # fmt: skip


def _secret_page(item: Subscription, what: str) -> Response:
    """The secret, shown this once: never redirected through the (signed, readable)
    session cookie, never cached."""
    page = Response(render_template("console/secret.html", item=item, what=what))
    page.headers["Cache-Control"] = "no-store"
    return page


@bp.get("/subscriptions")
def subscriptions_page() -> ResponseReturnValue:
    with services().engine.connect() as conn:
        items = store.list_subscriptions(conn)
    return render_template("console/subscriptions.html", items=items)


@bp.post("/subscriptions")
def create_subscription() -> ResponseReturnValue:
    svc = services()
    item = operations.create_subscription(
        svc.engine, _form_values(partial=False), actor(), svc.clock()
    )
    return _secret_page(item, "created")


@bp.get("/subscriptions/<ident>")
def subscription(ident: str) -> ResponseReturnValue:
    item = find_subscription(ident)
    which = delivery_filter(request.args, ident)
    raw_before = request.args.get("before")
    before = ascii_int(raw_before) if raw_before else None
    if raw_before and before is None:
        raise BadRequestError("invalid filter", [{"field": "before", "reason": "an id"}])
    with services().engine.connect() as conn:
        found = store.list_deliveries(conn, which=which, before=before, limit=PAGE)
        retryable = store.count_retryable(conn, _retryable(which), now=services().clock())
    filters: dict[str, Any] = {
        k: ",".join(request.args.getlist(k)) for k in FILTER_FIELDS if request.args.get(k)
    }
    return render_template(
        "console/subscription.html", item=item, deliveries=found, filters=filters,
        retryable=retryable, states=[s.value for s in DeliveryState],
        next_before=found[-1].id if len(found) == PAGE else None,
    )  # fmt: skip


def _retryable(which: DeliveryFilter) -> DeliveryFilter:
    """The console's "retry all" is "retry all failed" unless the filter names states (what
    a retry cannot take of those, the store leaves out: :func:`store.count_retryable`)."""
    return which if which.states else dataclasses.replace(which, states=("failed",))


@bp.post("/subscriptions/<ident>/edit")
def edit_subscription(ident: str) -> ResponseReturnValue:
    svc = services()
    shown = find_subscription(ident).view()["url"]
    operations.update_subscription(
        svc.engine, ident, _form_values(partial=True, shown_url=shown), actor(), svc.clock()
    )
    flash("Subscription saved.", "ok")
    return redirect(url_for("console.subscription", ident=ident), code=303)


@bp.post("/subscriptions/<ident>/enabled")
def set_enabled(ident: str) -> ResponseReturnValue:
    svc = services()
    enabled = request.form.get("enabled") == "true"
    operations.update_subscription(svc.engine, ident, {"enabled": enabled}, actor(), svc.clock())
    flash("Subscription enabled." if enabled else "Subscription disabled.", "ok")
    return redirect(url_for("console.subscription", ident=ident), code=303)


@bp.post("/subscriptions/<ident>/rotate")
def rotate(ident: str) -> ResponseReturnValue:
    svc = services()
    grace = ascii_int(request.form.get("grace_seconds", "86400"))
    grace = operations.parse_grace({"grace_seconds": grace if grace is not None else -1})
    item = operations.rotate_secret(svc.engine, ident, grace, actor(), svc.clock())
    return _secret_page(item, "rotated")


@bp.post("/subscriptions/<ident>/test")
def send_test(ident: str) -> ResponseReturnValue:
    svc = services()
    report = operations.send_test_event(svc.engine, event_sender(), ident, actor(), svc.clock())
    answer = f"HTTP {report.status_code}" if report.status_code else (report.error or "")
    flash(f"Test event: {report.result.value} ({answer}, {report.duration_ms:.0f} ms).",
          "ok" if report.result.value == "success" else "warn")  # fmt: skip
    return redirect(url_for("console.subscription", ident=ident), code=303)


@bp.post("/subscriptions/<ident>/replay")
def replay(ident: str) -> ResponseReturnValue:
    svc = services()
    raw = request.form.get("since", "").strip()
    if raw and len(raw) == 16:  # an <input type="datetime-local">: minutes, UTC here
        raw += ":00Z"
    since = delivery.parse_since(raw)
    done = operations.start_replay(svc.engine, ident, actor(), svc.clock(), since=since)
    flash(f"Replay {done.id}: {done.deliveries} deliveries queued.", "ok")
    return redirect(url_for("console.subscription", ident=ident), code=303)


@bp.post(f"/subscriptions/<ident>/deliveries/<{ROW_ID}:delivery_id>/retry")
def retry_one(ident: str, delivery_id: int) -> ResponseReturnValue:
    svc = services()
    retried = operations.retry_delivery(svc.engine, ident, delivery_id, actor(), svc.clock())
    flash(f"Delivery {delivery_id} will be sent again now." if retried
          else f"Delivery {delivery_id} is being attempted right now.", "ok")  # fmt: skip
    return redirect(url_for("console.subscription", ident=ident), code=303)


@bp.post("/subscriptions/<ident>/retry")
def retry_matching(ident: str) -> ResponseReturnValue:
    """Without ``confirm``: how many failed deliveries match, and a button to confirm. With
    it: send them again (at most :data:`app.operations.MAX_BATCH`), and say how many."""
    svc = services()
    find_subscription(ident)
    try:
        which = _retryable(delivery_filter(request.form, ident))
    except BadRequestError as exc:
        raise UnprocessableError(exc.message, exc.details) from exc
    filters: dict[str, Any] = {k: request.form[k] for k in FILTER_FIELDS if request.form.get(k)}
    if request.form.get("confirm") != "yes":
        count = operations.count_retryable(svc.engine, which, svc.clock())
        return render_template(
            "console/confirm.html", count=count, filters=filters, limit=operations.MAX_BATCH,
            what=f"{'/'.join(which.states)} deliveries of {ident}", verb="Retry",
            action=url_for("console.retry_matching", ident=ident),
            back=url_for("console.subscription", ident=ident, **filters),
        )  # fmt: skip
    result = operations.retry_matching(svc.engine, which, actor(), svc.clock())
    flash(f"Retrying {result['retried']} deliveries now; {result['remaining']} matching left.",
          "ok")  # fmt: skip
    return redirect(url_for("console.subscription", ident=ident, **filters), code=303)
