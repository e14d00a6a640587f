"""The notification sender: CI's TaskFinish callbacks, with retries, and with faults.

CI documents neither a retry policy nor a timeout for callbacks (spec §5.2, §9); this sender
does what a careful CI would: any 2xx is success; a non-2xx answer, a connection error or a
timeout is retried after the next delay of ``retry_schedule`` (each stretched by a seeded
jitter of ±``jitter``), and after the last one the delivery is given up. Redirects are not
followed.

Delivery runs on a small thread pool; waiting happens on one scheduler thread (a heap of
due times), never in a pool thread, so a slow retry schedule cannot starve other jobs.
Everything a notification goes through is recorded (``deliveries()``, served read-only at
``GET /_emulator/deliveries``); URLs are recorded and logged without their path beyond two
segments, because cirelay's callback URLs carry tokens.

Bodies (spec §5.3, §5.4): XML is ``<Response><EventName>TaskFinish</EventName><JobsDetail>``
with children in alphabetical order, ``Content-Type: application/xml``; JSON has no
``Response`` wrapper, every value a string, repeated elements as arrays, empty elements
omitted and ``JobsDetail`` an array, ``Content-Type: application/json``.
"""

from __future__ import annotations

import copy
import heapq
import http.client
import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from lxml import etree

from app.emulator.faults import Faults

log = logging.getLogger(__name__)

Tree = dict[str, Any]
USER_AGENT = "cirelay-ci-emulator"
CONTENT_TYPES = {"XML": "application/xml", "JSON": "application/json"}


# --- bodies -------------------------------------------------------------------------------


def tree_to_element(tag: str, tree: Any) -> etree._Element:
    """A tree (name → text | tree | list) as an element; a list repeats the element."""
    element = etree.Element(tag)
    _append(element, tree)
    return element


def _append(element: etree._Element, tree: Any) -> None:
    if isinstance(tree, dict):
        for name, value in tree.items():
            for item in value if isinstance(value, list) else [value]:
                _append(etree.SubElement(element, name), item)
    elif tree:
        element.text = str(tree)


def _json_value(tree: Any) -> Any:
    """§5.4: strings everywhere, empty elements omitted (``None`` here), arrays kept."""
    if isinstance(tree, dict):
        pairs = ((k, _json_value(v)) for k, v in tree.items())
        kept = {k: v for k, v in pairs if v is not None}
        return kept or None
    if isinstance(tree, list):
        items = [v for v in (_json_value(i) for i in tree) if v is not None]
        return items or None
    return str(tree) if tree not in (None, "") else None


def notification_body(
    detail: Tree, fmt: str, *, event_name: str | None = "TaskFinish", element: str = "JobsDetail"
) -> bytes:
    """The notification body for one JobsDetail tree (already in callback order), or with
    ``element="WorkflowExecution"`` and ``event_name="WorkflowFinish"`` for one workflow
    instance; ``event_name=None``: the 2020-2021 bodies, without EventName."""
    head: Tree = {} if event_name is None else {"EventName": event_name}
    if fmt == "JSON":
        value = _json_value(detail) or {}
        document = {**head, element: [value] if element == "JobsDetail" else value}
        return json.dumps(document, ensure_ascii=False).encode()
    root = tree_to_element("Response", {**head, element: detail})
    return bytes(etree.tostring(root, encoding="utf-8"))


