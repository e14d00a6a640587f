"""A real webhook subscriber on loopback for the delivery tests and the benchmark.

    with Subscriber() as hook:                      # listening on 127.0.0.1:<free port>
        hook.answer = lambda n, req: Answer(503, {"Retry-After": "1"}) if n < 2 else Answer()
        ...
        events = hook.verified(secret)              # standardwebhooks + cloudevents SDK

It speaks HTTP/1.1 with keep-alive (as real receivers do), records every request with the time
it arrived, and can go down (:meth:`stop`, which also cuts open connections) and come back up
on the same port (:meth:`start`).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cloudevents.v1.http import from_http
from standardwebhooks.webhooks import Webhook


@dataclass(frozen=True)
class Answer:
    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0


@dataclass(frozen=True)
class Request:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    arrived: float  # time.time()
    status: int  # what was answered

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]

    def event(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.body)
        return document


class Subscriber:
    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.requests: list[Request] = []
        self.answer: Callable[[int, Request], Answer] = lambda n, request: Answer()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()
        self.start()

    # --- life ---------------------------------------------------------------------------

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with owner._lock:
                    owner._connections.add(self.connection)

            def finish(self) -> None:
                with owner._lock:
                    owner._connections.discard(self.connection)
                super().finish()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                seen = Request(self.path, headers, body, time.time(), 0)
                with owner._lock:
                    n = len(owner.requests)
                answer = owner.answer(n, seen)
                if answer.delay:
                    time.sleep(answer.delay)
                with owner._lock:
                    owner.requests.append(
                        Request(self.path, headers, body, seen.arrived, answer.status)
                    )
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # the default 5 overflows under concurrent deliveries

        server = Server(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Go down: stop listening and cut every open connection."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        with self._lock:
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what arrived -------------------------------------------------------------------

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def received(self) -> list[Request]:
        with self._lock:
            return list(self.requests)

    def accepted(self) -> list[Request]:
        return [r for r in self.received() if 200 <= r.status < 300]

    def wait_for(self, n: int, timeout: float = 30.0, *, accepted: bool = True) -> list[Request]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.accepted() if accepted else self.received()
            if len(got) >= n:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"subscriber got {len(got)} of {n} requests")
            time.sleep(0.02)

    def verified(self, *secrets: str, accepted: bool = True) -> list[Any]:
        """Every request checked with the standardwebhooks verifier (against any of the
        secrets) and parsed with the cloudevents SDK; raises if one does not verify."""
        events = []
        for request in self.accepted() if accepted else self.received():
            errors = []
            for secret in secrets:
                try:
                    Webhook(secret).verify(request.body, request.headers)
                    break
                except Exception as exc:
                    errors.append(exc)
            else:
                raise AssertionError(f"signature does not verify: {errors}")
            events.append(from_http(request.headers, request.body))
        return events
