"""Sending one delivery: a POST of the CloudEvent (JSON structured mode) with the Standard
Webhooks headers, signed with the ``standardwebhooks`` package (with both secrets during a
rotation's grace period).

The host is resolved and every address checked again here, then the connection goes to a
checked address, so DNS rebinding does not get past the check made when the URL was saved. No
redirects are followed. ``Retry-After`` is read from 429 and 503 answers.

Each attempt has a wall-clock deadline, the whole of it (connect, send, read the answer):
urllib3's timeouts bound each socket operation, so a subscriber that drip-feeds its answer a
byte at a time would hold an attempt, and a delivery slot, for as long as it liked.
:class:`_Deadlines` shuts the socket of an attempt past its deadline, which ends the read.
"""

from __future__ import annotations

import contextlib
import email.utils
import heapq
import ipaddress
import itertools
import logging
import re
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import urllib3
from standardwebhooks.webhooks import Webhook
from urllib3.connection import HTTPConnection, HTTPSConnection

from app.models import AttemptResult
from app.subscriptions import ForbiddenAddress, Resolver, allowed_address, is_public, resolve

USER_AGENT = "cirelay-webhooks/1"
#: how much of a subscriber's answer is kept with a failed attempt (none for an address that
#: is not on the public internet)
EXCERPT_BYTES = 512
#: a connection error this soon after sending is a kept-alive connection gone stale
STALE_CONNECTION_SECONDS = 1.0


#: a URL's or a path's part from its first slash on (its scheme and host kept)
_URL_PATH = re.compile(r"(\w+://[^/\s]+)?/\S*")


class _NoSubscriberPaths(logging.Filter):
    """urllib3 logs the path of a request, which may hold a subscriber's token (in its query,
    or in the path itself, as chat services' webhook URLs do): at DEBUG for every request,
    and with a warning and a traceback for an answer's malformed headers, also when an
    attempt's deadline cut them short. Every path is cut from what it logs, and the headers'
    warning, which the attempt's own record says, is one line at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _URL_PATH.sub(r"\1/…", a) if isinstance(a, str) else a for a in record.args
            )
        if record.levelno == logging.WARNING and str(record.msg).startswith("Failed to parse"):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info = record.exc_text = None
        return True


for _logger in ("urllib3.connection", "urllib3.connectionpool"):
    logging.getLogger(_logger).addFilter(_NoSubscriberPaths())


# --- signing -------------------------------------------------------------------------------


def signed_headers(
    event_id: str, body: str, secrets_: Sequence[str], now: datetime
) -> dict[str, str]:
    """The Standard Webhooks headers: one ``v1`` signature per secret, space-separated."""
    signatures = " ".join(Webhook(s).sign(event_id, now, body) for s in secrets_)
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signatures,
    }


# --- the attempt's deadline ------------------------------------------------------------------


class _Attempt:
    """One attempt in flight: the connection it uses (set by the connection itself, see
    :class:`_DeadlineHTTPConnection`) and whether its deadline has passed."""

    def __init__(self) -> None:
        self.connection: HTTPConnection | None = None
        self.expired = False
        self.finished = False
        self._lock = threading.Lock()

    def expire(self) -> None:
        with self._lock:
            if self.finished:
                return
            self.expired = True
            self.cut()

    def cut(self) -> None:
        """Shut the connection's socket: a read blocked on it returns at once. The base
        class's ``shutdown``, also for TLS (``SSLSocket.shutdown`` would unwrap it under the
        reading thread's feet)."""
        sock = self.connection.sock if self.connection is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def finish(self) -> None:
        with self._lock:
            self.finished = True


#: the attempt the current thread is making (a delivery thread makes one at a time)
_current = threading.local()


