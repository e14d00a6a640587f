"""Webhook delivery: every event to every subscription that wants it, signed, in order per job,
at least once.

The flow, run by ``cirelay worker`` (:class:`Deliverer`):

1. **Fan out.** Each enabled subscription has a cursor into the outbox (``fanout_seq``); new
   events matching its types become ``deliveries`` rows, and the cursor moves, in one
   transaction. Events become visible in sequence order (see :func:`app.store.insert_events`),
   so a cursor never skips one.
2. **Claim.** A worker leases due deliveries (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
   several workers on several replicas share the work without taking the same row; SQLite has
   one writer at a time). A delivery is not due while an earlier event of the same job to the
   same subscription is still pending: one job's events reach a subscriber in order.
3. **Send**, outside any transaction: a POST of the CloudEvent (JSON structured mode) with the
   Standard Webhooks headers, signed with the ``standardwebhooks`` package (with both secrets
   during a rotation's grace period). The host is resolved and every address checked again
   here, then the connection goes to a checked address, so DNS rebinding does not get past the
   check made when the URL was saved. No redirects are followed.
4. **Record** the attempt and move the delivery on: 2xx done; 410 Gone disables the
   subscription; anything else retries on the configured schedule with jitter (``Retry-After``
   honoured on 429 and 503) until the schedule is exhausted.
5. **Health.** A subscription counts as failing from a failed attempt until it is healthy
   again: :data:`HEALTHY_STREAK` 2xx in a row, or a 2xx a quarter of the disable period after
   the last failure (for subscribers that get few events). One failing for the configured
   period (a subscriber that is down, or flapping: up now and then, failing mostly) is
   disabled, and an operator event (``com.cirelay.subscription.disabled``) goes into the
   outbox.

A live worker renews the leases of its attempts in flight, so a slow subscriber is never sent
the same delivery by two workers at once. A worker that dies mid-delivery stops renewing and its
lease lapses; the delivery is then sent again with the same ``webhook-id`` (the event id), which
subscribers deduplicate on.
"""

from __future__ import annotations

import email.utils
import json
import logging
import queue
import random
import secrets
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import urllib3
from sqlalchemy.engine import Connection, Engine
from standardwebhooks.webhooks import Webhook

from app import store
from app.config import Settings
from app.errors import ConflictError, NotFoundError, UnprocessableError
from app.events import TYPE_PREFIX, to_cloudevent
from app.metrics import Metrics
from app.models import AttemptResult, Claim, DeliveryState, Subscription, new_id
from app.subscriptions import ForbiddenAddress, Resolver, allowed_address, resolve

log = logging.getLogger(__name__)

SUBSCRIPTION_DISABLED = f"{TYPE_PREFIX}.subscription.disabled"
USER_AGENT = "cirelay-webhooks/1"
#: how much of a subscriber's answer is kept with a failed attempt
EXCERPT_BYTES = 512
#: a connection error this soon after sending is a kept-alive connection gone stale
STALE_CONNECTION_SECONDS = 1.0
#: how often a worker woken by NOTIFY still looks, for retries coming due
WOKEN_POLL_SECONDS = 0.25
#: events fanned out per subscription per round
FANOUT_BATCH = 1000
#: a failing subscription is healthy again after this many 2xx in a row (or, for one that
#: gets few events, after a 2xx a quarter of the disable period after its last failure)
HEALTHY_STREAK = 10


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


