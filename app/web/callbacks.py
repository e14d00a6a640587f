"""CI's notifications arrive here.

The order of the checks is deliberate: authenticate from the URL alone (no body read, no
database), then the content type and the size (still without parsing), and only then hand
the bytes to the one ingest path. A sender learns nothing about which check failed beyond
the status: an unknown job and a wrong token are the same 404.
"""

from __future__ import annotations

import logging
import time
from typing import NoReturn

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import RequestEntityTooLarge

from app.errors import (
    BadRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceError,
    UnsupportedMediaTypeError,
)
from app.models import Outcome, Received, Source
from app.notifications import CONTENT_TYPES, media_type
from app.tokens import is_valid_secret, is_valid_token
from app.web import services

log = logging.getLogger(__name__)
bp = Blueprint("callbacks", __name__, url_prefix="/callbacks/ci")

#: request headers never stored with a notification
_SECRET_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "x-api-key"})
_MAX_STORED_HEADERS = 50


@bp.post("/queue/<secret>")
def queue_notification(secret: str) -> ResponseReturnValue:
    """Notifications for jobs nobody submitted through cirelay (queue or workflow jobs)."""
    started = time.perf_counter()
    if not is_valid_secret(secret, services().settings.queue_callback_secret):
        _reject(NotFoundError("no such callback"), Outcome.UNAUTHENTICATED)
    return _receive(Source.QUEUE, None, started)


@bp.post("/<job_id>/<token>")
def job_notification(job_id: str, token: str) -> ResponseReturnValue:
    """The CallBack URL cirelay gave one job when it submitted it."""
    started = time.perf_counter()
    if not is_valid_token(job_id, token, services().settings.callback_keys):
        _reject(NotFoundError("no such callback"), Outcome.UNAUTHENTICATED)
    return _receive(Source.CALLBACK, job_id, started)


def _receive(source: Source, job_id: str | None, started: float) -> ResponseReturnValue:
    svc = services()
    content_type = media_type(request.content_type)
    if content_type not in CONTENT_TYPES:
        _reject(
            UnsupportedMediaTypeError(
                f"content type {content_type or '(none)'!r} is not accepted; "
                "send application/xml, text/xml or application/json"
            ),
            Outcome.UNSUPPORTED_MEDIA_TYPE,
        )
    cap = svc.settings.max_body_bytes
    if request.content_length is not None and request.content_length > cap:
        _reject(_too_large(cap), Outcome.TOO_LARGE)
    try:
        body = request.stream.read(cap)
        over = request.stream.read(1)  # werkzeug stops at the cap and raises on the next read
    except RequestEntityTooLarge:  # a chunked body werkzeug cut off at MAX_CONTENT_LENGTH
        _reject(_too_large(cap), Outcome.TOO_LARGE)
    except Exception as exc:  # broken chunked framing, a client gone mid-body, …
        log.info("unreadable request body: %s", exc)
        _reject(BadRequestError("the request body could not be read"), Outcome.MALFORMED)
    if over:
        _reject(_too_large(cap), Outcome.TOO_LARGE)

    received = Received(
        body=body,
        content_type=content_type,
        headers=_stored_headers(),
        source=source,
        job_id=job_id,
    )
    results = svc.receiver.ingest(received, svc.clock())
    wire_format = "json" if content_type == "application/json" else "xml"
    svc.metrics.processing_seconds.labels(wire_format).observe(time.perf_counter() - started)
    return jsonify(
        {
            "results": [
                {
                    "outcome": r.outcome.value,
                    "job_id": r.job_id,
                    "ci_job_id": r.ci_job_id,
                    "state": r.state,
                }
                for r in results
            ]
        }
    )


def _too_large(cap: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"notification larger than {cap} bytes")


def _reject(error: ServiceError, outcome: Outcome) -> NoReturn:
    """Count the rejection under its outcome, then raise it (rendered by the error handler)."""
    services().metrics.notifications.labels(outcome.value).inc()
    raise error


def _stored_headers() -> dict[str, str]:
    kept = [(k, v) for k, v in request.headers.items() if k.lower() not in _SECRET_HEADERS]
    return {k: v[:1024] for k, v in kept[:_MAX_STORED_HEADERS]}
