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
import re
import socket
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from gunicorn.asgi.protocol import ASGIProtocol
from gunicorn.workers import gasgi

from app.serving.balanced_worker import TABLE

#: seconds a connection may take to send its first request's headers (the application's
#: ``header_timeout_seconds`` overrides it)
HEADER_TIMEOUT_SECONDS = 10.0
_REQUEST_LINE = re.compile(r"([A-Z]+) (/\S*) HTTP/1\.[01]")
#: how soon a worker that left a connection to a worker with fewer looks again
RETRY_SECONDS = 0.01


class DeadlineProtocol(ASGIProtocol):  # type: ignore[misc]
    """gunicorn's HTTP/1 protocol, with the headers' deadline and half-close kept open."""

    _header_timer: asyncio.TimerHandle | None = None
    #: the start of a request not yet parsed (for the access line of a refused one)
    _first_line = b""
    #: the client sent EOF with a request under way
    _half_closed = False

    def connection_made(self, transport: Any) -> None:
        self._scopes: dict[int, Any] = {}  # by request, until its access log line is written
        super().connection_made(transport)
        timeout = getattr(self.app, "header_timeout_seconds", HEADER_TIMEOUT_SECONDS)
        self._header_timer = self.worker.loop.call_later(timeout, self._headers_too_slow)

    def _on_headers_complete(self) -> Any:
        self._cancel_header_timer()
        self._first_line = b""
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
        self._half_closed = True
        receiver = self._body_receiver
        if receiver is not None and not receiver._complete:
            receiver.signal_disconnect()
        return True

    async def _serve_http_request(self, request: Any, sockname: Any, peername: Any) -> Any:
        """One request; a client that half-closed sends no next one, so its connection is
        closed once answered. Kept open it would never be read again (asyncio stops reading
        at EOF), hold the worker's connection count up, and make a graceful stop wait out
        ``graceful_timeout`` (a request sent, then FIN, before the worker accepted: a probe
        that timed out while the service started)."""
        keepalive = await super()._serve_http_request(request, sockname, peername)
        return keepalive and not self._half_closed

    def _close_transport(self) -> None:
        """gunicorn's, then the transport closed even when its ``write_eof`` failed: on a
        connection the peer reset, ``shutdown`` raises ENOTCONN and gunicorn's skips the
        close, so the connection is never lost and holds the worker's count up for good (a
        graceful stop then waits out ``graceful_timeout`` for it)."""
        transport = self.transport
        super()._close_transport()
        if transport is not None and not transport.is_closing():
            transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)
        publish = getattr(self.worker, "_publish", None)
        if publish is not None:  # the other workers see this one's count drop at once
            publish()

    def data_received(self, data: bytes) -> None:
        if self._current_request is None and b"\n" not in self._first_line:
            self._first_line = (self._first_line + data)[:8192]  # for _log_refused
        super().data_received(data)

    def _send_error_response(self, status: int, message: str, extra_headers: Any = ()) -> None:
        super()._send_error_response(status, message, extra_headers)
        if self.log.access_log_enabled:
            self._log_refused(status)

    def _log_refused(self, status: int) -> None:
        """An access line for a request gunicorn refused itself (bad framing, a duplicate
        Content-Length), as its threaded workers write and its asyncio worker does not: the
        method and path parsed, else those of a well-formed request line; none without."""
        request = self._current_request
        if request is not None:
            method, path = request.method, request.path
        else:
            line = self._first_line.split(b"\r\n", 1)[0].decode("latin-1")
            if not (match := _REQUEST_LINE.fullmatch(line)):
                return
            method, path = match[1], match[2].split("?", 1)[0]
        peer = self.transport.get_extra_info("peername")
        self.log.access(
            SimpleNamespace(status=str(status), headers=[], sent=0),
            SimpleNamespace(method=method, path=path),
            {"REMOTE_ADDR": peer[0] if peer else "-"},
            timedelta(0),
        )

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _build_http_scope(self, request: Any, sockname: Any, peername: Any) -> Any:
        scope = super()._build_http_scope(request, sockname, peername)
        if self.log.access_log_enabled:  # the access log reads what the application noted
            self._scopes[id(request)] = scope
        return scope

    def _build_environ(self, request: Any, sockname: Any, peername: Any) -> Any:
        """The access log's environ, with what the application noted for it (the API key's
        name) in the request's scope."""
        environ = super()._build_environ(request, sockname, peername)
        environ.update(self._scopes.pop(id(request), {}).get("cirelay.log", {}))
        return environ


