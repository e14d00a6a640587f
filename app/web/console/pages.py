"""The pages that only read: overview, jobs (list and timeline), events, audit."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import render_template, request
from flask.typing import ResponseReturnValue

from app import bodies, store
from app.errors import BadRequestError, NotFoundError
from app.models import (
    Delivery,
    DeliveryFilter,
    Event,
    Job,
    JobState,
    NotificationRecord,
    Outcome,
    TypeFilter,
)
from app.web import services
from app.web.console import bp, is_htmx
from app.web.console.charts import bar_chart
from app.web.events import open_stream, read_query
from app.web.filters import Reader, job_query
from app.web.inputs import ascii_int

PAGE = 50


@bp.get("/")
def overview() -> ResponseReturnValue:
    template = "console/overview_figures.html" if is_htmx() else "console/overview.html"
    return render_template(template, **_figures())


def _figures() -> dict[str, Any]:
    svc = services()
    now = svc.clock()
    windows = {"hour": timedelta(hours=1), "day": timedelta(days=1)}
    with svc.engine.connect() as conn:
        figures = store.figures(conn, now)
        states = {w: store.count_jobs_by_state(conn, since=now - d) for w, d in windows.items()}
        outcomes = {
            w: store.count_notifications_by_outcome(conn, since=now - d) for w, d in windows.items()
        }
        disabled = [s for s in store.list_subscriptions(conn) if not s.enabled]
    state_names = [s.value for s in JobState]
    outcome_names = [o.value for o in Outcome]
    charts = {
        w: {
            "states": bar_chart(
                f"jobs created in the last {w}, by state",
                [(s, states[w].get(s, 0)) for s in state_names],
            ),
            "outcomes": bar_chart(
                f"notifications received in the last {w}, by outcome",
                [(o, n) for o, n in sorted(outcomes[w].items(), key=_outcome_order)],
            ),
        }
        for w in windows
    }
    return {
        "now": now,
        "figures": figures,
        "states": states,
        "outcomes": outcomes,
        "state_names": state_names,
        "outcome_names": outcome_names,
        "charts": charts,
        "disabled": disabled,
    }


def _outcome_order(item: tuple[str, int]) -> int:
    names = [o.value for o in Outcome]
    return names.index(item[0]) if item[0] in names else len(names)


# --- jobs -----------------------------------------------------------------------------------


@bp.get("/jobs")
def jobs() -> ResponseReturnValue:
    """Filters as ``GET /v1/jobs`` takes them; ``cursor`` pages. The first page refreshes
    itself (htmx polls the rows), so a job is seen moving without reloading."""
    read = Reader(request.args)
    query = job_query(read)
    read.done()
    cursor = request.args.get("cursor") or None
    with services().engine.connect() as conn:
        page = store.list_jobs(conn, **query.arguments(), before_id=cursor, limit=PAGE)
    context = {
        "jobs": page,
        "query": query,
        "cursor": cursor,
        "next_cursor": page[-1].id if len(page) == PAGE else None,
        "state_names": [s.value for s in JobState],
        "args": request.args,
    }
    if is_htmx():
        return render_template("console/job_rows.html", **context)
    return render_template("console/jobs.html", **context)


@dataclass(frozen=True)
class Step:
    """One line of a job's timeline."""

    at: datetime
    kind: str  # submission, notification, event
    title: str
    item: Any


@bp.get("/jobs/<ident>")
def job(ident: str) -> ResponseReturnValue:
    """A job's timeline: its submission (the CI request as sent, CI's answer), every
    notification (body pretty-printed, headers, outcome), every event (state changes), and
    per subscription the deliveries of its events with every attempt."""
    svc = services()
    with svc.engine.connect() as conn:
        found = store.find_job(conn, ident)
        if found is None:
            raise NotFoundError(f"no job {ident!r}")
        notes = store.list_notifications(conn, found.id, with_bodies=True)
        events = store.list_events(conn, job_id=found.id, limit=500)
        sent = store.list_deliveries(conn, which=DeliveryFilter(job_id=found.id), limit=500)
        subs = {s.id: s for s in store.list_subscriptions(conn)}
    by_subscription: dict[str, list[Delivery]] = {}
    for d in sorted(sent, key=lambda d: d.id):
        by_subscription.setdefault(d.subscription_id, []).append(d)
    return render_template(
        "console/job.html",
        job=found,
        timeline=_timeline(found, notes, events),
        request_lines=bodies.pretty_json(found.request) if found.request else None,
        by_subscription=by_subscription,
        subscriptions=subs,
    )


def _timeline(job: Job, notes: list[NotificationRecord], events: list[Event]) -> list[Step]:
    steps = [Step(job.created_at, "submission", f"{job.origin}: recorded", job)]
    for note in notes:
        lines = bodies.pretty_lines(note.body or b"", note.content_type or "")
        title = f"notification {note.state} ({note.outcome}, {note.source})"
        steps.append(Step(note.received_at, "notification", title, (note, lines)))
    for event in events:
        data = event.data if isinstance(event.data, dict) else {}
        title = event.type
        if "state" in data:
            title += f": {data.get('previous_state') or 'new'} → {data['state']}"
        steps.append(Step(event.time, "event", title, event))
    order = ["submission", "notification", "event"]
    return sorted(steps, key=lambda s: (s.at, order.index(s.kind)))


# --- events ---------------------------------------------------------------------------------


@bp.get("/events")
def events() -> ResponseReturnValue:
    """The outbox, newest first; ``type`` (patterns as the API takes them) and ``job_id``
    filter, ``before`` (a sequence number) pages. "Follow" streams new ones as they come."""
    patterns = [t for raw in request.args.getlist("type") for t in raw.split(",") if t]
    wanted = TypeFilter.from_patterns(patterns)
    raw_before = request.args.get("before")
    before = ascii_int(raw_before) if raw_before else None
    if raw_before and before is None:
        raise BadRequestError("invalid filter", [{"field": "before", "reason": "a sequence"}])
    job_id = request.args.get("job_id") or None
    with services().engine.connect() as conn:
        head = store.events_head(conn)
        page = store.list_events(
            conn, before=before if before is not None else head + 1, limit=PAGE,
            types=list(wanted.types), type_prefixes=list(wanted.prefixes), job_id=job_id,
        )  # fmt: skip
    return render_template(
        "console/events.html", events=page, head=head, type=",".join(patterns),
        job_id=job_id or "", next_before=page[-1].seq if len(page) == PAGE else None,
    )  # fmt: skip


@bp.get("/events/stream")
def event_stream() -> ResponseReturnValue:
    """The API's event stream (``GET /v1/events/stream``) for the signed-in console."""
    return open_stream(read_query(request.args.get("after", "0")))


# --- audit ----------------------------------------------------------------------------------


@bp.get("/audit")
def audit() -> ResponseReturnValue:
    raw_before = request.args.get("before")
    before = ascii_int(raw_before) if raw_before else None
    if raw_before and before is None:
        raise BadRequestError("invalid filter", [{"field": "before", "reason": "an id"}])
    args = {name: request.args.get(name) or None for name in ("actor", "action", "subject")}
    with services().engine.connect() as conn:
        entries = store.list_audit(conn, **args, before=before, limit=PAGE)
    return render_template(
        "console/audit.html", entries=entries, filters=args,
        next_before=entries[-1].id if len(entries) == PAGE else None,
    )  # fmt: skip
