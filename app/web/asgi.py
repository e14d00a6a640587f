"""The ASGI application gunicorn's event-loop worker runs (:mod:`app.serving.asgi_worker`).

:class:`Serving` reads each request whole on the event loop (its body within
``CIRELAY_MAX_BODY_BYTES`` and ``CIRELAY_BODY_TIMEOUT_SECONDS``), and only then runs the WSGI
application (the callback lane and Flask, :func:`app.create_app`) in one of a pool of
threads, with ``a2wsgi``'s WSGI environ, taking its whole answer back at once: a client that
sends slowly holds a socket and a buffer, never a thread. A body
that misses its deadline is answered 408 and its connection closed; the application never
sees it, so nothing of it is stored.

An event stream (``GET /v1/events/stream``) is checked by its Flask view in a thread like any
request; the view hands the stream over (:class:`app.web.stream.StreamPlan`) and the event
loop writes it (:class:`app.web.stream.Streams`).
"""

from __future__ import annotations

import asyncio
import io
import json
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, cast

from a2wsgi.wsgi import build_environ
from werkzeug.exceptions import RequestTimeout

from app import logs
from app.web import events
from app.web.errors import http_error
from app.web.stream import PLAN, Receive, Send, Streams

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

    from app import Services


class WholeRequests:
    """ASGI: each request read whole on the loop, then the WSGI application run on it in a
    thread (see the module). Also how the benchmarks serve their baselines."""

    def __init__(
        self, wsgi_app: WSGIApplication, *, threads: int, max_body_bytes: int,
        body_timeout_seconds: float, header_timeout_seconds: float,
    ) -> None:  # fmt: skip
        #: read by :class:`app.serving.asgi_worker.DeadlineProtocol`
        self.header_timeout_seconds = header_timeout_seconds
        self.body_timeout_seconds = body_timeout_seconds
        self.max_body_bytes = max_body_bytes
        self.app = wsgi_app
        self.threads = ThreadPoolExecutor(threads, thread_name_prefix="app")

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
        # a2wsgi's environ (its typed scope is the plain dict used here); the input is the
        # whole body, ended by its end (werkzeug reads a chunked body by that flag)
        made = build_environ(cast(Any, scope), cast(Any, io.BytesIO(body)))
        environ = cast("WSGIEnvironment", made)
        environ["wsgi.input_terminated"] = True
        loop = asyncio.get_running_loop()
        status, headers, chunks = await loop.run_in_executor(self.threads, _run, self.app, environ)
        if name := environ.get(logs.API_KEY_ENVIRON):  # the access line names the key
            scope["cirelay.log"] = {logs.API_KEY_ENVIRON: name}
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await self._respond(scope, receive, send, b"".join(chunks))

    async def _respond(
        self, scope: dict[str, Any], receive: Receive, send: Send, body: bytes
    ) -> None:
        await send({"type": "http.response.body", "body": body})

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


class Serving(WholeRequests):
    """cirelay's: whole requests to the WSGI application in threads; streams on the loop."""

    def __init__(self, wsgi_app: WSGIApplication, services: Services, *, threads: int) -> None:
        settings = services.settings
        super().__init__(
            wsgi_app, threads=threads, max_body_bytes=settings.max_body_bytes,
            body_timeout_seconds=settings.body_timeout_seconds,
            header_timeout_seconds=settings.header_timeout_seconds,
        )  # fmt: skip
        self.streams = Streams(
            services, poll=events.STREAM_POLL_SECONDS, keepalive=events.STREAM_KEEPALIVE_SECONDS
        )

    async def _respond(
        self, scope: dict[str, Any], receive: Receive, send: Send, body: bytes
    ) -> None:
        plan = scope.get(PLAN)
        if plan is None:  # every answer but a stream (a refused one too): whole
            await super()._respond(scope, receive, send, body)
            return
        await self.streams.serve(plan, receive, send)


def _run(
    app: WSGIApplication, environ: WSGIEnvironment
) -> tuple[int, list[tuple[bytes, bytes]], list[bytes]]:
    """Call the WSGI application (in a thread) and take its whole answer: status, headers and
    body, handed to the event loop at once (a2wsgi's middleware hands each part over and
    waits for the loop, three round trips between threads a request)."""
    chunks: list[bytes] = []
    answer: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        answer[:] = [int(status.split(" ", 1)[0]), headers]
        return chunks.append

    body = app(environ, start_response)
    try:
        chunks.extend(body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()
    status, headers = answer
    return status, [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers], chunks


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
