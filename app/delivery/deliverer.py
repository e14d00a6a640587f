"""The worker loop (:class:`Deliverer`): fan out, claim, send, record, and keep each
subscription's health. :func:`app.delivery.build.build_deliverer` makes the one ``cirelay
worker`` runs.

A live worker renews the leases of its attempts in flight, so a slow subscriber is never sent
the same delivery by two workers at once. A worker that dies mid-delivery stops renewing and its
lease lapses; the delivery is then sent again with the same ``webhook-id`` (the event id), which
subscribers deduplicate on.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection, Engine

from app import store, tracing
from app.delivery.policy import Policy
from app.delivery.rows import DeliveryUpdate, NewEvent
from app.delivery.sender import AttemptReport, describe_error, signed_headers
from app.delivery.transports import Transport
from app.events import TYPE_PREFIX, to_cloudevent
from app.metrics import Metrics
from app.models import (
    AttemptResult,
    Claim,
    DeliveryAttempt,
    DeliveryState,
    Subscription,
    new_id,
)
from app.subscriptions import mask_url, transport_of

if TYPE_CHECKING:
    from app.waker import Waker

log = logging.getLogger(__name__)

SUBSCRIPTION_DISABLED = f"{TYPE_PREFIX}.subscription.disabled"
#: how often a worker woken by NOTIFY still looks, for retries coming due
WOKEN_POLL_SECONDS = 0.25
#: events fanned out per subscription per round
FANOUT_BATCH = 1000
#: a failing subscription is healthy again after this many 2xx in a row (or, for one that
#: gets few events, after a 2xx a quarter of the disable period after its last failure)
HEALTHY_STREAK = 10
#: a subscription that answers again has this many seconds' worth of its waiting retries
#: (at the recovery rate) brought forward; the rest keep their schedule
RECOVERY_HORIZON_SECONDS = 600
#: finished attempts wait this long to be recorded together (one round records a batch,
#: rather than one round each), unless they hold half the slots or half one subscription's
#: cap; rounds that fan out and claim new events meanwhile do not record, so they stay short
RESULTS_MAX_WAIT_SECONDS = 0.02


@dataclass(frozen=True)
class _Finished:
    claim: Claim
    report: AttemptReport
    started_at: datetime
    finished_at: datetime
    #: when it finished, by the monotonic clock (how long it has waited to be recorded)
    settled: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _Recorded:
    """What writing a batch of results did: the deliveries whose lease was still this
    worker's (the others' results were not applied), and the subscriptions it disabled."""

    applied: set[int]
    disabled: list[Subscription]


@dataclass
class Round:
    """What one round of the loop did (for logs and tests)."""

    fanned_out: int = 0
    claimed: int = 0
    recorded: int = 0
    #: it stopped short of what it saw: a fan-out window ended before the newest event, or
    #: the claim took every free slot (the next round must not wait for a wake)
    more: bool = False


class Deliverer:
    """Fans out, claims, sends and records. :meth:`run` is the worker loop; :meth:`run_round`
    one pass of it (tests drive it directly)."""

    def __init__(
        self,
        engine: Engine,
        policy: Policy,
        sender: Transport,
        metrics: Metrics,
        *,
        clock: Callable[[], datetime],
        concurrency: int = 16,
        per_subscription: int | None = None,
        recovery_rate: float = 200.0,
        results_wait: float = RESULTS_MAX_WAIT_SECONDS,
        owner: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """``per_subscription``: deliveries in flight to one subscription at once, over every
        worker (default: half of ``concurrency``). ``recovery_rate``: deliveries per second
        brought forward from the backlog of a subscription that answers 2xx after failures.
        ``results_wait``: how long finished attempts wait to be recorded together (see
        :meth:`run_round`)."""
        self.engine = engine
        self.policy = policy
        self.sender = sender
        self.metrics = metrics
        self.clock = clock
        self.concurrency = concurrency
        self.per_subscription = per_subscription or max(1, concurrency // 2)
        self.recovery_rate = recovery_rate
        self.results_wait = results_wait
        self.owner = owner or f"{socket.gethostname()}:{secrets.token_hex(6)}"
        self.rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._finished: queue.SimpleQueue[_Finished] = queue.SimpleQueue()
        #: finished attempts taken from the queue, waiting to be recorded (oldest first)
        self._results: list[_Finished] = []
        #: claims being attempted: delivery id -> when its lease was last set (monotonic)
        self._leased: dict[int, float] = {}
        self._wake = threading.Event()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="deliver")
        #: SQLite: one writer at a time (a writing transaction queues for the lock)
        self._one_writer = engine.dialect.name == "sqlite"
        #: the loop's connection, kept while rounds follow each other (no pool checkout and
        #: no ping per transaction), given back when it goes idle; only the loop's thread
        #: uses it. Its writes are all done again if a power loss takes them back, so on
        #: SQLite its commits do not wait for the disk (see HeldConnection)
        self._held = store.HeldConnection(engine, redone_if_lost=True)
        #: SQLite: the connection of the read that starts a round (the held one begins as a
        #: writer, which would queue for the lock), kept and given back alike
        self._reader = store.HeldConnection(engine, reader=True)
        #: SQLite: the held connection's data version when the last round began to read
        #: (see :meth:`_something_new`)
        self._read_version: int | None = None
        #: the waker said something was committed since the last round began
        self._committed = False

    # the loop

    def run(
        self,
        stop: threading.Event,
        poll_seconds: float = 0.01,
        waker: Waker | None = None,
    ) -> None:
        """Rounds until ``stop``; between them, wait for new events (``waker``: PostgreSQL's
        NOTIFY or SQLite's commit watcher, so polling can be slow), for the results waiting
        to be due, or ``poll_seconds``."""
        if waker is not None and waker.active:
            waker.on_events(self._events_committed)
            poll_seconds = max(poll_seconds, WOKEN_POLL_SECONDS)
        log.info("deliverer %s: up to %d deliveries at once", self.owner, self.concurrency)
        while not stop.is_set():
            try:
                did = self.run_round()
            except Exception:  # a failing round (database down) must not end the worker
                log.exception("delivery round failed")
                stop.wait(1.0)
                continue
            if did.more:
                continue
            if not (did.fanned_out or did.claimed or did.recorded or self._in_flight):
                self._held.close()  # idle: the connections go back to the pool
                self._reader.close()
            # an attempt that finishes wakes the loop only to learn when its result is due
            while (timeout := self._until_results_due(poll_seconds)) > 0:
                woken = self._wake.wait(timeout)
                self._wake.clear()
                if not woken or stop.is_set() or self._something_new():
                    break
        self.close()

    def _events_committed(self) -> None:
        """The waker's callback, on its thread: something was committed."""
        self._committed = True
        self._wake.set()

    def _until_results_due(self, poll_seconds: float) -> float:
        """How long the loop may wait for its next round: until the results waiting are due
        to be recorded (:meth:`_results_overdue`; 0 when they are), ``poll_seconds`` at most."""
        self._results += self._drain()
        if not self._results:
            return poll_seconds
        if self._results_overdue():
            return 0.0
        due = self._results[0].settled + self.results_wait - time.monotonic()
        return min(poll_seconds, due)

    def _something_new(self) -> bool:
        """Whether a wake brings what the last round did not see: a commit, but not the
        loop's own. On SQLite the commit watcher wakes the loop for those too (one a round),
        and the held connection's data version tells them from any other connection's."""
        if not self._committed:
            return False
        version = self._held.data_version()
        return version is None or version != self._read_version

    def close(self, wait: bool = True) -> None:
        """Let the attempts in flight finish and record them (a SIGTERM mid-delivery loses
        nothing; a SIGKILL leaves the lease to lapse)."""
        self._pool.shutdown(wait=wait)
        finished = self._results + self._drain() if wait else []
        self._results = []
        if finished:
            self._record(finished)
        self._held.close()
        self._reader.close()

    def run_round(self) -> Round:
        """Record what finished, fan out new events and claim what is due, in one transaction:
        one commit a round (on SQLite, one wait for the writer lock). Finished attempts wait
        to be recorded together, a batch at a time, once the oldest has waited
        :attr:`results_wait` or they hold enough slots (:meth:`_results_overdue`): a round a
        result would cost more than the rest of the pipe, and rounds that claim new events
        stay short. The round that records them claims after them. One read first decides, so
        a round with nothing to do writes nothing: on SQLite on a reader's connection (the
        loop's begins as a writer, which would queue for the lock), on PostgreSQL in the
        round's transaction."""
        done = Round()
        self._committed = False  # what is committed from now on wakes the loop again
        self._read_version = self._held.data_version(connect=True)
        self._renew_leases()
        now = self.clock()
        self._results += self._drain()
        head, behind, due, subs = 0, False, False, None
        overdue = self._results_overdue()
        if self._one_writer and not overdue:
            with self._reader.transaction() as conn:
                head, behind, due = self._look(conn, now)
            if not (behind or due):
                return done
        recorded = None
        with self._held.transaction() as conn:
            if not (self._one_writer or overdue):
                # PostgreSQL: the same transaction reads, then writes (a transaction of its
                # own would cost two more round trips; an idle round still writes nothing),
                # and the subscriptions behind are read, and locked, with the head
                head, subs = store.behind_head(conn, now)
                behind = bool(subs)
                if not (behind or self._due(conn, now)):
                    return done
            if overdue:
                # the results taken once the writer lock is held: attempts that finished
                # meanwhile free their slots for this round's claim
                finished, self._results = self._results + self._drain(), []
                recorded = self._write_results(conn, finished)
                head, subs = store.behind_head(conn, now)  # this round did not read
                behind = bool(subs)
            if behind:
                done.fanned_out, done.more = self._fan_out(conn, head, now, subs)
            free = self.concurrency - self._in_flight
            claims = self._claim(conn, now, free) if free > 0 else []
        if recorded is not None:
            done.recorded = self._after_record(finished, recorded)
        done.claimed = len(claims)
        done.more = done.more or 0 < free == len(claims)
        for claim in claims:
            self._leased[claim.delivery_id] = time.monotonic()
            self._pool.submit(self._attempt, claim)
        return done

    def _look(self, conn: Connection, now: datetime) -> tuple[int, bool, bool]:
        """SQLite's read that decides whether a round does anything: the newest event,
        whether a subscription is behind it, and whether a delivery is due (asked only when
        no event is new: a round that fans out claims anyway)."""
        head, behind = store.head_and_behind(conn, now)
        return head, behind, not behind and self._due(conn, now)

    def _due(self, conn: Connection, now: datetime) -> bool:
        """Whether a slot is free and a delivery due."""
        return self.concurrency > self._in_flight and store.has_claimable(
            conn, now, per_subscription=self.per_subscription
        )

    def _results_overdue(self) -> bool:
        """Whether the results waiting must be recorded now: the oldest has waited
        :attr:`results_wait`, or they hold half the slots, or half one subscription's cap
        (their leases count against it: its next deliveries must not wait on them)."""
        if not self._results:
            return False
        if (
            time.monotonic() - self._results[0].settled >= self.results_wait
            or len(self._results) >= self.concurrency // 2
        ):
            return True
        per_subscription = Counter(f.claim.subscription.id for f in self._results)
        return max(per_subscription.values()) >= max(1, self.per_subscription // 2)

    @property
    def _in_flight(self) -> int:
        """Slots taken: attempts running, and finished ones not yet recorded (their leases
        still count against their subscription's cap)."""
        return len(self._leased) + len(self._results)

    def _renew_leases(self) -> None:
        """Attempts still running after a third of their lease get it extended, so a slow
        subscriber's delivery is never taken over by another worker while this one lives;
        a dead worker stops renewing and its leases lapse."""
        due = time.monotonic() - self.policy.lease.total_seconds() / 3
        stale = [i for i, at in self._leased.items() if at < due]
        if not stale:
            return
        with self._held.transaction() as conn:
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

    def _fan_out(
        self, conn: Connection, head: int, now: datetime, subs: list[Subscription] | None
    ) -> tuple[int, bool]:
        """Fan out the events up to ``head`` to ``subs`` (read with it, or read here), at
        most :data:`FANOUT_BATCH` per subscription; returns how many deliveries it made, and
        whether a window may have ended before ``head`` (more than a batch lay between a
        cursor and it)."""
        created, short = 0, False
        if subs is None:
            subs = store.subscriptions_to_fan_out(conn, head, now)
        for subscription in subs:
            created += store.fan_out(conn, subscription, limit=FANOUT_BATCH, now=now, head=head)
            short = short or head - subscription.fanout_seq > FANOUT_BATCH
        return created, short

    # 2. claim

    def _claim(self, conn: Connection, now: datetime, limit: int) -> list[Claim]:
        return store.claim_deliveries(
            conn, now=now, owner=self.owner, lease_until=now + self.policy.lease, limit=limit,
            per_subscription=self.per_subscription,
        )  # fmt: skip

    # 3. send

    def _attempt(self, claim: Claim) -> None:
        started_at = self.clock()
        try:
            report = self.send(claim, started_at)
        except Exception as exc:  # never lose the claim's result to a bug in a thread
            log.exception("delivery %s: attempt failed unexpectedly", claim.delivery_id)
            report = AttemptReport(AttemptResult.CONNECTION_ERROR, error=describe_error(exc))
        self._finished.put(_Finished(claim, report, started_at, self.clock()))
        self._wake.set()

    def send(self, claim: Claim, now: datetime) -> AttemptReport:
        body = json.dumps(to_cloudevent(claim.event), separators=(",", ":"))
        # the timestamp is checked against the subscriber's own clock: always the wall clock
        secrets_now = claim.subscription.signing_secrets(now)
        headers = signed_headers(claim.event.id, body, secrets_now, datetime.now(UTC))
        with tracing.delivery_span(self.engine, claim):  # the job's trace; no-op when off
            report = self.sender.post(claim.subscription.url, body.encode(),
                                      headers | tracing.inject_headers())  # fmt: skip
            return tracing.traced_report(report)

    # 4. record

    def _record(self, finished: list[_Finished]) -> int:
        with self._held.transaction() as conn:
            recorded = self._write_results(conn, finished)
        return self._after_record(finished, recorded)

    def _write_results(self, conn: Connection, finished: list[_Finished]) -> _Recorded:
        """Write the attempts, the deliveries' next steps and each subscription's health."""
        attempts = [_attempt_row(f) for f in finished]
        updates = [self._next_step(f) for f in finished]
        disabled: list[Subscription] = []
        now = self.clock()
        applied = store.finish_attempts(
            conn, self.owner, [asdict(u) for u in updates], [asdict(a) for a in attempts]
        )
        for results in _by_subscription(finished):
            sub = results[0].claim.subscription
            recovered = _answers_again(
                conn, sub, results, now=now, failing_for=self.policy.first_delay
            )
            reason = self._health(conn, sub.id, results, now)
            if reason and store.disable_subscription(conn, sub.id, reason, now):
                disabled.append(sub)
                store.insert_event(conn, asdict(_disabled_event(sub, reason, now)))
            elif recovered:
                self._bring_forward(conn, sub.id, now)
        return _Recorded(applied, disabled)

    def _after_record(self, finished: list[_Finished], recorded: _Recorded) -> int:
        """Once committed: count the attempts, and log and count the disabled subscriptions."""
        for f in finished:
            self._count(f, f.claim.delivery_id in recorded.applied)
        for sub in recorded.disabled:
            log.warning("subscription %s disabled", sub.id)
            transport = transport_of(sub.url)
            self.metrics.deliveries.labels("subscription_disabled", transport).inc()
        return len(finished)

    # 5. health

    def _bring_forward(self, conn: Connection, subscription_id: str, now: datetime) -> None:
        """The subscription answers again: its retries waiting on their backoff go now, in
        event order, :attr:`recovery_rate` a second (so a backlog drains in seconds, not on
        the backoff schedule), within the per-subscription cap like any delivery."""
        moved = store.bring_forward(
            conn, subscription_id, now=now, interval=1 / self.recovery_rate,
            limit=round(self.recovery_rate * RECOVERY_HORIZON_SECONDS),
        )  # fmt: skip
        if moved:
            log.info("subscription %s answers again: %d retries brought forward",
                     subscription_id, moved)  # fmt: skip

    def _health(
        self, conn: Connection, subscription_id: str, results: list[_Finished], now: datetime
    ) -> str | None:
        """Update the subscription's health with one batch of its attempts (in the order
        they finished) and, when the last says its endpoint cannot be reached, pause it
        until the next probe (:meth:`Policy.probe_delay`); returns why it must be disabled,
        if it must."""
        kinds = [f.report.result for f in results]
        if AttemptResult.GONE in kinds:
            gone = results[kinds.index(AttemptResult.GONE)]
            return f"the endpoint answered 410 Gone at {_iso(gone.finished_at)}"
        failed = [i for i, kind in enumerate(kinds) if kind is not AttemptResult.SUCCESS]
        reason = None
        if failed:
            last = results[failed[-1]]
            pause = None
            if failed[-1] == len(kinds) - 1 and last.report.result in _ENDPOINT_UNREACHABLE:
                # no use sending the others to be refused one by one: nothing goes until
                # the next probe, then one at a time until one succeeds
                pause = last.finished_at + self.policy.probe_delay(self.rng)
            since = store.record_failure(conn, subscription_id, now, pause_until=pause)
            if since is not None and now - since >= self.policy.disable_after:
                reason = f"deliveries failing since {_iso(since)}"
        in_a_row = len(kinds) - (failed[-1] + 1 if failed else 0)
        if in_a_row and reason is None:
            store.record_success(
                conn, subscription_id, in_a_row, streak=HEALTHY_STREAK,
                quiet_since=now - self.policy.disable_after / 4,
            )  # fmt: skip
        return reason

    def _next_step(self, f: _Finished) -> DeliveryUpdate:
        report = f.report
        done = DeliveryUpdate(
            id=f.claim.delivery_id,
            attempts=f.claim.attempt,
            last_status_code=report.status_code,
            last_error=report.error,
            state=DeliveryState.SUCCEEDED.value,
            next_attempt_at=f.finished_at,
            completed_at=f.finished_at,
        )
        if report.result is AttemptResult.SUCCESS:
            return done
        delay = (
            None
            if report.result is AttemptResult.GONE
            else self.policy.retry_delay(f.claim.attempt, report.retry_after, self.rng)
        )
        if delay is None:
            return replace(done, state=DeliveryState.FAILED.value)
        return replace(
            done,
            state=DeliveryState.PENDING.value,
            next_attempt_at=f.finished_at + timedelta(seconds=delay),
            completed_at=None,
        )

    def _count(self, f: _Finished, applied: bool) -> None:
        m = self.metrics
        transport = transport_of(f.claim.subscription.url)
        m.delivery_attempts.labels(f.report.result.value, transport).inc()
        if not applied:
            return  # the lease had lapsed: another worker owns the delivery's fate now
        if f.report.result is AttemptResult.SUCCESS:
            m.deliveries.labels("delivered", transport).inc()
            m.attempts_per_delivery.observe(f.claim.attempt)
            if f.claim.origin == "fanout":  # a replay's latency says nothing about the pipe
                latency = (f.finished_at - f.claim.event.time).total_seconds()
                m.delivery_latency.labels(transport).observe(
                    max(0.0, latency), exemplar=f.report.exemplar
                )
        elif f.report.result is AttemptResult.GONE or f.claim.attempt > len(self.policy.schedule):
            m.deliveries.labels("given_up", transport).inc()
            m.attempts_per_delivery.observe(f.claim.attempt)


#: failed attempts that say the endpoint itself cannot be reached (down, too slow, or at an
#: address it may not have), whatever the event: then its subscription is paused. An endpoint
#: that answers, even 5xx or 429, is up: each delivery keeps its own retries (one job's
#: failing event never holds up the other jobs')
_ENDPOINT_UNREACHABLE = frozenset(
    {AttemptResult.TIMEOUT, AttemptResult.CONNECTION_ERROR, AttemptResult.FORBIDDEN_ADDRESS}
)


def _attempt_row(f: _Finished) -> DeliveryAttempt:
    return DeliveryAttempt(
        delivery_id=f.claim.delivery_id,
        attempt=f.claim.attempt,
        started_at=f.started_at,
        duration_ms=f.report.duration_ms,
        result=f.report.result.value,
        status_code=f.report.status_code,
        error=f.report.error,
    )


def _answers_again(
    conn: Connection, sub: Subscription, results: list[_Finished], *, failing_for: timedelta,
    now: datetime,
) -> bool:  # fmt: skip
    """Whether this batch brings a 2xx from a subscription that had been failing, with no 2xx
    since, for at least ``failing_for`` (the first retry's delay), or that was paused (could
    not be reached): down, not one event it refused while it took the others (whose retry
    keeps its backoff). Read again only when it was failing when claimed."""
    if sub.failing_since is None or all(f.report.result is not AttemptResult.SUCCESS
                                        for f in results):  # fmt: skip
        return False
    current = store.get_subscription(conn, sub.id)
    return (
        current is not None
        and current.failing_since is not None
        and (current.failing_since <= now - failing_for or current.paused_until is not None)
        and current.successes_in_a_row == 0
    )


def _by_subscription(finished: list[_Finished]) -> list[list[_Finished]]:
    """The results per subscription, each in the order they finished; the subscriptions in
    id order, so that two workers recording at once update their rows in the same order (on
    PostgreSQL, in opposite orders they could deadlock)."""
    groups: dict[str, list[_Finished]] = {}
    for f in sorted(finished, key=lambda f: f.finished_at):
        groups.setdefault(f.claim.subscription.id, []).append(f)
    return [groups[ident] for ident in sorted(groups)]


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _disabled_event(sub: Subscription, reason: str, now: datetime) -> NewEvent:
    """The operator event: a subscription stopped receiving deliveries."""
    return NewEvent(
        id=new_id("evt", now),
        type=SUBSCRIPTION_DISABLED,
        source="/cirelay/subscriptions",
        subject=sub.id,
        job_id=None,
        time=now,
        data={"subscription_id": sub.id, "url": mask_url(sub.url), "reason": reason},
    )
