"""The ASGI application gunicorn's event-loop worker runs (:mod:`app.serving.asgi_worker`).

:class:`Serving` reads each request whole on the event loop (its body within
``CIRELAY_MAX_BODY_BYTES`` and ``CIRELAY_BODY_TIMEOUT_SECONDS``), and only then runs the WSGI
application (the callback lane and Flask, :func:`app.create_app`) in one of a pool of threads
(``a2wsgi``): a client that sends slowly holds a socket and a buffer, never a thread. A body
that misses its deadline is answered 408 and its connection closed; the application never
sees it, so nothing of it is stored.

An event stream (``GET /v1/events/stream``) is checked by its Flask view in a thread like any
request; the view hands the stream over (:class:`app.web.stream.StreamPlan`) and the event
loop writes it (:class:`app.web.stream.Streams`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from a2wsgi import WSGIMiddleware
from werkzeug.exceptions import RequestTimeout

from app import logs
from app.web import events
from app.web.errors import http_error
from app.web.stream import PLAN, Receive, Send, Streams

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

    from app import Services

STREAM_PATH = "/v1/events/stream"


class Serving:
    """ASGI: whole requests to the WSGI application in threads; streams on the loop."""

    def __init__(self, wsgi_app: WSGIApplication, services: Services, *, threads: int) -> None:
        settings = services.settings
        #: read by :class:`app.serving.asgi_worker.DeadlineProtocol`
        self.header_timeout_seconds = settings.header_timeout_seconds
        self.body_timeout_seconds = settings.body_timeout_seconds
        self.max_body_bytes = settings.max_body_bytes
        noted: Any = _WholeRequest(wsgi_app)
        #: a2wsgi's typed scope and messages are the plain dicts used here
        self.threads: Any = WSGIMiddleware(noted, workers=threads)
        self.streams = Streams(
            services, poll=events.STREAM_POLL_SECONDS, keepalive=events.STREAM_KEEPALIVE_SECONDS
        )

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":  # websockets: not served
            return
        body = await self._whole_body(scope, receive)
        if body is None:
            await _answer(send, *http_error(RequestTimeout()), close=True)
            return
        replay = _Replay(body, receive)
        if scope["path"] != STREAM_PATH:
            await self.threads(scope, replay, send)
            return
        held = _HoldLastBody(send)
        await self.threads(scope, replay, held)
        plan = scope.get(PLAN)
        if plan is None:  # refused (401, 400, 503): the answer as it is
            await held.release()
            return
        await self.streams.serve(plan, replay, send)

    async def _whole_body(self, scope: dict[str, Any], receive: Receive) -> bytes | None:
        """The request's body, up to one byte past the cap (the application refuses more), or
        the part that came before the client closed or half-closed (the application sees a
        body shorter than its Content-Length); ``None`` past the deadline. A Content-Length
        over the cap is not read at all."""
        declared = _content_length(scope)
        if declared == 0 or (declared is not None and declared > self.max_body_bytes + 1):
            return b""
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.body_timeout_seconds):
                while size <= self.max_body_bytes:
                    message = await receive()
                    if message["type"] != "http.request":
                        break
                    chunks.append(message.get("body", b""))
                    size += len(chunks[-1])
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            return None
        return b"".join(chunks)


class _Replay:
    """``receive`` for the application: the body read beforehand, then the connection's own
    (which tells when the client leaves)."""

    def __init__(self, body: bytes, receive: Receive) -> None:
        self._body: bytes | None = body
        self._receive = receive

    async def __call__(self) -> dict[str, Any]:
        body, self._body = self._body, None
        if body is not None:
            return {"type": "http.request", "body": body, "more_body": False}
        return await self._receive()


class _HoldLastBody:
    """``send`` that keeps back the message ending the response, for a stream to go on."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._held: dict[str, Any] | None = None

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self._held = message
        else:
            await self._send(message)

    async def release(self) -> None:
        if self._held is not None:
            await self._send(self._held)


class _WholeRequest:
    """WSGI, between a2wsgi and the application: the input is the whole body, ended by its
    end (``wsgi.input_terminated``, which werkzeug reads a chunked body by); the API key's
    name the request was made with goes into the ASGI scope, where the access log reads it
    (:meth:`app.serving.asgi_worker.DeadlineProtocol._build_environ`)."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        environ["wsgi.input_terminated"] = True
        try:
            return self.app(environ, start_response)
        finally:
            name = environ.get(logs.API_KEY_ENVIRON)
            if name:
                environ["asgi.scope"]["cirelay.log"] = {logs.API_KEY_ENVIRON: name}


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def _answer(
    send: Send, status: int, document: dict[str, Any], headers: list[tuple[str, str]], *,
    close: bool,
) -> None:  # fmt: skip
    body = (json.dumps(document) + "\n").encode()
    head = [("content-type", "application/json"), ("content-length", str(len(body))), *headers]
    if close:
        head.append(("connection", "close"))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(k.lower().encode(), v.encode()) for k, v in head],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})