def broken_body(detail: Tree, fmt: str, kind: str) -> bytes:
    """The ``malformed`` fault's body: cut in half, or well-formed with an unknown State."""
    if kind == "invalid":
        wrong = copy.deepcopy(detail)
        wrong["State"] = "Finished"
        return notification_body(wrong, fmt)
    good = notification_body(detail, fmt)
    return good[: len(good) // 2]


def redact_url(url: str) -> str:
    """``http://h:1/callbacks/ci/<job>/<token>`` → ``http://h:1/callbacks/ci/…``."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    path = "/".join(segments[:2])
    more = "/…" if len(segments) > 2 or parts.query else ""
    return f"{parts.scheme}://{parts.netloc}/{path}{more}"


# --- records ------------------------------------------------------------------------------


@dataclass
class Attempt:
    number: int
    at: str  # UTC, ISO 8601
    elapsed: float  # seconds since the delivery was created (monotonic)
    waited: float  # the delay planned before this attempt, jitter included
    malformed: bool
    status: int | None = None
    error: str | None = None


@dataclass
class Delivery:
    """One notification document on its way to one URL, with every attempt."""

    id: int
    job_id: str
    kind: str  # final | duplicate | stale
    state: str  # the State the document carries
    url: str  # redacted
    format: str
    faults: list[str] = field(default_factory=list)
    outcome: str = "pending"  # pending | held | delivered | failed | dropped
    attempts: list[Attempt] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic, repr=False)


@dataclass
class _Item:
    """A delivery and what it needs to be sent."""

    record: Delivery
    url: str
    body: bytes
    bad_body: bytes | None = None  # sent on the first attempt (malformed fault)
    failures: int = 0


@dataclass(frozen=True)
class Outgoing:
    """A finished job's notification, as the server hands it over."""

    job_id: str
    url: str
    format: str  # XML | JSON
    final: Tree  # JobsDetail, callback order
    running: Tree  # the same job as it looked while Running (for ``reorder``)
    event_name: str | None = "TaskFinish"  # None: a legacy body
    element: str = "JobsDetail"  # WorkflowExecution: a workflow instance's notification


# --- the scheduler ------------------------------------------------------------------------


class Scheduler:
    """Runs callables at monotonic due times on one thread (which hands them to a pool)."""

    def __init__(self, submit: Callable[[Callable[[], None]], None]) -> None:
        self._submit = submit
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="emulator-scheduler", daemon=True)
        self._thread.start()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with self._cond:
            if self._stopped:
                return
            heapq.heappush(
                self._heap, (time.monotonic() + max(delay, 0.0), next(self._counter), fn)
            )
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if self._heap and self._heap[0][0] <= time.monotonic():
                        break
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopped:
                    return
                _, _, fn = heapq.heappop(self._heap)
            self._submit(fn)


# --- the notifier -------------------------------------------------------------------------