class Worker(gasgi.ASGIWorker):  # type: ignore[misc]
    """gunicorn's ASGI worker, serving its connections with :class:`DeadlineProtocol` and
    accepting a connection only while no other live worker holds fewer.

    gunicorn's own worker serves the listening socket with asyncio's server, which takes up to
    a hundred connections each time it is woken: a burst of connections (a balancer's
    keep-alive pool, CI's senders, wrk) lands on one worker, with its GIL and its CPU, while
    the other idles, and the service gets half of what it could (``bench/RESULTS.md``). As
    :class:`app.serving.balanced_worker.BalancedThreadWorker` does for gthread, this worker
    publishes its count of connections in the table shared with the others
    (:data:`app.serving.balanced_worker.TABLE`, its slot given by the master's ``pre_fork``)
    and accepts one connection at a time while it has the fewest; otherwise it looks again
    :data:`RETRY_SECONDS` later. Without a slot, or with TLS, it is gunicorn's worker."""

    cirelay_slot: int | None = None
    #: the application's streams (:class:`app.web.stream.Streams`), if it has any
    _streams: Any = None

    def load_wsgi(self) -> None:
        """Load the application; its event streams end when this worker stops (so a graceful
        stop or a ``--max-requests`` recycle need not wait out ``graceful_timeout``: the
        clients reconnect, to another worker, with ``Last-Event-ID``)."""
        super().load_wsgi()
        streams = getattr(self.asgi, "streams", None)
        if streams is not None:
            streams.stopping = lambda: not self.alive
            self._streams = streams

    def run(self) -> None:
        gasgi.ASGIProtocol = DeadlineProtocol  # the protocol of gunicorn's own _serve (TLS)
        try:
            super().run()
        finally:
            if self._quick_shutdown:
                # SIGQUIT or SIGINT: the loop is gone, and an application thread still handing
                # its answer over to it would wait forever, and the interpreter's exit with it
                self.log.info("Worker exiting (pid: %s)", self.pid)
                logging.shutdown()
                os._exit(0)

    async def _serve(self) -> None:
        """Accept (:meth:`_accept`), beat the heart once a second, then shut down as gunicorn
        does (:meth:`_shutdown`: in-flight connections finish within ``graceful_timeout``).
        The application has no lifespan to run."""
        if self.cirelay_slot is None or self.cfg.is_ssl:
            await super()._serve()
            return
        self._accepting = 0  # accepted, not yet counted in nr_conns
        listeners = [sock.sock for sock in self.sockets]
        for listener in listeners:
            listener.setblocking(False)
            self.loop.add_reader(listener.fileno(), self._accept, listener)
            self.log.info("ASGI server listening on %s", listener.getsockname())
        while self.alive and self.ppid == os.getppid():
            self.notify()
            self._publish()
            await asyncio.sleep(1.0)
        for listener in listeners:
            self.loop.remove_reader(listener.fileno())
        await self._shutdown()

    def _accept(self, listener: socket.socket) -> None:
        """Woken for a connection: take it while this worker has the fewest, one at a time."""
        while self.alive:
            if not self._fewest():
                self.loop.remove_reader(listener.fileno())
                self.loop.call_later(RETRY_SECONDS, self._listen_again, listener)
                return
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):  # another worker took it
                return
            except OSError as exc:  # out of file descriptors, …: the next wake tries again
                self.log.warning("accept failed: %s", exc)
                return
            conn.setblocking(False)
            self._accepting += 1
            self.loop.create_task(self._connect(conn))

    def _listen_again(self, listener: socket.socket) -> None:
        if self.alive:
            self.loop.add_reader(listener.fileno(), self._accept, listener)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: DeadlineProtocol(self), conn)
        except OSError:
            conn.close()
        finally:
            self._accepting -= 1

    def _connections(self) -> int:
        """The connections this worker holds that are not event streams: a stream costs a
        socket and a write now and then, a request connection costs the application's CPU;
        counting streams, the request connections would go to the worker with fewer streams
        until the counts are level (1,000 streams split 490/510: 18 request connections to
        the one before the other gets any) rather than be split evenly."""
        streams: int = self._streams.open if self._streams is not None else 0
        return int(self.nr_conns) + getattr(self, "_accepting", 0) - streams

    def _fewest(self) -> bool:
        assert self.cirelay_slot is not None
        count = self._connections()
        now = time.monotonic()
        TABLE.publish(self.cirelay_slot, count, now)
        return TABLE.fewest(self.cirelay_slot, count, now, self.cfg.workers)

    def _publish(self) -> None:
        if self.cirelay_slot is not None:
            count = self._connections()
            TABLE.publish(self.cirelay_slot, count, time.monotonic())
