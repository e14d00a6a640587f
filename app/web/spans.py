"""One OpenTelemetry server span per request (``CIRELAY_TRACING=on`` only: the factory
installs :class:`RequestSpans` only then), continuing the client's ``traceparent``.

The span stays current until the answer's body is sent (a stream's too), so every span the
request makes (the CI call, ingest, commit) and every log line carries its trace.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.wsgi import ClosingIterator

from app import tracing

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment


class RequestSpans:
    """WSGI middleware: a server span around each request."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = tracing.start_request(
            environ.get("REQUEST_METHOD", "GET"),
            environ.get("PATH_INFO", "/"),
            environ.get("HTTP_TRACEPARENT"),
        )
        if request is None:
            return self.app(environ, start_response)

        def start_with_status(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            code = status.split(" ", 1)[0]
            request.status(int(code) if code.isdigit() else 0)
            return start_response(status, headers, *args)

        try:
            body = self.app(environ, start_with_status)
        except BaseException as exc:
            request.fail(exc)
            raise
        return ClosingIterator(body, [request.end])