class Notifier:
    """Sends notifications; applies the delivery faults; records every attempt."""

    def __init__(
        self,
        faults: Faults,
        *,
        retry_schedule: Sequence[float] = (0.5, 1, 2, 4, 8, 16),
        timeout: float = 5.0,
        jitter: float = 0.1,
        workers: int = 8,
        history: int = 10_000,
    ) -> None:
        self._faults = faults
        self._schedule = tuple(float(s) for s in retry_schedule)
        self._timeout = timeout
        self._jitter = jitter
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="emulator-callback")
        self._scheduler = Scheduler(self._submit)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._records: deque[Delivery] = deque(maxlen=history)
        self._held: list[list[_Item]] = []
        self._hold_round = 0  # bumped by each release, so a stale hold timer does nothing
        self._stopped = False

    # public ------------------------------------------------------------------------------

    def notify(self, outgoing: Outgoing) -> None:
        """Plan and start the deliveries of one finished job's notification."""
        if self._faults.fire("drop"):
            record = self._record(outgoing, "final", outgoing.final)
            record.faults.append("drop")
            record.outcome = "dropped"
            log.info("callback dropped (fault) job=%s", outgoing.job_id)
            return
        settings = self._faults.settings
        final = self._item(outgoing, "final", outgoing.final)
        items = [final]
        if self._faults.fire("malformed"):
            final.record.faults.append("malformed")
            final.bad_body = broken_body(outgoing.final, outgoing.format, settings.malformed.kind)
        if self._faults.fire("duplicate"):
            final.record.faults.append("duplicate")
            for _ in range(settings.duplicate.copies - 1):
                items.append(self._item(outgoing, "duplicate", outgoing.final))
        delay = 0.0
        if self._faults.fire("delay"):
            final.record.faults.append("delay")
            delay = settings.delay.seconds
        if self._faults.fire("reorder"):
            final.record.faults.append(f"reorder:{settings.reorder.mode}")
            if settings.reorder.mode == "stale":
                items.append(self._item(outgoing, "stale", outgoing.running))
            else:
                self._hold(items, settings.reorder.batch, settings.reorder.hold_seconds)
                return
        self._start(items, delay)

    def deliveries(self, job_id: str | None = None) -> list[dict[str, Any]]:
        """Every recorded delivery (oldest first), optionally of one job, as JSON data."""
        with self._lock:
            records = [r for r in self._records if job_id is None or r.job_id == job_id]
            return [{k: v for k, v in asdict(r).items() if k != "started"} for r in records]

    def flush_held(self, round_: int | None = None) -> None:
        """Release held notifications now, newest first (``round_``: only if no release
        happened since the hold timer that passes it was set)."""
        with self._lock:
            if round_ is not None and round_ != self._hold_round:
                return
            held, self._held = self._held, []
            self._hold_round += 1
        if held:
            self._start([item for items in reversed(held) for item in items], 0.0)

    def stop(self) -> None:
        """Stop scheduling, drop pending retries, wait for attempts in flight."""
        self._stopped = True
        self._scheduler.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)

    # planning ----------------------------------------------------------------------------

    def _record(self, outgoing: Outgoing, kind: str, detail: Tree) -> Delivery:
        record = Delivery(
            id=next(self._ids),
            job_id=outgoing.job_id,
            kind=kind,
            state=str(detail.get("State", "")),
            url=redact_url(outgoing.url),
            format=outgoing.format,
        )
        with self._lock:
            self._records.append(record)
        return record

    def _item(self, outgoing: Outgoing, kind: str, detail: Tree) -> _Item:
        record = self._record(outgoing, kind, detail)
        body = notification_body(
            detail, outgoing.format, event_name=outgoing.event_name, element=outgoing.element
        )
        return _Item(record, outgoing.url, body)

    def _hold(self, items: list[_Item], batch: int, hold_seconds: float) -> None:
        for item in items:
            item.record.outcome = "held"
        with self._lock:
            self._held.append(items)
            full = len(self._held) >= batch
            first = len(self._held) == 1
            round_ = self._hold_round
        if full:
            self.flush_held()
        elif first:
            self._scheduler.call_later(hold_seconds, lambda: self.flush_held(round_))

    def _start(self, items: list[_Item], delay: float) -> None:
        for item in items:
            item.record.outcome = "pending"
        self._scheduler.call_later(delay, lambda: self._attempt(items, 0, delay))

    def _submit(self, fn: Callable[[], None]) -> None:
        if self._stopped:
            return
        try:
            self._pool.submit(fn)
        except RuntimeError:  # the pool is shutting down
            return

    # sending -----------------------------------------------------------------------------

    def _attempt(self, items: list[_Item], index: int, waited: float) -> None:
        item = items[index]
        record = item.record
        malformed = item.bad_body is not None and not record.attempts
        attempt = Attempt(
            number=len(record.attempts) + 1,
            at=datetime.now(UTC).isoformat(timespec="milliseconds"),
            elapsed=round(time.monotonic() - record.started, 3),
            waited=round(waited, 3),
            malformed=malformed,
        )
        content_type = CONTENT_TYPES.get(record.format, "application/xml")
        body = item.bad_body if malformed and item.bad_body is not None else item.body
        try:
            attempt.status = post(item.url, body, content_type, self._timeout)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            attempt.error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            record.attempts.append(attempt)
        ok = attempt.status is not None and 200 <= attempt.status < 300
        log.info(
            "callback job=%s kind=%s attempt=%d url=%s status=%s error=%s%s",
            record.job_id,
            record.kind,
            attempt.number,
            record.url,
            attempt.status,
            attempt.error,
            " (malformed body)" if malformed else "",
        )
        if malformed:  # the good body follows, whatever the receiver said
            self._retry(items, index, self._schedule[0] if self._schedule else 0.0)
            return
        if ok:
            record.outcome = "delivered"
        elif isinstance(attempt.error, str) and attempt.error.startswith("ValueError"):
            record.outcome = "failed"  # a URL no retry can fix
        elif item.failures < len(self._schedule):
            item.failures += 1
            self._retry(items, index, self._schedule[item.failures - 1])
            return
        else:
            record.outcome = "failed"
        if index + 1 < len(items):
            self._scheduler.call_later(0.0, lambda: self._attempt(items, index + 1, 0.0))

    def _retry(self, items: list[_Item], index: int, base: float) -> None:
        delay = base * self._faults.uniform(1 - self._jitter, 1 + self._jitter)
        self._scheduler.call_later(delay, lambda: self._attempt(items, index, delay))


def post(url: str, body: bytes, content_type: str, timeout: float) -> int:
    """POST ``body`` to ``url``; the HTTP status. Raises ``OSError`` (connection, timeout),
    ``http.client.HTTPException`` or ``ValueError`` (not an http(s) URL)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("not an http(s) URL")
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    connection = connection_class(parts.hostname, parts.port, timeout=timeout)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        connection.request(
            "POST",
            target,
            body=body,
            headers={"Content-Type": content_type, "User-Agent": USER_AGENT},
        )
        response = connection.getresponse()
        response.read(1 << 16)
        return response.status
    finally:
        connection.close()
