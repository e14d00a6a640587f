"""Every request carries an id, whichever lane serves it: the one place it is bound.

:class:`RequestIds` wraps the whole WSGI stack (Flask and the callback lane in front of it):
it binds the id (:func:`app.logs.bind_request_id`: a proxy's sane ``X-Request-ID`` or a new
one) for every log line of the request, sends it back in the answer's ``X-Request-ID``
(which the access log reads), and unbinds it once the answer's body is sent, since the
thread serves other requests next.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.wsgi import ClosingIterator

from app import logs

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

HEADER = "X-Request-ID"


class RequestIds:
    """WSGI middleware: bind, send back and unbind each request's id."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request_id = logs.bind_request_id(environ.get("HTTP_X_REQUEST_ID"))

        def start_with_id(status: str, headers: list[tuple[str, str]], *args: Any) -> Any:
            return start_response(status, [*headers, (HEADER, request_id)], *args)

        try:
            body = self.app(environ, start_with_id)
        except BaseException:
            logs.REQUEST_ID.set(None)
            raise
        return ClosingIterator(body, [_unbind])


def _unbind() -> None:
    logs.REQUEST_ID.set(None)
