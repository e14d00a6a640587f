"""The event log for consumers who pull: ``GET /v1/events?after=<seq>&limit=&type=`` and the
same as Server-Sent Events, ``GET /v1/events/stream``.

Each entry is a CloudEvents 1.0 document (JSON structured mode) whose ``sequence`` extension
is its position; ``next_after`` is the cursor for the next call. Events become visible in
sequence order (see :func:`app.store.insert_events`), so resuming after the last sequence seen
misses nothing and repeats nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

from flask import Blueprint, Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from app import store
from app.errors import BadRequestError, UnavailableError
from app.events import to_cloudevent
from app.models import Event, TypeFilter
from app.web import require_api_key, services
from app.web.inputs import ascii_int
from app.web.stream import KEEPALIVE, PLAN, RETRY, StreamPlan, sse_message

bp = Blueprint("events", __name__, url_prefix="/v1/events")

MAX_PAGE = 500


#: how often a stream looks for new events (the event loop's one reader of the outbox per
#: process, :class:`app.web.stream.EventTail`; a thread per stream under gthread)
STREAM_POLL_SECONDS = 0.05
#: how long a stream may stay silent; under gthread also how soon a stream whose client left
#: notices it (on the next write) and frees its thread (the event loop notices at once)
STREAM_KEEPALIVE_SECONDS = 5.0


@dataclass(frozen=True)
class _Query:
    after: int
    limit: int
    types: list[str]
    prefixes: list[str]

    def page(self, after: int) -> list[Event]:
        with services().engine.connect() as conn:
            return store.list_events(
                conn, after=after, limit=self.limit, types=self.types, type_prefixes=self.prefixes
            )


def read_query(after: str) -> _Query:
    """``after`` (a sequence number), ``limit`` (1 to 500, default 100), ``type`` (repeat or
    comma-separate; ``com.cirelay.job.*`` for every job event; ``*`` for all)."""
    details = []
    after_seq = ascii_int(after)
    limit = ascii_int(request.args.get("limit", "100"), 1, MAX_PAGE)
    if after_seq is None:
        details.append({"field": "after", "reason": "a sequence number (0 to 2^63-1)"})
    if limit is None:
        details.append({"field": "limit", "reason": f"an integer from 1 to {MAX_PAGE}"})
    if after_seq is None or limit is None:
        raise BadRequestError("invalid query parameters", details)
    patterns = [t for raw in request.args.getlist("type") for t in raw.split(",") if t]
    wanted = TypeFilter.from_patterns(patterns)
    return _Query(
        after=after_seq, limit=limit, types=list(wanted.types), prefixes=list(wanted.prefixes)
    )


@bp.get("")
@require_api_key
def list_events() -> ResponseReturnValue:
    """One page of events after ``after``; ``next_after`` is the cursor."""
    query = read_query(request.args.get("after", "0"))
    page = query.page(query.after)
    return jsonify(
        {
            "events": [to_cloudevent(event) for event in page],
            "next_after": page[-1].seq if page else query.after,
        }
    )


@bp.get("/stream")
@require_api_key
def stream_events() -> ResponseReturnValue:
    """Server-Sent Events: each event once, in order, ``id:`` = its sequence number; resume
    with ``Last-Event-ID`` (or ``?after=``); a comment line keeps idle connections open.

    Served by gunicorn's event loop (:mod:`app.web.asgi`), this view only checks the request
    and hands a :class:`app.web.stream.StreamPlan` over in the ASGI scope: the stream itself
    costs no thread. Under a thread-per-connection server (gthread, Flask's test client) the
    stream is the generator below and holds a thread. Either way at most
    ``CIRELAY_MAX_STREAMS`` per process; above it, 503 with Retry-After (the load balancer's
    next try may reach another process)."""
    return open_stream(
        read_query(request.headers.get("Last-Event-ID") or request.args.get("after", "0"))
    )


def open_stream(query: _Query) -> Response:
    """The Server-Sent Events answer for ``query`` (the API's and the console's)."""
    svc = services()
    metrics, slots, waker = svc.metrics, svc.stream_slots, svc.waker
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if not slots.acquire(blocking=False):
        raise UnavailableError(
            f"this process already serves {svc.settings.max_streams} streams; try again"
        )
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    scope = request.environ.get("asgi.scope")
    if scope is not None:  # the event loop serves the stream once this answer's head is sent
        wanted = TypeFilter(tuple(query.types), tuple(query.prefixes))
        scope[PLAN] = StreamPlan(query.after, wanted, query.limit, slots.release)
        return Response(iter(()), mimetype="text/event-stream", headers=headers)

    def generate() -> Iterator[str]:
        metrics.sse_clients.inc()
        try:
            yield RETRY
            after, spoke = query.after, time.monotonic()
            while True:
                with app.app_context():
                    page = query.page(after)
                for event in page:
                    yield sse_message(event)
                    after = event.seq
                if page:
                    spoke = time.monotonic()
                    continue
                waker.wait(STREAM_POLL_SECONDS)  # at once on PostgreSQL's NOTIFY
                if time.monotonic() - spoke >= STREAM_KEEPALIVE_SECONDS:
                    yield KEEPALIVE
                    spoke = time.monotonic()
        finally:
            metrics.sse_clients.dec()

    response = Response(generate(), mimetype="text/event-stream", headers=headers)
    response.call_on_close(slots.release)  # also when the stream never started
    return response
