"""``GET /v1/events/stream`` on the event loop: a stream costs a socket and a cursor, no thread.

:func:`app.web.events.stream_events` checks the request (key, cursor, filter, the per-process
cap) and leaves a :class:`StreamPlan` in the ASGI scope; :class:`app.web.asgi.Serving` then
hands the open response to :meth:`Streams.serve`, which writes the events.

One :class:`EventTail` per process reads the outbox for every stream: woken by PostgreSQL's
NOTIFY (:class:`app.waker.EventWaker`; then it looks anyway only every
:data:`NOTIFIED_POLL_SECONDS`) or, on SQLite, every ``poll`` seconds, it reads what was
committed after the last event it holds, keeps the newest events already rendered as SSE
messages, and wakes the streams. A stream whose cursor is within what the tail holds is served
from memory; one further behind (a ``Last-Event-ID`` from long ago, or a client that reads
slower than events come) reads its own pages from the database until it is within it again.
Events become visible in sequence order (:func:`app.store.insert_events`), so reading after
the last sequence seen misses nothing and repeats nothing, from the database or the tail.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app import store
from app.events import to_cloudevent
from app.models import Event, TypeFilter

if TYPE_CHECKING:
    from app import Services

log = logging.getLogger(__name__)

#: the ASGI scope key under which the view leaves its plan
PLAN = "cirelay.stream"
#: a stream's first message: how long a client waits before reconnecting
RETRY = "retry: 2000\n\n"
KEEPALIVE = ": keep-alive\n\n"
#: events the tail reads at a time, and the newest it keeps
#: how often the tail looks at the outbox anyway when PostgreSQL's NOTIFY wakes it (the
#: waker also wakes it when it listens again after losing its connection)
NOTIFIED_POLL_SECONDS = 1.0
TAIL_PAGE = 500
TAIL_KEEP = 5000
#: the tail reads at most this often, so a burst of commits is one read and one write per stream
TAIL_MIN_INTERVAL = 0.01

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]


def sse_message(event: Event) -> str:
    """One event as a Server-Sent Events message: ``id:`` its sequence number."""
    document = json.dumps(to_cloudevent(event), separators=(",", ":"))
    return f"id: {event.seq}\nevent: {event.type}\ndata: {document}\n\n"


@dataclass(frozen=True)
class StreamPlan:
    """What the view decided: the cursor, the filter, the page size for catching up, and how
    to give back the stream's slot (``CIRELAY_MAX_STREAMS``) once it ends."""

    after: int
    wanted: TypeFilter
    limit: int
    release: Callable[[], None]


class EventTail:
    """The newest events, read once per process for every stream (see the module)."""

    def __init__(self, services: Services, poll: float) -> None:
        self.services = services
        self.poll = poll
        #: every event with ``base < seq <= last`` is held
        self.base = 0
        self.last = 0
        self._seqs: list[int] = []
        self._items: list[tuple[str, bytes]] = []  # type, rendered message
        #: the messages from an index on, by filter, until new ones come
        self._joined: dict[tuple[int, TypeFilter], bytes] = {}
        #: what the streams of each filter wait for: new events they want
        self._waiting: dict[TypeFilter, asyncio.Future[None]] = {}
        self._wake = asyncio.Event()
        self._started: asyncio.Future[None] | None = None

    async def start(self) -> None:
        """Read the head of the outbox once, then follow it (at the first stream)."""
        if self._started is None:
            loop = asyncio.get_running_loop()
            self._started = loop.create_future()
            try:
                self.base = self.last = await asyncio.to_thread(self._head)
            except BaseException as exc:
                self._started.set_exception(exc)
                self._started.exception()  # retrieved: the next stream tries again
                self._started = None
                raise

            def wake() -> None:  # in the waker's thread
                loop.call_soon_threadsafe(self._wake.set)

            self.services.waker.on_events(wake)
            if self.services.waker.active:  # NOTIFY wakes it: no need to poll often
                self.poll = max(self.poll, NOTIFIED_POLL_SECONDS)
            self._task = loop.create_task(self._follow())
            self._started.set_result(None)
        await self._started

    def changed(self, wanted: TypeFilter) -> asyncio.Future[None]:
        """Done once the tail holds newer events ``wanted`` than now (take it before
        :meth:`since`). Streams that want none of the new events are not woken."""
        future = self._waiting.get(wanted)
        if future is None:
            future = self._waiting[wanted] = asyncio.get_running_loop().create_future()
        return future

    def since(self, cursor: int, wanted: TypeFilter) -> tuple[bytes, int] | None:
        """The messages ``wanted`` after ``cursor``, and the cursor after them; ``None`` when
        events after ``cursor`` are no longer held (the stream reads them from the database)."""
        if cursor < self.base:
            return None
        start, after = bisect.bisect_right(self._seqs, cursor), max(cursor, self.last)
        joined = self._joined.get((start, wanted))
        if joined is None:  # the streams at one cursor with one filter share it
            items = self._items[start:]
            joined = b"".join(m for t, m in items if wanted.matches(t))
            self._joined[start, wanted] = joined
        return joined, after

    def _head(self) -> int:
        with self.services.engine.connect() as conn:
            return store.events_head(conn)

    def _read(self, after: int) -> list[Event]:
        with self.services.engine.connect() as conn:
            return store.list_events(conn, after=after, limit=TAIL_PAGE)

    async def _follow(self) -> None:
        while True:
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll)
            self._wake.clear()
            try:
                page = await asyncio.to_thread(self._read, self.last)
            except Exception as exc:  # the database is away: the streams wait, then go on
                log.warning("event stream: cannot read events: %s", type(exc).__name__)
                await asyncio.sleep(1.0)
                continue
            if page:
                self._hold(page)
                if len(page) == TAIL_PAGE:
                    self._wake.set()
            await asyncio.sleep(TAIL_MIN_INTERVAL)

    def _hold(self, page: list[Event]) -> None:
        self._seqs += [e.seq for e in page]
        self._items += [(e.type, sse_message(e).encode()) for e in page]
        self.last = page[-1].seq
        if len(self._seqs) > 2 * TAIL_KEEP:
            cut = len(self._seqs) - TAIL_KEEP
            self.base = self._seqs[cut - 1]
            del self._seqs[:cut], self._items[:cut]
        self._joined.clear()
        types = {e.type for e in page}
        for wanted, future in list(self._waiting.items()):
            if any(wanted.matches(t) for t in types):
                del self._waiting[wanted]
                if not future.done():
                    future.set_result(None)