class _DeadlineHTTPConnection(HTTPConnection):
    """Tells the thread's attempt which connection it uses, and is cut at once when it
    connects after the deadline passed."""

    def connect(self) -> None:
        super().connect()
        attempt: _Attempt | None = getattr(_current, "attempt", None)
        if attempt is not None and attempt.expired:
            attempt.cut()

    def request(self, *args: Any, **kwargs: Any) -> None:
        attempt: _Attempt | None = getattr(_current, "attempt", None)
        if attempt is not None:
            attempt.connection = self
        super().request(*args, **kwargs)


class _DeadlineHTTPSConnection(_DeadlineHTTPConnection, HTTPSConnection):
    pass


class _Deadlines:
    """One thread that expires attempts past their deadline (a heap of them; a finished
    attempt is skipped when its turn comes)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Attempt]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, at: float, attempt: _Attempt) -> None:
        with self._cond:
            heapq.heappush(self._heap, (at, next(self._order), attempt))
            if self._thread is None or not self._thread.is_alive():  # also after a fork
                self._thread = threading.Thread(
                    target=self._run, name="delivery-deadlines", daemon=True
                )
                self._thread.start()
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(wait)
                _, _, attempt = heapq.heappop(self._heap)
            attempt.expire()


_DEADLINES = _Deadlines()


@contextmanager
def _deadline(seconds: float) -> Iterator[_Attempt]:
    """The block is one attempt that ends, whatever it is doing, ``seconds`` from now."""
    attempt = _Attempt()
    _current.attempt = attempt
    _DEADLINES.arm(time.monotonic() + seconds, attempt)
    try:
        yield attempt
    finally:
        attempt.finish()
        _current.attempt = None


# --- sending -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttemptReport:
    """What one attempt came to: its :class:`~app.models.AttemptResult`, and what the
    subscriber answered (or what went wrong) and how long it took."""

    result: AttemptResult
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    duration_ms: float = 0.0
    #: the attempt's span as a Prometheus exemplar (``CIRELAY_TRACING=on``), else ``None``
    exemplar: dict[str, str] | None = None


class Sender:
    """POSTs to subscriber URLs, connecting only to addresses the SSRF rule allows.

    One urllib3 connection pool per (scheme, checked address, port, host name) keeps
    connections to a busy subscriber open between deliveries.
    """

    def __init__(
        self,
        *,
        allowed_networks: Sequence[str],
        timeout: float,
        resolver: Resolver = resolve,
        pool_size: int = 4,
    ) -> None:
        self.allowed_networks = tuple(allowed_networks)
        self.timeout = timeout
        self.resolver = resolver
        self.pool_size = pool_size
        self._pools: dict[tuple[str, str, int, str], urllib3.HTTPConnectionPool] = {}
        self._lock = threading.Lock()

    def _pool(self, scheme: str, address: str, port: int, host: str) -> urllib3.HTTPConnectionPool:
        key = (scheme, address, port, host)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                timeout = urllib3.Timeout(total=self.timeout)
                if scheme == "https":
                    pool = urllib3.HTTPSConnectionPool(
                        address, port, timeout=timeout, maxsize=self.pool_size,
                        server_hostname=host, assert_hostname=host, retries=False,
                    )  # fmt: skip
                else:
                    pool = urllib3.HTTPConnectionPool(
                        address, port, timeout=timeout, maxsize=self.pool_size, retries=False
                    )
                pool.ConnectionCls = (
                    _DeadlineHTTPSConnection if scheme == "https" else _DeadlineHTTPConnection
                )
                self._pools[key] = pool
            return pool

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> AttemptReport:
        """One attempt, ended at :attr:`timeout` seconds whatever it is doing."""
        started = time.perf_counter()
        with _deadline(self.timeout) as attempt:
            report = self._post(url, body, headers)
        if attempt.expired and report.result is not AttemptResult.FORBIDDEN_ADDRESS:
            # the deadline cut it, even if what was read by then looks like an answer (a
            # status line and half a header are a 200 to http.client)
            report = AttemptReport(
                AttemptResult.TIMEOUT,
                status_code=report.status_code,
                error=f"no answer within {self.timeout:g} s",
            )
        return replace(report, duration_ms=(time.perf_counter() - started) * 1000)

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> AttemptReport:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            address = allowed_address(host, port, self.allowed_networks, self.resolver)
        except ForbiddenAddress as exc:
            return AttemptReport(AttemptResult.FORBIDDEN_ADDRESS, error=str(exc))
        except (OSError, ValueError) as exc:
            return AttemptReport(
                AttemptResult.CONNECTION_ERROR, error=f"cannot resolve {host}: {exc}"
            )
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        request_headers = {
            "Host": parts.netloc,
            "Content-Type": "application/cloudevents+json",
            "User-Agent": USER_AGENT,
            **headers,
        }
        pool = self._pool(parts.scheme, address, port, host)
        try:
            started = time.monotonic()
            try:
                response = self._urlopen(pool, path, body, request_headers)
            except urllib3.exceptions.ProtocolError:
                if time.monotonic() - started > STALE_CONNECTION_SECONDS or _expired():
                    raise
                # a kept-alive connection the subscriber had closed meanwhile: once more, on a
                # new connection (at worst a duplicate, which webhook-id lets it drop)
                response = self._urlopen(pool, path, body, request_headers)
        except urllib3.exceptions.NewConnectionError as exc:  # a ConnectTimeoutError subclass
            return AttemptReport(AttemptResult.CONNECTION_ERROR, error=describe_error(exc))
        except (TimeoutError, urllib3.exceptions.TimeoutError):
            return AttemptReport(
                AttemptResult.TIMEOUT, error=f"no answer within {self.timeout:g} s"
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return AttemptReport(AttemptResult.CONNECTION_ERROR, error=describe_error(exc))
        try:
            excerpt = response.read(EXCERPT_BYTES)
            rest = response.read(64 * 1024)  # drain a small answer so the connection is reused
            if rest or response.length_remaining:
                response.close()  # a big answer: drop the connection rather than read it all
            else:
                response.release_conn()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            response.close()
            return AttemptReport(
                AttemptResult.TIMEOUT
                if isinstance(exc, urllib3.exceptions.TimeoutError)
                else AttemptResult.CONNECTION_ERROR,
                status_code=response.status,
                error=describe_error(exc),
            )
        status = response.status
        if 200 <= status < 300:
            return AttemptReport(AttemptResult.SUCCESS, status_code=status)
        text = excerpt.decode("utf-8", "replace").strip()
        if 300 <= status < 400:
            text = f"redirect to {response.headers.get('Location', '?')} not followed"
        if not is_public(ipaddress.ip_address(address)):
            # an address inside, reached because CIRELAY_DELIVERY_ALLOWED_NETWORKS allows it:
            # its answer is not kept, or the deliveries API would read internal services
            text = "redirect not followed" if 300 <= status < 400 else ""
        return AttemptReport(
            AttemptResult.GONE if status == 410 else AttemptResult.HTTP_ERROR,
            status_code=status,
            error=f"HTTP {status}" + (f": {text}" if text else ""),
            retry_after=(
                parse_retry_after(response.headers.get("Retry-After"))
                if status in (429, 503)
                else None
            ),
        )

    @staticmethod
    def _urlopen(
        pool: urllib3.HTTPConnectionPool, path: str, body: bytes, headers: dict[str, str]
    ) -> urllib3.BaseHTTPResponse:
        return pool.urlopen(
            "POST", path, body=body, headers=headers, redirect=False, retries=False,
            preload_content=False, assert_same_host=False,
        )  # fmt: skip


def _expired() -> bool:
    attempt: _Attempt | None = getattr(_current, "attempt", None)
    return attempt is not None and attempt.expired


def describe_error(exc: BaseException) -> str:
    """An exception as an attempt's ``error``: its type and reason, cut to the excerpt size."""
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason or exc}"[:EXCERPT_BYTES]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; ``None`` if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit alone takes "²" and other scripts
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
