"""The event log for consumers who pull: ``GET /v1/events?after=<seq>&limit=&type=``.

Each entry is a CloudEvents 1.0 document (JSON structured mode) whose ``sequence`` extension
is its position; ``next_after`` is the cursor for the next call. Events become visible in
sequence order (see :func:`app.store.insert_events`), so resuming after the last sequence seen
misses nothing and repeats nothing.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from app import store
from app.errors import BadRequestError
from app.events import to_cloudevent
from app.web import require_api_key, services

bp = Blueprint("events", __name__, url_prefix="/v1/events")

MAX_PAGE = 500


@bp.get("")
@require_api_key
def list_events() -> ResponseReturnValue:
    """``after`` (default 0), ``limit`` (1 to 500, default 100), ``type`` (repeat or
    comma-separate; ``com.cirelay.job.*`` for every job event)."""
    details = []
    after, limit = request.args.get("after", "0"), request.args.get("limit", "100")
    if not after.isdigit():
        details.append({"field": "after", "reason": "a sequence number (0 or more)"})
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_PAGE:
        details.append({"field": "limit", "reason": f"an integer from 1 to {MAX_PAGE}"})
    patterns = [t for raw in request.args.getlist("type") for t in raw.split(",") if t]
    if details:
        raise BadRequestError("invalid query parameters", details)
    everything = not patterns or "*" in patterns
    with services().engine.connect() as conn:
        page = store.list_events(
            conn,
            after=int(after),
            limit=int(limit),
            types=[] if everything else [p for p in patterns if not p.endswith(".*")],
            type_prefixes=[] if everything else [p[:-1] for p in patterns if p.endswith(".*")],
        )
    return jsonify(
        {
            "events": [to_cloudevent(event) for event in page],
            "next_after": page[-1].seq if page else int(after),
        }
    )
