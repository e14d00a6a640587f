"""CI's notifications arrive here: ``POST /callbacks/ci/<job id>/<token>`` and
``POST /callbacks/ci/queue/<secret>``.

They are served by :class:`CallbackLane`, a plain WSGI layer in front of Flask, because they
are the service's hot path: thousands a second at peak, each a few KB, answered only once
durably committed. Flask's request machinery (request context, URL map, hooks, response
object) is a large share of the CPU a notification takes; the lane does the same work
with what it needs of werkzeug (the same input stream and size limits, the same
headers view). Every other path, and any other shape of path under ``/callbacks/ci/``, goes
on to Flask.

The order of the checks is deliberate: authenticate from the URL alone (no body read, no
database), then the content type and the size (still without parsing), and only then hand
the bytes to the one ingest path. A sender learns nothing about which check failed beyond
the status: an unknown job and a wrong token are the same 404.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from flask import Flask
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import EnvironHeaders
from werkzeug.exceptions import (
    ClientDisconnected,
    InternalServerError,
    MethodNotAllowed,
    RequestEntityTooLarge,
)
from werkzeug.wsgi import get_content_length, get_input_stream

from app import logs, tracing
from app.errors import (
    BadRequestError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceError,
    UnsupportedMediaTypeError,
)
from app.models import ApplyResult, Outcome, Received, Source
from app.notifications import CONTENT_TYPES, media_type
from app.tokens import is_valid_secret, is_valid_token
from app.web.errors import Answer, http_error, service_error

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from app import Services

log = logging.getLogger(__name__)

PREFIX = "/callbacks/ci/"
#: the lane's routes, as Flask's URL map lists them (:func:`register_routes`)
ROUTES = (
    ("/callbacks/ci/queue/<secret>", "callbacks.queue"),
    ("/callbacks/ci/<job_id>/<token>", "callbacks.job"),
)
#: request headers never stored with a notification
_SECRET_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "x-api-key"})
_MAX_STORED_HEADERS = 50


class _Rejected(Exception):
    """A notification refused before ingest, with the outcome it is counted under."""

    def __init__(self, error: ServiceError, outcome: Outcome) -> None:
        super().__init__(error.message)
        self.error = error
        self.outcome = outcome


def register_routes(app: Flask) -> None:
    """List the lane's routes in Flask's URL map, where ``flask routes`` and ``cirelay
    routes`` show every route: :class:`CallbackLane` answers every request they match before
    Flask sees it, so their view only says so if it is ever reached. Slashes are not merged,
    so a path the lane passes on (``/callbacks/ci/job//token``) stays Flask's 404."""

    def served_by_the_lane(**_: str) -> ResponseReturnValue:
        raise RuntimeError("CI's callbacks are served by CallbackLane, in front of Flask")

    for rule, endpoint in ROUTES:
        app.add_url_rule(rule, endpoint, served_by_the_lane, methods=["POST"],
                         merge_slashes=False)  # fmt: skip


class CallbackLane:
    """WSGI middleware: CI's callbacks here, everything else to ``app``."""

    def __init__(self, app: WSGIApplication, services: Services) -> None:
        self.app = app
        self.services = services

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or ""
        if not path.startswith(PREFIX):
            return self.app(environ, start_response)
        # as werkzeug's routing reads the path: its bytes as UTF-8
        first, _, second = (
            path[len(PREFIX) :].encode("latin-1").decode(errors="replace").partition("/")
        )
        if not first or not second or "/" in second:  # not a callback URL: Flask's 404
            return self.app(environ, start_response)
        status, document, headers = self._answer(environ, first, second)
        body = (json.dumps(document) + "\n").encode()
        start_response(
            f"{status} {HTTPStatus(status).phrase}",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(body))),
                *headers,
            ],
        )
        return [body]

    def _answer(self, environ: WSGIEnvironment, first: str, second: str) -> Answer:
        if environ.get("REQUEST_METHOD") != "POST":
            return http_error(MethodNotAllowed(valid_methods=["POST"]))
        try:
            return (
                200,
                {"results": [_result(r) for r in self._receive(environ, first, second)]},
                [],
            )
        except _Rejected as rejected:
            self.services.metrics.notifications.labels(rejected.outcome.value).inc()
            return service_error(rejected.error)
        except ServiceError as exc:  # a database that is down is one too: ingest says 503
            return service_error(exc)
        except Exception:  # as Flask would: logged (without the token), 500
            log.exception("exception on %s [POST]", logs.redact_path(PREFIX + f"{first}/{second}"))
            return http_error(InternalServerError())

    def _receive(self, environ: WSGIEnvironment, first: str, second: str) -> list[ApplyResult]:
        started = time.perf_counter()
        settings = self.services.settings
        if first == "queue":  # jobs nobody submitted through cirelay (queue or workflow jobs)
            source, job_id = Source.QUEUE, None
            known = is_valid_secret(second, settings.queue_callback_secrets)
        else:  # the CallBack URL cirelay gave one job when it submitted it
            source, job_id = Source.CALLBACK, first
            known = is_valid_token(first, second, settings.callback_keys)
        if not known:
            raise _Rejected(NotFoundError("no such callback"), Outcome.UNAUTHENTICATED)
        content_type = media_type(environ.get("CONTENT_TYPE"))
        if content_type not in CONTENT_TYPES:
            raise _Rejected(
                UnsupportedMediaTypeError(
                    f"content type {content_type or '(none)'!r} is not accepted; "
                    "send application/xml, text/xml or application/json"
                ),
                Outcome.UNSUPPORTED_MEDIA_TYPE,
            )
        body = _read_body(environ, settings.max_body_bytes)
        received = Received(
            body=body,
            content_type=content_type,
            headers=_stored_headers(environ),
            source=source,
            job_id=job_id,
        )
        results = self.services.receiver.ingest(received, self.services.clock())
        wire_format = "json" if content_type == "application/json" else "xml"
        self.services.metrics.processing_seconds.labels(wire_format).observe(
            time.perf_counter() - started, exemplar=tracing.exemplar()
        )
        return results


