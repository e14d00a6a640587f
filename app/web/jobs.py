"""The read API for jobs: ``GET /v1/jobs/<id>`` and ``GET /v1/jobs``."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from app import store
from app.errors import BadRequestError, NotFoundError
from app.models import JobState
from app.web import require_api_key, services

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")

MAX_PAGE = 200


@bp.get("/<ident>")
@require_api_key
def get_job(ident: str) -> ResponseReturnValue:
    """One job by cirelay id or CI JobId, with the notifications recorded for it."""
    with services().engine.connect() as conn:
        job = store.find_job(conn, ident)
        if job is None:
            raise NotFoundError(f"no job {ident!r}")
        notifications = store.list_notifications(conn, job.id)
    view = job.view()
    view["notifications"] = [
        {
            "id": n.id,
            "state": n.state,
            "source": n.source,
            "outcome": n.outcome,
            "wire_format": n.wire_format,
            "received_at": n.received_at.isoformat().replace("+00:00", "Z"),
        }
        for n in notifications
    ]
    return jsonify(view)


@bp.get("")
@require_api_key
def list_jobs() -> ResponseReturnValue:
    """Newest first. Filters: ``state`` (repeat or comma-separate), ``tag``,
    ``created_after``/``created_before`` (ISO 8601); ``limit`` (1 to 200, default 50);
    ``cursor`` from the previous page's ``next_cursor``."""
    states = [s for raw in request.args.getlist("state") for s in raw.split(",") if s]
    bad = [s for s in states if s not in JobState.__members__.values()]
    details = [{"field": "state", "reason": f"unknown state {s!r}"} for s in bad]
    after = _timestamp("created_after", details)
    before = _timestamp("created_before", details)
    limit = request.args.get("limit", "50")
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_PAGE:
        details.append({"field": "limit", "reason": f"an integer from 1 to {MAX_PAGE}"})
    if details:
        raise BadRequestError("invalid query parameters", details)
    with services().engine.connect() as conn:
        page = store.list_jobs(
            conn,
            states=states,
            tag=request.args.get("tag") or None,
            created_after=after,
            created_before=before,
            before_id=request.args.get("cursor") or None,
            limit=int(limit),
        )
    next_cursor = page[-1].id if len(page) == int(limit) else None
    return jsonify({"jobs": [job.view() for job in page], "next_cursor": next_cursor})


def _timestamp(name: str, details: list[dict[str, str]]) -> datetime | None:
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        details.append({"field": name, "reason": "not an ISO 8601 timestamp"})
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
