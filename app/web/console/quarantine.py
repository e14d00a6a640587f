"""Quarantine: list, detail (every reason, the offending elements marked in the body), replay
one, replay every one matching a filter (the count first, then a confirmation, then the
result)."""

from __future__ import annotations

from typing import Any

from flask import flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from app import bodies, operations, store
from app.errors import BadRequestError, NotFoundError
from app.web import services
from app.web.console import actor, bp
from app.web.filters import QUARANTINE_ERRORS, quarantine_filter
from app.web.inputs import ROW_ID, ascii_int

PAGE = 50
FILTER_FIELDS = ("error", "source", "job_id", "received_after", "received_before", "pending")


def _filter_args() -> dict[str, Any]:
    """The filter's fields as given (to carry them from page to form to confirmation)."""
    return {k: request.values[k] for k in FILTER_FIELDS if request.values.get(k)}


@bp.get("/quarantine")
def quarantine() -> ResponseReturnValue:
    which = quarantine_filter(request.args)
    raw_before = request.args.get("before")
    before = ascii_int(raw_before) if raw_before else None
    if raw_before and before is None:
        raise BadRequestError("invalid filter", [{"field": "before", "reason": "an id"}])
    with services().engine.connect() as conn:
        items = store.list_quarantined(
            conn, which=which, after=before, newest_first=True, limit=PAGE
        )
        matching = store.count_matching_quarantined(conn, which)
    return render_template(
        "console/quarantine.html", items=items, filters=_filter_args(), matching=matching,
        errors=[e.value for e in QUARANTINE_ERRORS],
        next_before=items[-1].id if len(items) == PAGE else None,
    )  # fmt: skip


@bp.get(f"/quarantine/<{ROW_ID}:ident>")
def quarantined(ident: int) -> ResponseReturnValue:
    with services().engine.connect() as conn:
        item = store.get_quarantined(conn, ident)
    if item is None:
        raise NotFoundError(f"no quarantined notification {ident}")
    paths = [r.get("path", "") for r in item.reasons if isinstance(r, dict)]
    lines = bodies.pretty_lines(item.body, item.content_type, paths)
    return render_template("console/quarantined.html", item=item, body_lines=lines)


@bp.post(f"/quarantine/<{ROW_ID}:ident>/replay")
def replay_quarantined(ident: int) -> ResponseReturnValue:
    svc = services()
    outcome = operations.replay_quarantined(svc.receiver, ident, actor(), svc.clock())
    flash(f"Notification {ident} replayed: {outcome}.", "ok" if outcome in _GOOD else "warn")
    return redirect(url_for("console.quarantined", ident=ident), code=303)


_GOOD = frozenset({"accepted", "duplicate", "stale"})


@bp.post("/quarantine/replay")
def replay_matching() -> ResponseReturnValue:
    """Without ``confirm``: how many match, and a button to confirm. With it: replay them
    (at most :data:`app.operations.MAX_BATCH`) and show what each came to."""
    svc = services()
    which = quarantine_filter(request.form)
    filters = _filter_args()
    if request.form.get("confirm") != "yes":
        count = operations.count_quarantined(svc.engine, which)
        return render_template(
            "console/confirm.html", count=count, filters=filters, limit=operations.MAX_BATCH,
            what="quarantined notifications", verb="Replay",
            action=url_for("console.replay_matching"),
            back=url_for("console.quarantine", **filters),
        )  # fmt: skip
    result = operations.replay_quarantined_matching(svc.receiver, which, actor(), svc.clock())
    outcomes = ", ".join(f"{n} {o}" for o, n in sorted(result["outcomes"].items())) or "none"
    flash(
        f"Replayed {result['replayed']} quarantined notifications: {outcomes}; "
        f"{result['remaining']} matching left.",
        "ok",
    )
    return redirect(url_for("console.quarantine", **filters), code=303)
