"""Jobs: submit (``POST /v1/jobs``), read (``GET /v1/jobs/<id>``) and list (``GET /v1/jobs``)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from app import operations, store
from app.ci import wire
from app.ci.errors import CIDocumentError
from app.errors import (
    BadRequestError,
    NotFoundError,
    UnprocessableError,
    UnsupportedMediaTypeError,
)
from app.models import Job
from app.notifications import XML_CONTENT_TYPES, media_type
from app.submission import request_from_json
from app.web import actor, is_admin, require_api_key, services
from app.web.filters import Reader, job_query
from app.web.inputs import json_body

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


@bp.post("")
@require_api_key
def submit_job() -> ResponseReturnValue:
    """Submit a VoiceSeparate job: cirelay's JSON, or CI's own ``<Request>`` XML."""
    svc = services()
    settings = svc.settings
    kind = media_type(request.content_type)
    if kind in XML_CONTENT_TYPES:
        try:
            ci_request = wire.parse_request(
                request.get_data(), max_bytes=settings.max_body_bytes, max_depth=settings.max_depth
            )
        except CIDocumentError as exc:
            raise UnprocessableError(exc.message, exc.details) from exc
        ci_request.pop("CallBack", None)  # cirelay's own URL goes there
        bucket = request.args.get("bucket") or settings.ci_bucket
        region = request.args.get("region") or settings.ci_region
    elif kind == "application/json":
        ci_request, bucket, region = request_from_json(
            json_body(),
            default_bucket=settings.ci_bucket,
            default_region=settings.ci_region,
        )
    else:
        raise UnsupportedMediaTypeError("send application/json or a CI <Request> as XML")
    key = request.headers.get("Idempotency-Key") or None
    if key is not None and not 1 <= len(key) <= 255:
        raise BadRequestError("Idempotency-Key must be 1 to 255 characters")
    job, replayed = svc.submitter.submit(
        ci_request, bucket, region, svc.clock(), idempotency_key=key
    )
    if not replayed:
        operations.record(svc.engine, actor(), "job submitted", job.id, svc.clock(),
                          ci_job_id=job.ci_job_id)  # fmt: skip
    response = jsonify(_job_resource(job))
    response.status_code = 201
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _job_resource(job: Job) -> dict[str, Any]:
    """The job as the API shows it; its ``callback_url`` (the job's callback token: whoever
    holds it can report the job's state) only to an admin key."""
    view = job.view()
    if job.origin == "api" and is_admin():
        view["callback_url"] = services().submitter.callback_url(job.id)
    return view


@bp.get("/<ident>")
@require_api_key
def get_job(ident: str) -> ResponseReturnValue:
    """One job by cirelay id or CI JobId, with the notifications recorded for it."""
    with services().engine.connect() as conn:
        job = store.find_job(conn, ident)
        if job is None:
            raise NotFoundError(f"no job {ident!r}")
        notifications = store.list_notifications(conn, job.id)
    view = _job_resource(job)
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
    """Newest first. Filters: ``state`` (repeat or comma-separate), ``tag``, ``origin``
    (``api``, ``queue``), ``ci_job_id``, ``user_data`` (contains),
    ``created_after``/``created_before`` (ISO 8601); ``limit`` (1 to 200, default 50);
    ``cursor`` from the previous page's ``next_cursor``."""
    read = Reader(request.args)
    query, limit = job_query(read), read.limit()
    read.done("invalid query parameters")
    with services().engine.connect() as conn:
        page = store.list_jobs(
            conn, **query.arguments(), before_id=request.args.get("cursor") or None, limit=limit
        )
    next_cursor = page[-1].id if len(page) == limit else None
    return jsonify({"jobs": [_job_resource(job) for job in page], "next_cursor": next_cursor})