# --- sending -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to."""

    result: AttemptResult
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None
    duration_ms: float = 0.0


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
                self._pools[key] = pool
            return pool

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        started = time.perf_counter()
        outcome = self._post(url, body, headers)
        duration_ms = (time.perf_counter() - started) * 1000
        return Outcome(
            outcome.result, outcome.status_code, outcome.error, outcome.retry_after, duration_ms
        )

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> Outcome:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            address = allowed_address(host, port, self.allowed_networks, self.resolver)
        except ForbiddenAddress as exc:
            return Outcome(AttemptResult.FORBIDDEN_ADDRESS, error=str(exc))
        except (OSError, ValueError) as exc:
            return Outcome(AttemptResult.CONNECTION_ERROR, error=f"cannot resolve {host}: {exc}")
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
                if time.monotonic() - started > STALE_CONNECTION_SECONDS:
                    raise
                # a kept-alive connection the subscriber had closed meanwhile: once more, on a
                # new connection (at worst a duplicate, which webhook-id lets it drop)
                response = self._urlopen(pool, path, body, request_headers)
        except urllib3.exceptions.NewConnectionError as exc:  # a ConnectTimeoutError subclass
            return Outcome(AttemptResult.CONNECTION_ERROR, error=_describe(exc))
        except (TimeoutError, urllib3.exceptions.TimeoutError):
            return Outcome(AttemptResult.TIMEOUT, error=f"no answer within {self.timeout:g} s")
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            return Outcome(AttemptResult.CONNECTION_ERROR, error=_describe(exc))
        try:
            excerpt = response.read(EXCERPT_BYTES)
            rest = response.read(64 * 1024)  # drain a small answer so the connection is reused
            if rest or response.length_remaining:
                response.close()  # a big answer: drop the connection rather than read it all
            else:
                response.release_conn()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            response.close()
            return Outcome(
                AttemptResult.TIMEOUT
                if isinstance(exc, urllib3.exceptions.TimeoutError)
                else AttemptResult.CONNECTION_ERROR,
                status_code=response.status,
                error=_describe(exc),
            )
        status = response.status
        if 200 <= status < 300:
            return Outcome(AttemptResult.SUCCESS, status_code=status)
        text = excerpt.decode("utf-8", "replace").strip()
        if 300 <= status < 400:
            text = f"redirect to {response.headers.get('Location', '?')} not followed"
        return Outcome(
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


def _describe(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return f"{type(exc).__name__}: {reason or exc}"[:EXCERPT_BYTES]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date; ``None`` if absent
    or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


# --- policy --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """When to retry and when to give up on a subscriber."""

    schedule: tuple[float, ...]
    disable_after: timedelta
    timeout: float
    jitter: float = 0.2

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            schedule=settings.delivery_retry_schedule,
            disable_after=timedelta(seconds=settings.delivery_disable_after_seconds),
            timeout=settings.delivery_timeout_seconds,
        )

    @property
    def lease(self) -> timedelta:
        """How long a claim stays with its worker: one attempt's timeout, plus room."""
        return timedelta(seconds=self.timeout + 5)

    def retry_delay(
        self, attempt: int, retry_after: float | None, rng: random.Random
    ) -> float | None:
        """Seconds until the next try after failed attempt number ``attempt`` (1-based), or
        ``None`` when the schedule is exhausted. ``Retry-After`` replaces the scheduled delay
        (capped at the schedule's longest) when the subscriber sent one."""
        if attempt > len(self.schedule):
            return None
        if retry_after is not None:
            return min(retry_after, max(self.schedule))
        base = self.schedule[attempt - 1]
        return base * rng.uniform(1 - self.jitter, 1 + self.jitter)


# --- the worker ----------------------------------------------------------------------------


@dataclass
class _Finished:
    claim: Claim
    outcome: Outcome
    started_at: datetime
    finished_at: datetime


@dataclass
class Round:
    """What one round of the loop did (for logs and tests)."""

    fanned_out: int = 0
    claimed: int = 0
    recorded: int = 0


class Deliverer:
    """Fans out, claims, sends and records. :meth:`run` is the worker loop; :meth:`run_round`
    one pass of it (tests drive it directly)."""

    def __init__(
        self,
        engine: Engine,
        policy: Policy,
        sender: Sender,
        metrics: Metrics,
        *,
        clock: Callable[[], datetime],
        concurrency: int = 16,
        owner: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.sender = sender
        self.metrics = metrics
        self.clock = clock
        self.concurrency = concurrency
        self.owner = owner or f"{socket.gethostname()}:{secrets.token_hex(6)}"
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._finished: queue.SimpleQueue[_Finished] = queue.SimpleQueue()
        #: claims being attempted: delivery id -> when its lease was last set (monotonic)
        self._leased: dict[int, float] = {}
        self._wake = threading.Event()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="deliver")

    # the loop

    def run(
        self,
        stop: threading.Event,
        poll_seconds: float = 0.01,
        waker: store.EventWaker | None = None,
    ) -> None:
        """Rounds until ``stop``; between idle rounds, wait for an attempt to finish, for new
        events (``waker``: PostgreSQL's NOTIFY, so polling can be slow), or ``poll_seconds``."""
        if waker is not None and waker.active:
            waker.on_events(self._wake.set)
            poll_seconds = max(poll_seconds, WOKEN_POLL_SECONDS)
        log.info("deliverer %s: up to %d deliveries at once", self.owner, self.concurrency)
        while not stop.is_set():
            try:
                did = self.run_round()
            except Exception:  # a failing round (database down) must not end the worker
                log.exception("delivery round failed")
                stop.wait(1.0)
                continue
            if not (did.fanned_out or did.claimed or did.recorded):
                self._wake.wait(poll_seconds)
                self._wake.clear()
        self.close()

    def close(self, wait: bool = True) -> None:
        """Let the attempts in flight finish and record them (a SIGTERM mid-delivery loses
        nothing; a SIGKILL leaves the lease to lapse)."""
        self._pool.shutdown(wait=wait)
        finished = self._drain() if wait else []
        if finished:
            self._record(finished)

    def run_round(self) -> Round:
        """Record what finished; then, in one transaction, fan out new events and claim what
        is due (one read first, so an idle round writes nothing)."""
        done = Round()
        finished = self._drain()
        if finished:
            done.recorded = self._record(finished)
        self._renew_leases()
        free = self.concurrency - self._in_flight
        now = self.clock()
        with self.engine.connect() as conn:
            head = store.events_head(conn)
            behind = store.any_behind(conn, head)
            due = free > 0 and not behind and store.has_claimable(conn, now)
            conn.rollback()
        if not (behind or due):
            return done
        with store.transaction(self.engine) as conn:
            if behind:
                done.fanned_out = self._fan_out(conn, head, now)
            claims = self._claim(conn, now, free) if free > 0 else []
        done.claimed = len(claims)
        for claim in claims:
            self._leased[claim.delivery_id] = time.monotonic()
            self._pool.submit(self._attempt, claim)
        return done

    @property
    def _in_flight(self) -> int:
        return len(self._leased)

    def _renew_leases(self) -> None:
        """Attempts still running after a third of their lease get it extended, so a slow
        subscriber's delivery is never taken over by another worker while this one lives;
        a dead worker stops renewing and its leases lapse."""
        due = time.monotonic() - self.policy.lease.total_seconds() / 3
        stale = [i for i, at in self._leased.items() if at < due]
        if not stale:
            return
        with store.transaction(self.engine) as conn:
            store.renew_leases(conn, self.owner, stale, self.clock() + self.policy.lease)
        renewed = time.monotonic()
        for ident in stale:
            self._leased[ident] = renewed

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Tests: run rounds until nothing is in flight and nothing is due."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            did = self.run_round()
            if not (did.fanned_out or did.claimed or did.recorded) and self._in_flight == 0:
                return
            if self._in_flight:
                self._wake.wait(0.05)
                self._wake.clear()
        raise TimeoutError("deliveries still in flight")

    def _drain(self) -> list[_Finished]:
        finished = []
        while True:
            try:
                finished.append(self._finished.get_nowait())
            except queue.Empty:
                break
        for f in finished:
            self._leased.pop(f.claim.delivery_id, None)
        return finished

    # 1. fan out

    def _fan_out(self, conn: Connection, head: int, now: datetime) -> int:
        created = 0
        for subscription in store.subscriptions_to_fan_out(conn, head):
            created += store.fan_out(conn, subscription, limit=FANOUT_BATCH, now=now)
        return created

    # 2. claim

    def _claim(self, conn: Connection, now: datetime, limit: int) -> list[Claim]:
        return store.claim_deliveries(
            conn, now=now, owner=self.owner, lease_until=now + self.policy.lease, limit=limit
        )

    # 3. send

    def _attempt(self, claim: Claim) -> None:
        started_at = self.clock()
        try:
            outcome = self.send(claim, started_at)
        except Exception as exc:  # never lose the claim's result to a bug in a thread
            log.exception("delivery %s: attempt failed unexpectedly", claim.delivery_id)
            outcome = Outcome(AttemptResult.CONNECTION_ERROR, error=_describe(exc))
        self._finished.put(_Finished(claim, outcome, started_at, self.clock()))
        self._wake.set()

    def send(self, claim: Claim, now: datetime) -> Outcome:
        body = json.dumps(to_cloudevent(claim.event), separators=(",", ":"))
        # the timestamp is checked against the subscriber's own clock: always the wall clock
        secrets_now = claim.subscription.signing_secrets(now)
        headers = signed_headers(claim.event.id, body, secrets_now, datetime.now(UTC))
        return self.sender.post(claim.subscription.url, body.encode(), headers)

    # 4. record

    def _record(self, finished: list[_Finished]) -> int:
        updates: list[dict[str, Any]] = []
        attempts: list[dict[str, Any]] = []
        for f in finished:
            attempts.append(
                {
                    "delivery_id": f.claim.delivery_id,
                    "attempt": f.claim.attempt,
                    "started_at": f.started_at,
                    "duration_ms": f.outcome.duration_ms,
                    "result": f.outcome.result.value,
                    "status_code": f.outcome.status_code,
                    "error": f.outcome.error,
                }
            )
            updates.append(self._next_step(f))
        disabled: list[str] = []
        with store.transaction(self.engine) as conn:
            now = self.clock()
            applied = store.finish_attempts(conn, self.owner, updates, attempts)
            for results in _by_subscription(finished):
                sub = results[0].claim.subscription
                reason = self._health(conn, sub.id, results, now)
                if reason and store.disable_subscription(conn, sub.id, reason, now):
                    disabled.append(sub.id)
                    store.insert_event(conn, _disabled_event(sub, reason, now))
        for f in finished:
            self._count(f, f.claim.delivery_id in applied)
        for sub_id in disabled:
            log.warning("subscription %s disabled", sub_id)
            self.metrics.deliveries.labels("subscription_disabled").inc()
        return len(finished)

    def _health(
        self, conn: Connection, subscription_id: str, results: list[_Finished], now: datetime
    ) -> str | None:
        """Update the subscription's health with one batch of its attempts (in the order
        they finished); returns why it must be disabled, if it must."""
        kinds = [f.outcome.result for f in results]
        if AttemptResult.GONE in kinds:
            gone = results[kinds.index(AttemptResult.GONE)]
            return f"the endpoint answered 410 Gone at {_iso(gone.finished_at)}"
        failed = [i for i, kind in enumerate(kinds) if kind is not AttemptResult.SUCCESS]
        reason = None
        if failed:
            since = store.record_failure(conn, subscription_id, now)
            if since is not None and now - since >= self.policy.disable_after:
                reason = f"deliveries failing since {_iso(since)}"
        in_a_row = len(kinds) - (failed[-1] + 1 if failed else 0)
        if in_a_row and reason is None:
            store.record_success(
                conn, subscription_id, in_a_row, streak=HEALTHY_STREAK,
                quiet_since=now - self.policy.disable_after / 4,
            )  # fmt: skip
        return reason

    def _next_step(self, f: _Finished) -> dict[str, Any]:
        outcome = f.outcome
        values: dict[str, Any] = {
            "id": f.claim.delivery_id,
            "attempts": f.claim.attempt,
            "last_status_code": outcome.status_code,
            "last_error": outcome.error,
            "state": DeliveryState.SUCCEEDED.value,
            "next_attempt_at": f.finished_at,
            "completed_at": f.finished_at,
        }
        if outcome.result is AttemptResult.SUCCESS:
            return values
        delay = (
            None
            if outcome.result is AttemptResult.GONE
            else self.policy.retry_delay(f.claim.attempt, outcome.retry_after, self.rng)
        )
        if delay is None:
            return values | {"state": DeliveryState.FAILED.value}
        return values | {
            "state": DeliveryState.PENDING.value,
            "next_attempt_at": f.finished_at + timedelta(seconds=delay),
            "completed_at": None,
        }

    def _count(self, f: _Finished, applied: bool) -> None:
        m = self.metrics
        m.delivery_attempts.labels(f.outcome.result.value).inc()
        if not applied:
            return  # the lease had lapsed: another worker owns the delivery's fate now
        if f.outcome.result is AttemptResult.SUCCESS:
            m.deliveries.labels("delivered").inc()
            m.attempts_per_delivery.observe(f.claim.attempt)
            if f.claim.origin == "fanout":  # a replay's latency says nothing about the pipe
                latency = (f.finished_at - f.claim.event.time).total_seconds()
                m.delivery_latency.observe(max(0.0, latency))
        elif f.outcome.result is AttemptResult.GONE or f.claim.attempt > len(self.policy.schedule):
            m.deliveries.labels("given_up").inc()
            m.attempts_per_delivery.observe(f.claim.attempt)


def _by_subscription(finished: list[_Finished]) -> list[list[_Finished]]:
    groups: dict[str, list[_Finished]] = {}
    for f in sorted(finished, key=lambda f: f.finished_at):
        groups.setdefault(f.claim.subscription.id, []).append(f)
    return list(groups.values())


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _disabled_event(sub: Subscription, reason: str, now: datetime) -> dict[str, Any]:
    """The operator event: a subscription stopped receiving deliveries."""
    return {
        "id": new_id("evt", now),
        "type": SUBSCRIPTION_DISABLED,
        "source": "/cirelay/subscriptions",
        "subject": sub.id,
        "job_id": None,
        "time": now,
        "data": {"subscription_id": sub.id, "url": sub.url, "reason": reason},
    }


# --- replay --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replay:
    id: str
    subscription_id: str
    deliveries: int


def parse_since(value: object) -> datetime:
    """A replay's ``since``: an RFC 3339 time with an offset (UnprocessableError otherwise)."""
    problem = [{"field": "since", "message": "an RFC 3339 time with offset, e.g. …T08:00:00Z"}]
    try:
        parsed = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise UnprocessableError("invalid since", problem)
    return parsed.astimezone(UTC)


def enqueue_replay(
    engine: Engine,
    subscription_id: str,
    *,
    now: datetime,
    event_id: str | None = None,
    since: datetime | None = None,
) -> Replay:
    """Deliver one event again (``event_id``), or every event since a time that matches the
    subscription's types, with the same ``webhook-id`` as before."""
    if (event_id is None) == (since is None):
        raise UnprocessableError(
            "say which events to replay",
            [{"field": "event_id|since", "message": "exactly one of event_id and since"}],
        )
    replay_id = new_id("rpl", now)
    with store.transaction(engine) as conn:
        subscription = store.get_subscription(conn, subscription_id)
        if subscription is None:
            raise NotFoundError(f"no subscription {subscription_id!r}")
        if not subscription.enabled:
            raise ConflictError("the subscription is disabled: enable it before a replay")
        seq = None
        if event_id is not None:
            event = store.find_event(conn, event_id)
            if event is None:
                raise NotFoundError(f"no event {event_id!r}")
            seq = event.seq
        count = store.enqueue_replay(
            conn, subscription, origin=replay_id, now=now, event_seq=seq, since=since
        )
    return Replay(replay_id, subscription_id, count)


def replay_progress(engine: Engine, replay: Replay) -> dict[str, int]:
    with engine.connect() as conn:
        return store.progress(conn, replay.id)


def build_deliverer(
    settings: Settings, engine: Engine, metrics: Metrics, clock: Callable[[], datetime]
) -> Deliverer:
    policy = Policy.from_settings(settings)
    sender = Sender(
        allowed_networks=settings.delivery_allowed_networks,
        timeout=policy.timeout,
        pool_size=settings.delivery_concurrency,
    )
    return Deliverer(
        engine, policy, sender, metrics, clock=clock, concurrency=settings.delivery_concurrency
    )