class Streams:
    """Writes every open stream of a process (see the module)."""

    def __init__(self, services: Services, *, poll: float, keepalive: float) -> None:
        self.services = services
        self.keepalive = keepalive
        self.tail = EventTail(services, poll)
        #: whether the process is stopping: the streams end (set by the gunicorn worker)
        self.stopping: Callable[[], bool] = lambda: False
        #: streams open now (the worker balances request connections without them)
        self.open = 0

    async def serve(self, plan: StreamPlan, receive: Receive, send: Send) -> None:
        """Write the stream until the client leaves (noticed at once: its connection closes)
        or the worker stops; then give the slot back."""
        gauge = self.services.metrics.sse_clients
        gauge.inc()
        self.open += 1
        writer = asyncio.ensure_future(self._write(plan, send))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({writer, gone}, return_when=asyncio.FIRST_COMPLETED)
            failed = writer.done() and not writer.cancelled() and writer.exception()
            if failed:  # the database went away mid-stream: the client reconnects later
                log.warning("event stream ended: %s", type(failed).__name__)
            elif writer.done() and not writer.cancelled():
                # the worker stops: end the response, the client reconnects elsewhere
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            for task in (writer, gone):
                task.cancel()
            await asyncio.gather(writer, gone, return_exceptions=True)
            gauge.dec()
            self.open -= 1
            plan.release()

    async def _write(self, plan: StreamPlan, send: Send) -> None:
        async def write(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        await write(RETRY.encode())
        await self.tail.start()
        cursor, spoke = plan.after, time.monotonic()
        while not self.stopping():
            changed = self.tail.changed(plan.wanted)
            held = self.tail.since(cursor, plan.wanted)
            if held is None:  # behind what the tail holds: a page from the database
                head = self.tail.last
                page = await asyncio.to_thread(self._page, plan, cursor)
                if page:
                    await write("".join(sse_message(e) for e in page).encode())
                    cursor, spoke = page[-1].seq, time.monotonic()
                if len(page) < plan.limit:  # every wanted event up to the head was read
                    cursor = max(cursor, head)
                continue
            data, cursor = held
            if data:
                await write(data)
                spoke = time.monotonic()
                continue
            silent = time.monotonic() - spoke
            if silent >= self.keepalive:
                await write(KEEPALIVE.encode())
                spoke = time.monotonic()
                continue
            # at least once a second: is the worker stopping?
            await asyncio.wait([changed], timeout=min(self.keepalive - silent, 1.0))

    def _page(self, plan: StreamPlan, after: int) -> list[Event]:
        with self.services.engine.connect() as conn:
            wanted = plan.wanted
            return store.list_events(
                conn, after=after, limit=plan.limit, types=wanted.types,
                type_prefixes=wanted.prefixes,
            )  # fmt: skip


async def _disconnected(receive: Receive) -> None:
    """Until the client's connection is gone."""
    while (await receive())["type"] != "http.disconnect":
        pass