def _read_body(environ: WSGIEnvironment, cap: int) -> bytes:
    """At most ``cap`` bytes, or a 413; a body that cannot be read (broken chunked framing) is
    a 400, and so is a body that ends before its Content-Length (the client closed or
    half-closed mid-body): a broken transfer is not a notification, so neither is stored nor
    quarantined, only counted (``truncated``). werkzeug's input stream, as Flask's request
    would use. (Under gunicorn the stream simply ends early; werkzeug's own servers raise
    ClientDisconnected.)

    The limit is one byte above the cap: a Content-Length beyond it is refused before any
    read; otherwise we read the cap, then one more byte, and tell "exactly the cap" from
    "more" (a chunked body is cut off at the limit)."""
    declared = get_content_length(environ)
    try:
        stream = get_input_stream(environ, max_content_length=cap + 1)
        body = stream.read(cap)
        over = stream.read(1)
    except RequestEntityTooLarge:
        raise _Rejected(_too_large(cap), Outcome.TOO_LARGE) from None
    except ClientDisconnected:
        raise _Rejected(_truncated(declared), Outcome.TRUNCATED) from None
    except Exception as exc:
        log.info("unreadable request body: %s", exc)
        raise _Rejected(
            BadRequestError("the request body could not be read"), Outcome.MALFORMED
        ) from exc
    if over:
        raise _Rejected(_too_large(cap), Outcome.TOO_LARGE)
    if declared is not None and len(body) < declared:
        raise _Rejected(_truncated(declared), Outcome.TRUNCATED)
    return body


def _truncated(declared: int | None) -> BadRequestError:
    return BadRequestError(f"the request body ended before its Content-Length ({declared})")


def _too_large(cap: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"notification larger than {cap} bytes")


def _stored_headers(environ: WSGIEnvironment) -> dict[str, str]:
    kept = [(k, v) for k, v in EnvironHeaders(environ).items() if k.lower() not in _SECRET_HEADERS]
    return {k: v[:1024] for k, v in kept[:_MAX_STORED_HEADERS]}


def _result(r: ApplyResult) -> dict[str, Any]:
    if r.workflow:  # a workflow instance: its id and RunId
        return {
            "outcome": r.outcome.value,
            "workflow_execution_id": r.job_id,
            "run_id": r.ci_job_id,
            "state": r.state,
        }
    return {
        "outcome": r.outcome.value,
        "job_id": r.job_id,
        "ci_job_id": r.ci_job_id,
        "state": r.state,
    }
