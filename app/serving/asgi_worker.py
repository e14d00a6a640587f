"""gunicorn's own asyncio worker (``gunicorn.workers.gasgi``), with a deadline on the headers.

Each worker multiplexes its connections on one event loop: a connection costs a socket and a
buffer until its request has fully arrived (:mod:`app.web.asgi` holds the body back from the
application until it is complete), so clients that send slowly cost no thread. The deadlines,
one per phase of a connection:

- **headers**: :class:`DeadlineProtocol` closes a connection whose first request's headers
  are not complete ``CIRELAY_HEADER_TIMEOUT_SECONDS`` after it opened (gunicorn's protocol has
  no such limit; nothing was parsed, so nothing is stored);
- **body**: :class:`app.web.asgi.Serving` answers 408 and closes when a body is not complete
  ``CIRELAY_BODY_TIMEOUT_SECONDS`` after its headers;
- **idle keep-alive**: gunicorn's ``keepalive`` (``CIRELAY_KEEPALIVE_SECONDS``), which also
  bounds the headers of every later request on a kept-alive connection (gunicorn's timer runs
  until they are complete).

A client that half-closes after its request (``shutdown(SHUT_WR)``) still gets its answer:
gunicorn's protocol would close the connection on the end of input; this one keeps the write
side open while a request is under way, and a body cut short by it ends the request (the
callback lane counts it ``truncated``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from gunicorn.asgi.protocol import ASGIProtocol
from gunicorn.workers import gasgi

#: seconds a connection may take to send its first request's headers (the application's
#: ``header_timeout_seconds`` overrides it)
HEADER_TIMEOUT_SECONDS = 10.0


class DeadlineProtocol(ASGIProtocol):  # type: ignore[misc]
    """gunicorn's HTTP/1 protocol, with the headers' deadline and half-close kept open."""

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self._scopes: dict[int, Any] = {}  # by request, until its access log line is written
        super().connection_made(transport)
        timeout = getattr(self.app, "header_timeout_seconds", HEADER_TIMEOUT_SECONDS)
        self._header_timer = self.worker.loop.call_later(timeout, self._headers_too_slow)

    def _on_headers_complete(self) -> Any:
        self._cancel_header_timer()
        return super()._on_headers_complete()

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._current_request is None and not self._closed:
            self.log.info("closing a connection whose headers did not arrive in time")
            self._close_transport()
            if self._request_ready is not None:  # the connection's task sees it closed
                self._request_ready.set()

    def eof_received(self) -> bool:
        """The client will send no more. With a request under way, keep the connection open
        to answer it (a body it cut short ends now); otherwise close it (asyncio's default)."""
        if self._current_request is None:
            return False
        receiver = self._body_receiver
        if receiver is not None and not receiver._complete:
            receiver.signal_disconnect()
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _build_http_scope(self, request: Any, sockname: Any, peername: Any) -> Any:
        scope = super()._build_http_scope(request, sockname, peername)
        self._scopes[id(request)] = scope  # the access log reads what the application noted
        return scope

    def _build_environ(self, request: Any, sockname: Any, peername: Any) -> Any:
        """The access log's environ, with what the application noted for it (the API key's
        name) in the request's scope."""
        environ = super()._build_environ(request, sockname, peername)
        environ.update(self._scopes.pop(id(request), {}).get("cirelay.log", {}))
        return environ


class Worker(gasgi.ASGIWorker):  # type: ignore[misc]
    """gunicorn's ASGI worker serving its connections with :class:`DeadlineProtocol`.

    The worker makes each connection's protocol by the name ``ASGIProtocol`` in its module
    (``tests/serving/test_gunicorn_internals.py`` checks it); this process runs only this
    worker, so the name is pointed at the subclass when it starts serving."""

    def load_wsgi(self) -> None:
        """Load the application; its event streams end when this worker stops (so a graceful
        stop or a ``--max-requests`` recycle need not wait out ``graceful_timeout``: the
        clients reconnect, to another worker, with ``Last-Event-ID``)."""
        super().load_wsgi()
        streams = getattr(self.asgi, "streams", None)
        if streams is not None:
            streams.stopping = lambda: not self.alive

    def run(self) -> None:
        gasgi.ASGIProtocol = DeadlineProtocol
        try:
            super().run()
        finally:
            if self._quick_shutdown:
                # SIGQUIT or SIGINT: the loop is gone, and an application thread still handing
                # its answer over to it would wait forever, and the interpreter's exit with it
                self.log.info("Worker exiting (pid: %s)", self.pid)
                logging.shutdown()
                os._exit(0)
