"""Every request carries an id, whichever lane serves it: the one place it is bound.

:class:`RequestIds` wraps the whole WSGI stack (Flask and the callback lane in front of it):
it binds the id (:func:`app.logs.bind_request_id`: a proxy's sane ``X-Request-ID`` or a new
one) for every log line of the request, sends it back in the answer's ``X-Request-ID``
(which the access log reads), and unbinds it once the answer's body is sent, since the
thread serves other requests next.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.wsgi import ClosingIterator

from app import logs, tracing
from app.metrics import Metrics

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

HEADER = "X-Request-ID"
#: methods counted by name (others as ``other``: the label stays low-cardinality)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestIds:
    """WSGI middleware: bind, send back and unbind each request's id; count each request by
    method and status and time it to the end of its body."""

    def __init__(self, app: WSGIApplication, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        request_id = logs.bind_request_id(environ.get("HTTP_X_REQUEST_ID"))
        method = environ.get("REQUEST_METHOD", "")
        method = method if method in _METHODS else "other"

        def start_with_id(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            self.metrics.http_requests.labels(method, status[:3]).inc()
            return start_response(status, [*headers, (HEADER, request_id)], *args)

        def finish() -> None:
            self.metrics.http_request_seconds.observe(
                time.perf_counter() - started, exemplar=tracing.exemplar()
            )
            _unbind()

        try:
            body = self.app(environ, start_with_id)
        except BaseException:
            logs.REQUEST_ID.set(None)
            raise
        return ClosingIterator(body, [finish])


def _unbind() -> None:
    logs.REQUEST_ID.set(None)
