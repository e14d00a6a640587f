"""Webhook delivery against real subscriber servers on loopback, on SQLite and PostgreSQL.

Events come from the real callback endpoint; the deliverer is the worker's own, driven round by
round (``wait_idle``) with the test's clock, so retries come due when the test moves time on.
What subscribers receive is checked with the ``standardwebhooks`` verifier and parsed with the
``cloudevents`` SDK.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from app import Services, build_services, store
from app.config import Settings
from app.delivery import (
    SUBSCRIPTION_DISABLED,
    Deliverer,
    Policy,
    Round,
    Sender,
    parse_retry_after,
)
from app.models import AttemptResult
from app.schemas import SchemaSet
from app.waker import CommitWatcher
from tests.conftest import Clock, ci_job_id, make_job, notification_xml
from tests.subscriber import Answer, Request, Subscriber

LOOPBACK = ("127.0.0.0/8",)
XML = {"Content-Type": "application/xml"}


@pytest.fixture
def services(
    settings: Settings, engine: Engine, schemas: SchemaSet, registry: CollectorRegistry,
    clock: Clock,
) -> Services:  # fmt: skip
    allowed = replace(settings, delivery_allowed_networks=LOOPBACK)
    return build_services(allowed, registry=registry, engine=engine, schemas=schemas, clock=clock)


@pytest.fixture
def policy() -> Policy:
    return Policy(schedule=(10.0, 20.0, 40.0), disable_after=timedelta(hours=1), timeout=2.0)


@pytest.fixture
def deliverer(services: Services, clock: Clock, policy: Policy) -> Iterator[Deliverer]:
    sender = Sender(allowed_networks=LOOPBACK, timeout=policy.timeout)
    d = Deliverer(services.engine, policy, sender, services.metrics, clock=clock, concurrency=4,
                  rng=random.Random(7))  # fmt: skip
    yield d
    d.close()


@pytest.fixture
def hook() -> Iterator[Subscriber]:
    with Subscriber() as subscriber:
        yield subscriber


def subscribe(client: FlaskClient, auth: dict[str, str], url: str, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/subscriptions", json={"url": url, **body}, headers=auth)
    assert response.status_code == 201, response.json
    return dict(response.json)


def notify(client: FlaskClient, engine: Engine, clock: Clock, n: int, *states: str) -> None:
    """Job number ``n`` (made on first use) reports ``states`` in turn."""
    job_id, ci_id = f"job_{n:04d}", ci_job_id(n)
    with engine.connect() as conn:
        exists = store.get_job(conn, job_id) is not None
    path = make_job(engine, job_id, clock(), ci_id) if not exists else None
    path = path or f"/callbacks/ci/{job_id}/" + _token(job_id)
    for state in states:
        response = client.post(path, data=notification_xml(ci_id, state), headers=XML)
        assert response.status_code == 200, response.json


def _token(job_id: str) -> str:
    from tests.conftest import callback_path

    return callback_path(job_id).rsplit("/", 1)[1]


def deliveries(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(store.deliveries).order_by(store.deliveries.c.id))
        return [dict(r) for r in rows.mappings()]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` with ``labels``, over the labels not given
    (``transport``, for one)."""
    return sum(
        s.value
        for family in registry.collect()
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


# --- a delivery, as the subscriber sees it ----------------------------------------------------


def test_each_event_is_delivered_signed_as_a_cloudevent(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber, registry: CollectorRegistry,
) -> None:  # fmt: skip
    sub = subscribe(client, auth, hook.url())
    notify(client, engine, clock, 1, "Running", "Success")

    deliverer.wait_idle()

    requests = hook.accepted()
    assert [r.headers["content-type"] for r in requests] == ["application/cloudevents+json"] * 2
    events = hook.verified(sub["secret"])
    assert [e["type"] for e in events] == ["com.cirelay.job.running", "com.cirelay.job.succeeded"]
    assert all(e["subject"] == ci_job_id(1) for e in events)
    assert [r.webhook_id for r in requests] == [e["id"] for e in events]
    assert events[1].data["state"] == "Success" and events[1].data["previous_state"] == "Running"
    assert [d["state"] for d in deliveries(engine)] == ["succeeded", "succeeded"]
    assert sample(registry, "cirelay_deliveries_total", outcome="delivered") == 2
    assert sample(registry, "cirelay_delivery_attempts_total", result="success") == 2
    assert sample(registry, "cirelay_delivery_latency_seconds_count") == 2
    assert sample(registry, "cirelay_delivery_attempts_per_delivery_sum") == 2


def test_only_events_of_the_subscribed_types_and_only_after_subscribing(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber,
) -> None:  # fmt: skip
    notify(client, engine, clock, 1, "Running")  # before the subscription: not sent
    subscribe(client, auth, hook.url(), event_types=["com.cirelay.job.succeeded"])
    notify(client, engine, clock, 1, "Success")
    notify(client, engine, clock, 2, "Running")

    deliverer.wait_idle()

    assert [r.event()["type"] for r in hook.received()] == ["com.cirelay.job.succeeded"]


def test_during_a_rotation_deliveries_carry_both_signatures(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber,
) -> None:  # fmt: skip
    sub = subscribe(client, auth, hook.url())
    path = f"/v1/subscriptions/{sub['id']}/rotate-secret"
    new = client.post(path, json={"grace_seconds": 3600}, headers=auth).json["secret"]

    notify(client, engine, clock, 1, "Running")
    deliverer.wait_idle()
    clock.now += timedelta(hours=2)  # the grace period is over
    notify(client, engine, clock, 1, "Success")
    deliverer.wait_idle()

    during, after = hook.received()
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    # the old secret verifies during the grace period only; the new one always
    Webhook(sub["secret"]).verify(during.body, during.headers)
    for request in (during, after):
        Webhook(new).verify(request.body, request.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(sub["secret"]).verify(after.body, after.headers)


def test_the_workers_writes_do_not_wait_for_the_disk_and_the_services_do(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber,
) -> None:  # fmt: skip
    """SQLite: what the service must not lose is on disk at commit (``synchronous`` 2 =
    FULL); the worker's writes, done again if a power loss takes them back (a delivery is
    at least once), do not wait for the disk (1 = NORMAL)."""
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite's synchronous levels")
    levels: dict[str, set[int]] = collections.defaultdict(set)

    def note(_conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith(("INSERT INTO", "UPDATE")):
            table = statement.split()[2 if statement.startswith("INSERT") else 1]
            levels[table].add(cursor.connection.execute("PRAGMA synchronous").fetchone()[0])

    sa.event.listen(engine, "before_cursor_execute", note)
    try:
        subscribe(client, auth, hook.url())
        notify(client, engine, clock, 1, "Running")
        deliverer.wait_idle()
        notify(client, engine, clock, 1, "Success")
        deliverer.wait_idle()
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)
    assert len(hook.accepted()) == 2
    # the job's state, its notifications, its events and the subscription: durable at commit
    assert levels["jobs"] == levels["notifications"] == levels["events"] == {2}  # FULL
    assert levels["subscriptions"] >= {2}
    # the deliveries, their leases and results, and the attempts: the worker's
    assert levels["deliveries"] == levels["delivery_attempts"] == {1}  # NORMAL


def test_on_postgresql_a_round_costs_few_round_trips(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber,
) -> None:  # fmt: skip
    """PostgreSQL: each statement is a round trip to a server process (about 0.3 ms under
    load here, and the worker's loop does one round at a time), so a round merges what it
    can: the head with the subscriptions behind it, the fan-out's insert with the cursor's
    move, the leases counted with the subscriptions open, the lease with what the claims
    carry. A round that fans out and claims for one subscription is seven statements (it
    was eleven); an idle one, three."""
    if engine.dialect.name != "postgresql":
        pytest.skip("round trips to a PostgreSQL server")
    statements: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement.split(None, 1)[0])

    subscribe(client, auth, hook.url())
    for n in (1, 2, 3):
        notify(client, engine, clock, n, "Running")
    sa.event.listen(engine, "before_cursor_execute", note)
    try:
        done = deliverer.run_round()
        busy = statements.copy()
        deliverer.wait_idle()
        statements.clear()
        idle = deliverer.run_round()
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)
    assert (done.fanned_out, done.claimed) == (3, 2)  # 2: the subscription's cap (4 slots / 2)
    # behind_head, the insert (WITH … UPDATE), the claims' lock, leases and subscriptions,
    # the due ones, their jobs' order, the lease (UPDATE … RETURNING)
    assert busy == ["SELECT", "WITH", "SELECT", "SELECT", "SELECT", "SELECT", "UPDATE"], busy
    assert not (idle.fanned_out or idle.claimed or idle.recorded)
    assert statements == ["SELECT"] * 3, statements
    assert len(hook.accepted()) == 3


# --- results wait while new events go first ----------------------------------------------


@pytest.fixture
def patient(services: Services, clock: Clock, policy: Policy) -> Iterator[Deliverer]:
    """A deliverer whose results may wait 30 s (the default is 20 ms, too short to hold
    still between a test's rounds); 4 slots, all of them open to one subscription."""
    sender = Sender(allowed_networks=LOOPBACK, timeout=policy.timeout)
    d = Deliverer(services.engine, policy, sender, services.metrics, clock=clock, concurrency=4,
                  per_subscription=4, results_wait=30.0)  # fmt: skip
    yield d
    d.close()


def finished(d: Deliverer, n: int) -> None:
    """Until ``n`` attempts have finished and wait to be recorded."""
    deadline = time.monotonic() + 10
    while d._finished.qsize() + len(d._results) < n:
        assert time.monotonic() < deadline, "the attempts did not finish"
        time.sleep(0.01)


def test_results_wait_their_time_and_are_recorded_together_while_new_events_are_claimed(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    patient: Deliverer, hook: Subscriber,
) -> None:  # fmt: skip
    """A round that records takes longer, and its claims go out only once it commits: while
    a new event waits, the round claims it and leaves the finished attempt's result for
    later. A round that finds nothing new does not record them either: the results are
    recorded together once the oldest has waited its time or they hold half the slots (a
    round each would cost more than the rest of the pipe)."""
    subscribe(client, auth, hook.url())
    notify(client, engine, clock, 1, "Running")
    assert patient.run_round().claimed == 1
    finished(patient, 1)
    assert patient.run_round() == Round()  # nothing new, and the result not due yet
    notify(client, engine, clock, 2, "Running")

    second = patient.run_round()

    assert (second.claimed, second.recorded) == (1, 0)
    first_delivery = deliveries(engine)[0]
    assert (first_delivery["state"], first_delivery["lease_owner"]) == ("pending", patient.owner)
    finished(patient, 2)
    due = patient.run_round()  # two of the four slots
    assert (due.claimed, due.recorded) == (0, 2)
    assert [d["state"] for d in deliveries(engine)] == ["succeeded", "succeeded"]
    assert all(d["lease_owner"] is None for d in deliveries(engine))


def test_results_that_waited_their_time_are_recorded_even_while_events_come(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    patient: Deliverer, hook: Subscriber,
) -> None:  # fmt: skip
    subscribe(client, auth, hook.url())
    patient.results_wait = 0.2
    notify(client, engine, clock, 1, "Running")
    patient.run_round()
    finished(patient, 1)
    time.sleep(0.2)
    notify(client, engine, clock, 2, "Running")

    did = patient.run_round()

    assert (did.recorded, did.claimed) == (1, 1)  # one round: recorded, then claimed
    assert deliveries(engine)[0]["state"] == "succeeded"


def test_results_holding_half_the_slots_are_recorded_even_while_events_come(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    patient: Deliverer, hook: Subscriber,
) -> None:  # fmt: skip
    """Waiting results keep their slots (their leases count against the cap): with 4 slots,
    2 waiting results are as many as may wait, however young."""
    subscribe(client, auth, hook.url())
    notify(client, engine, clock, 1, "Running")
    notify(client, engine, clock, 2, "Running")
    assert patient.run_round().claimed == 2
    finished(patient, 2)
    notify(client, engine, clock, 3, "Running")

    did = patient.run_round()

    assert (did.recorded, did.claimed) == (2, 1)
    assert [d["state"] for d in deliveries(engine)][:2] == ["succeeded", "succeeded"]


def test_results_holding_half_a_subscriptions_cap_are_recorded_even_while_events_come(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    services: Services, policy: Policy, hook: Subscriber,
) -> None:  # fmt: skip
    """Waiting results count against their subscription's cap too: with 8 slots and 4 for
    one subscription, its 2 waiting results are as many as may wait, however young."""
    sender = Sender(allowed_networks=LOOPBACK, timeout=policy.timeout)
    capped = Deliverer(services.engine, policy, sender, services.metrics, clock=clock,
                       concurrency=8, per_subscription=4, results_wait=30.0)  # fmt: skip
    try:
        subscribe(client, auth, hook.url())
        notify(client, engine, clock, 1, "Running")
        assert capped.run_round().claimed == 1
        finished(capped, 1)
        notify(client, engine, clock, 2, "Running")
        assert (capped.run_round().recorded, deliveries(engine)[0]["state"]) == (0, "pending")
        finished(capped, 2)
        notify(client, engine, clock, 3, "Running")

        did = capped.run_round()

        assert (did.recorded, did.claimed) == (2, 1)
    finally:
        capped.close()


def test_a_jobs_next_event_waits_for_its_previous_ones_result_to_be_recorded(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    patient: Deliverer, hook: Subscriber,
) -> None:  # fmt: skip
    """Per-job order holds while results wait: the job's second event is not claimed before
    the first's success is recorded, while another job's new event is claimed at once."""
    subscribe(client, auth, hook.url())
    notify(client, engine, clock, 1, "Running", "Success")
    assert patient.run_round().claimed == 1
    finished(patient, 1)
    notify(client, engine, clock, 2, "Running")
    assert patient.run_round().claimed == 1  # job 2's; job 1's Success waits behind Running
    finished(patient, 2)
    patient.results_wait = 0.0
    did = patient.run_round()
    assert (did.recorded, did.claimed) == (2, 1)  # recorded, then job 1's Success claimed
    patient.wait_idle()
    events = [r.event() for r in hook.accepted()]
    job_1 = [e["type"] for e in events if e["subject"] == ci_job_id(1)]
    assert job_1 == ["com.cirelay.job.running", "com.cirelay.job.succeeded"]


def test_results_still_waiting_are_recorded_when_the_worker_stops(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    patient: Deliverer, hook: Subscriber,
) -> None:  # fmt: skip
    subscribe(client, auth, hook.url())
    notify(client, engine, clock, 1, "Running")
    patient.run_round()
    finished(patient, 1)
    notify(client, engine, clock, 2, "Running")
    assert patient.run_round().recorded == 0

    patient.close()  # SIGTERM: the attempt in flight finishes, and every result is recorded

    assert [d["state"] for d in deliveries(engine)] == ["succeeded", "succeeded"]


def test_in_the_loop_a_finished_attempt_starts_no_round_before_its_result_is_due(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    services: Services, policy: Policy, hook: Subscriber,
) -> None:  # fmt: skip
    """The worker's own loop, woken by the real waker: a finished attempt wakes it only to
    learn when its result is due (a round each would cost more than the rest of the pipe),
    and the loop's own commits do not wake it to a round. Two events: one round fans out
    and claims them, the next records both, a second later (``results_wait``); none
    between, and none after while nothing comes."""
    sender = Sender(allowed_networks=LOOPBACK, timeout=policy.timeout)
    d = Deliverer(services.engine, policy, sender, services.metrics, clock=clock, concurrency=8,
                  per_subscription=8, results_wait=1.0)  # fmt: skip
    database = store.sqlite_file(engine)
    waker = CommitWatcher(database) if database is not None else services.waker
    heard = threading.Event()
    if database is None:  # PostgreSQL: listening, and its wakes over, before the loop starts
        waker.on_events(heard.set)
    subscribe(client, auth, hook.url())
    notify(client, engine, clock, 1, "Running")
    notify(client, engine, clock, 2, "Running")
    if database is None:
        assert heard.wait(10.0), "the waker never listened"
        time.sleep(0.5)
    rounds: list[tuple[float, Round]] = []
    run_round = d.run_round

    def counted() -> Round:
        done = run_round()
        rounds.append((time.monotonic(), done))
        return done

    d.run_round = counted  # type: ignore[method-assign]
    stop = threading.Event()
    loop = threading.Thread(target=d.run, args=(stop, 5.0, waker))  # polls every 5 s
    began = time.monotonic()
    loop.start()
    try:
        time.sleep(3.0)
    finally:
        stop.set()
        d._wake.set()  # the loop sees the stop now, not at its next poll
        loop.join()
        if isinstance(waker, CommitWatcher):
            waker.close()
    assert len(hook.accepted()) == 2
    busy = [(round(at - began, 1), r) for at, r in rounds if at - began < 3.0]
    assert [(r.claimed, r.recorded) for _, r in busy] == [(2, 0), (0, 2)], busy
    assert busy[1][0] >= 1.0, busy  # the second round came when the results were due
    assert [d["state"] for d in deliveries(engine)] == ["succeeded", "succeeded"]


@pytest.mark.parametrize("head_known", [True, False], ids=["head-known", "head-read"])
def test_a_fan_out_takes_at_most_its_batch_and_stops_at_the_head_it_was_given(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock, hook: Subscriber,
    head_known: bool,
) -> None:  # fmt: skip
    """With the head known (the worker read it), the window ends there without another
    read when it is within the batch; either way a fan-out takes at most its batch."""
    sub = subscribe(client, auth, hook.url())
    for n in range(1, 6):
        notify(client, engine, clock, n, "Running")
    with engine.connect() as conn:
        head = store.events_head(conn)
        cursor = store.get_subscription(conn, sub["id"]).fanout_seq  # type: ignore[union-attr]
        waiting = conn.execute(
            sa.select(sa.func.count()).where(store.events.c.seq > cursor)
        ).scalar_one()
    notify(client, engine, clock, 6, "Running")  # after the head was read

    made = []
    while not made or made[-1]:
        with store.transaction(engine) as conn:
            subscription = store.get_subscription(conn, sub["id"])
            assert subscription is not None
            made.append(store.fan_out(conn, subscription, limit=2, now=clock(),
                                      head=head if head_known else None))  # fmt: skip
    assert waiting == 5  # one event per job
    if head_known:  # up to the head, 2 at a time; from there the window is read
        assert made == [2, 2, 1, 1, 0]
    else:  # the window is read each time: the event after the head comes in the third
        assert made == [2, 2, 2, 0]


def test_a_round_that_stops_short_says_so(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    services: Services, policy: Policy, hook: Subscriber, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A round whose fan-out window may have ended before the newest event, or whose claim
    took every free slot, says ``more``: the loop then runs the next round at once. Any other
    round lets it wait for a wake (an attempt finished, another connection committed) or
    the poll."""
    monkeypatch.setattr("app.delivery.deliverer.FANOUT_BATCH", 2)
    subscribe(client, auth, hook.url())
    for n in range(1, 6):
        notify(client, engine, clock, n, "Running")
    sender = Sender(allowed_networks=LOOPBACK, timeout=policy.timeout)
    wide = Deliverer(engine, policy, sender, services.metrics, clock=clock, concurrency=16)
    try:
        fanned = []
        while not fanned or fanned[-1][0]:
            did = wide.run_round()
            fanned.append((did.fanned_out, did.more))
        # 5 events, 2 a window: the first two windows end before the newest event
        assert fanned[:3] == [(2, True), (2, True), (1, False)]
    finally:
        wide.close()

    monkeypatch.undo()  # a batch of 1000 again
    for n in range(6, 9):
        notify(client, engine, clock, n, "Running")
    narrow = Deliverer(engine, policy, sender, services.metrics, clock=clock, concurrency=2,
                       per_subscription=2)  # fmt: skip
    try:
        did = narrow.run_round()  # 3 due, 2 slots
        assert (did.fanned_out, did.claimed, did.more) == (3, 2, True)
    finally:
        narrow.close()  # the two recorded
    spare = Deliverer(engine, policy, sender, services.metrics, clock=clock, concurrency=4)
    try:
        did = spare.run_round()  # the last one, and slots to spare
        assert (did.claimed, did.more) == (1, False)
    finally:
        spare.close()


# --- failures and retries -----------------------------------------------------------------


def test_failures_are_retried_on_the_schedule_and_every_attempt_is_recorded(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber, registry: CollectorRegistry,
) -> None:  # fmt: skip
    hook.answer = lambda n, req: Answer(500, body=b"db down") if n < 2 else Answer(200)
    sub = subscribe(client, auth, hook.url())
    notify(client, engine, clock, 1, "Running")
    start = clock()

    deliverer.wait_idle()
    (row,) = deliveries(engine)
    assert row["state"] == "pending" and row["attempts"] == 1
    # 10 s +- 20 % jitter after the first failure
    assert 8 <= (row["next_attempt_at"] - start).total_seconds() <= 12
    clock.now += timedelta(seconds=13)
    deliverer.wait_idle()
    clock.now += timedelta(seconds=25)
    deliverer.wait_idle()

    assert [r.status for r in hook.received()] == [500, 500, 200]
    assert len({r.webhook_id for r in hook.received()}) == 1
    listed = client.get(f"/v1/subscriptions/{sub['id']}/deliveries", headers=auth).json
    (delivery,) = listed["deliveries"]
    assert delivery["state"] == "succeeded" and delivery["attempts"] == 3
    history = delivery["history"]
    assert [a["status_code"] for a in history] == [500, 500, 200]
    assert [a["result"] for a in history] == ["http_error", "http_error", "success"]
    # a subscriber on loopback (an allowed network): its answer is not kept
    assert history[0]["error"] == "HTTP 500"
    assert all(a["duration_ms"] > 0 for a in history)
    assert sample(registry, "cirelay_delivery_attempts_per_delivery_sum") == 3
    assert sample(registry, "cirelay_delivery_attempts_total", result="http_error") == 2


def test_after_the_last_retry_a_delivery_is_given_up_and_the_next_of_its_job_goes(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber, registry: CollectorRegistry,
) -> None:  # fmt: skip
    hook.answer = lambda n, req: Answer(200 if req.event()["type"].endswith("succeeded") else 500)
    subscribe(client, auth, hook.url())
    notify(client, engine, clock, 1, "Running", "Success")

    for _ in range(3):  # the first attempt and two retries
        deliverer.wait_idle()
        assert [r.event()["type"] for r in hook.accepted()] == []  # Success waits its turn
        clock.now += timedelta(seconds=60)
    deliverer.wait_idle()  # the third retry fails: given up; Success goes

    kinds = [r.event()["type"].rsplit(".", 1)[1] for r in hook.received()]
    assert kinds == ["running"] * 4 + ["succeeded"]
    assert [d["state"] for d in deliveries(engine)] == ["failed", "succeeded"]
    assert sample(registry, "cirelay_deliveries_total", outcome="given_up") == 1


def test_retry_after_on_429_and_503_is_honoured(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber,
) -> None:  # fmt: skip
    hook.answer = lambda n, req: (
        Answer(429, {"Retry-After": "33"})
        if n == 0
        else (Answer(503, {"Retry-After": "7"}) if n == 1 else Answer())
    )
    subscribe(client, auth, hook.url())
    notify(client, engine, clock, 1, "Running")
    start = clock()

    deliverer.wait_idle()
    assert deliveries(engine)[0]["next_attempt_at"] == start + timedelta(seconds=33)
    clock.now += timedelta(seconds=33)
    deliverer.wait_idle()
    assert deliveries(engine)[0]["next_attempt_at"] == clock.now + timedelta(seconds=7)
    clock.now += timedelta(seconds=7)
    deliverer.wait_idle()
    assert [r.status for r in hook.received()] == [429, 503, 204]


def test_redirects_are_not_followed(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber,
) -> None:  # fmt: skip
    with Subscriber() as elsewhere:
        hook.answer = lambda n, req: Answer(307, {"Location": elsewhere.url()})
        sub = subscribe(client, auth, hook.url())
        notify(client, engine, clock, 1, "Running")
        deliverer.wait_idle()
        assert elsewhere.received() == []
    (delivery,) = client.get(f"/v1/subscriptions/{sub['id']}/deliveries", headers=auth).json[
        "deliveries"
    ]
    assert delivery["state"] == "pending" and delivery["last_status_code"] == 307
    assert "not followed" in delivery["last_error"]


def test_a_subscriber_slower_than_the_timeout_is_a_timeout(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    services: Services, hook: Subscriber, registry: CollectorRegistry,
) -> None:  # fmt: skip
    policy = Policy(schedule=(10.0,), disable_after=timedelta(hours=1), timeout=0.3)
    sender = Sender(allowed_networks=LOOPBACK, timeout=0.3)
    deliverer = Deliverer(services.engine, policy, sender, services.metrics, clock=clock)
    hook.answer = lambda n, req: Answer(delay=1.0)
    subscribe(client, auth, hook.url())
    notify(client, engine, clock, 1, "Running")
    try:
        deliverer.wait_idle()
    finally:
        deliverer.close()
    assert deliveries(engine)[0]["last_error"] == "no answer within 0.3 s"
    assert sample(registry, "cirelay_delivery_attempts_total", result="timeout") == 1


def test_a_subscriber_that_is_down_gets_connection_errors_then_everything(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber,
) -> None:  # fmt: skip
    sub = subscribe(client, auth, hook.url())
    hook.stop()
    for n in range(3):
        notify(client, engine, clock, n, "Running", "Success")
    deliverer.wait_idle()
    assert {d["state"] for d in deliveries(engine)} == {"pending"}
    assert "Connection refused" in (deliveries(engine)[0]["last_error"] or "")

    hook.start()
    for _ in range(3):
        clock.now += timedelta(seconds=60)
        deliverer.wait_idle()

    events = hook.verified(sub["secret"])
    assert len(events) == 6
    for n in range(3):  # in order per job
        kinds = [e["type"] for e in events if e["subject"] == ci_job_id(n)]
        assert kinds == ["com.cirelay.job.running", "com.cirelay.job.succeeded"]


# --- per-job order ------------------------------------------------------------------------


def test_a_jobs_later_event_waits_for_the_earlier_one_other_jobs_do_not(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber,
) -> None:  # fmt: skip
    failed_once: set[str] = set()

    def answer(n: int, req: Any) -> Answer:
        event = req.event()
        first_try = event["id"] not in failed_once
        if event["subject"] == ci_job_id(1) and event["type"].endswith("running") and first_try:
            failed_once.add(event["id"])
            return Answer(503)
        return Answer()

    hook.answer = answer
    subscribe(client, auth, hook.url())
    notify(client, engine, clock, 1, "Running", "Success")
    notify(client, engine, clock, 2, "Running", "Success")

    deliverer.wait_idle()
    got = [(r.event()["subject"], r.event()["type"]) for r in hook.accepted()]
    assert got == [(ci_job_id(2), "com.cirelay.job.running"),
                   (ci_job_id(2), "com.cirelay.job.succeeded")]  # fmt: skip
    clock.now += timedelta(seconds=15)
    deliverer.wait_idle()
    job1 = [r.event()["type"] for r in hook.accepted() if r.event()["subject"] == ci_job_id(1)]
    assert job1 == ["com.cirelay.job.running", "com.cirelay.job.succeeded"]


def test_a_jobs_later_deliveries_wait_as_long_as_its_earlier_one_s_retry(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber, policy: Policy,
) -> None:  # fmt: skip
    """Behind a delivery that waits on a retry, the job's later ones are not due before it
    (they could not go anyway): a subscriber that is down leaves nothing for a claim to
    walk past, whether the later event came before the failure or after it."""
    hook.answer = lambda n, req: Answer(503)
    subscribe(client, auth, hook.url())
    notify(client, engine, clock, 1, "Running", "Pause")
    deliverer.wait_idle()
    first, second = deliveries(engine)
    assert first["attempts"] == 1 and second["attempts"] == 0
    assert second["next_attempt_at"] == first["next_attempt_at"] > clock()

    notify(client, engine, clock, 1, "Success")  # fanned out while the first one waits
    deliverer.wait_idle()
    assert {d["next_attempt_at"] for d in deliveries(engine)} == {first["next_attempt_at"]}
    with engine.connect() as conn:
        assert not store.has_claimable(conn, clock(), per_subscription=2)

    clock.now = first["next_attempt_at"]  # the retry fails again: the others wait on
    deliverer.wait_idle()
    again, *later = deliveries(engine)
    assert again["attempts"] == 2 and again["next_attempt_at"] > clock()
    assert [d["next_attempt_at"] for d in later] == [again["next_attempt_at"]] * 2

    hook.answer = lambda n, req: Answer()
    clock.now = again["next_attempt_at"]
    deliverer.wait_idle()
    types = [r.event()["type"] for r in hook.accepted()]
    assert types == ["com.cirelay.job.running", "com.cirelay.job.paused",
                     "com.cirelay.job.succeeded"]  # fmt: skip
    assert {d["state"] for d in deliveries(engine)} == {"succeeded"}


# --- disabling ----------------------------------------------------------------------------


def test_410_gone_disables_the_subscription_and_emits_the_operator_event(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber, registry: CollectorRegistry,
) -> None:  # fmt: skip
    with Subscriber() as operator:
        ops = subscribe(client, auth, operator.url(), event_types=["com.cirelay.subscription.*"])
        hook.answer = lambda n, req: Answer(410)
        sub = subscribe(client, auth, hook.url(), event_types=["com.cirelay.job.*"])
        notify(client, engine, clock, 1, "Running", "Success")

        deliverer.wait_idle()

        fetched = client.get(f"/v1/subscriptions/{sub['id']}", headers=auth).json
        assert fetched["enabled"] is False and "410 Gone" in fetched["disabled_reason"]
        assert len(hook.received()) == 1  # nothing more after the 410
        (event,) = operator.verified(ops["secret"])
    assert event["type"] == SUBSCRIPTION_DISABLED and event["subject"] == sub["id"]
    assert event.data["url"] == hook.url()
    assert sample(registry, "cirelay_subscriptions_disabled") == 1
    assert sample(registry, "cirelay_deliveries_total", outcome="subscription_disabled") == 1
    # the operator event is in the cursor API too
    listed = client.get("/v1/events?type=com.cirelay.subscription.disabled", headers=auth).json
    assert [e["subject"] for e in listed["events"]] == [sub["id"]]


def test_a_flapping_subscriber_is_disabled_after_the_failing_period(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    services: Services, hook: Subscriber,
) -> None:  # fmt: skip
    """Up for one request in three: deliveries keep needing retries, so the subscription
    counts as failing from the first failure until the period ends, and is disabled."""
    policy = Policy(schedule=(5.0,) * 20, disable_after=timedelta(minutes=10), timeout=2.0)
    sender = Sender(allowed_networks=LOOPBACK, timeout=2.0)
    deliverer = Deliverer(services.engine, policy, sender, services.metrics, clock=clock,
                          rng=random.Random(3))  # fmt: skip
    hook.answer = lambda n, req: Answer(200 if n % 3 == 2 else 503)
    sub = subscribe(client, auth, hook.url())
    try:
        for minute in range(15):
            notify(client, engine, clock, minute, "Running")
            deliverer.wait_idle()
            clock.now += timedelta(seconds=30)
            deliverer.wait_idle()
            clock.now += timedelta(seconds=30)
            fetched = client.get(f"/v1/subscriptions/{sub['id']}", headers=auth).json
            if not fetched["enabled"]:
                break
    finally:
        deliverer.close()
    assert not fetched["enabled"], "a flapping subscriber must be disabled"
    assert 10 <= minute <= 12
    assert fetched["disabled_reason"].startswith("deliveries failing since")
    assert len(hook.accepted()) >= 5  # it did receive some meanwhile
    events = client.get("/v1/events?type=com.cirelay.subscription.*", headers=auth).json
    assert [e["subject"] for e in events["events"]] == [sub["id"]]


def test_a_subscriber_that_recovers_is_healthy_again(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber,
) -> None:  # fmt: skip
    hook.answer = lambda n, req: Answer(503 if n == 0 else 200)
    sub = subscribe(client, auth, hook.url())
    path = f"/v1/subscriptions/{sub['id']}"
    notify(client, engine, clock, 0, "Running")
    deliverer.wait_idle()
    assert client.get(path, headers=auth).json["failing_since"] is not None
    clock.now += timedelta(seconds=15)
    for n in range(1, 9):  # the retry and 8 more: 9 in a row
        notify(client, engine, clock, n, "Running")
        deliverer.wait_idle()
    assert client.get(path, headers=auth).json["failing_since"] is not None
    notify(client, engine, clock, 9, "Running")  # the 10th
    deliverer.wait_idle()
    assert client.get(path, headers=auth).json["failing_since"] is None


def test_a_subscriber_with_few_events_is_healthy_after_a_quiet_period(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber, policy: Policy,
) -> None:  # fmt: skip
    hook.answer = lambda n, req: Answer(503 if n == 0 else 200)
    sub = subscribe(client, auth, hook.url())
    notify(client, engine, clock, 0, "Running")
    deliverer.wait_idle()
    clock.now += policy.disable_after / 4 + timedelta(seconds=1)
    deliverer.wait_idle()  # the retry succeeds, long after the failure
    fetched = client.get(f"/v1/subscriptions/{sub['id']}", headers=auth).json
    assert fetched["failing_since"] is None and fetched["enabled"]


def test_re_enabling_resumes_pending_deliveries(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber,
) -> None:  # fmt: skip
    hook.answer = lambda n, req: Answer(410 if n == 0 else 200)
    sub = subscribe(client, auth, hook.url())
    notify(client, engine, clock, 1, "Running", "Success")
    deliverer.wait_idle()
    assert deliveries(engine)[1]["state"] == "pending"  # waits while disabled

    path = f"/v1/subscriptions/{sub['id']}"
    assert client.patch(path, json={"enabled": True}, headers=auth).json["enabled"]
    deliverer.wait_idle()
    assert [r.event()["type"] for r in hook.accepted()] == ["com.cirelay.job.succeeded"]


# --- SSRF at connect ----------------------------------------------------------------------


def test_the_address_is_checked_again_when_connecting() -> None:
    """DNS rebinding: the name resolved to a public address when the URL was saved and to
    loopback now. The sender refuses without connecting."""
    with Subscriber() as hook:
        sender = Sender(allowed_networks=(), timeout=1.0, resolver=lambda host, port: ["127.0.0.1"])
        report = sender.post(f"http://hooks.example.com:{hook.port}/", b"{}", {})
        assert report.result == "forbidden_address"
        assert "127.0.0.1" in (report.error or "")
        assert hook.received() == []

        for address in ("169.254.169.254", "10.0.0.5", "::1", "::ffff:127.0.0.1", "0.0.0.0"):
            sender = Sender(allowed_networks=(), timeout=1.0,
                            resolver=lambda host, port, a=address: [a])  # fmt: skip
            assert sender.post("http://x.example/", b"{}", {}).result == "forbidden_address"

        # every address the name resolves to must be allowed, not just the first
        sender = Sender(allowed_networks=(), timeout=1.0,
                        resolver=lambda host, port: ["93.184.216.34", "127.0.0.1"])  # fmt: skip
        assert sender.post("http://x.example/", b"{}", {}).result == "forbidden_address"

        # an allowed network lets it through, to the address that was checked
        sender = Sender(allowed_networks=LOOPBACK, timeout=1.0,
                        resolver=lambda host, port: ["127.0.0.1"])  # fmt: skip
        report = sender.post(f"http://hooks.example.com:{hook.port}/p?q=1", b"{}", {})
        assert report.result == "success"
        (request,) = hook.received()
        assert request.headers["host"] == f"hooks.example.com:{hook.port}"
        assert request.path == "/p?q=1"


# --- several workers ----------------------------------------------------------------------


@pytest.mark.postgresql
def test_two_workers_share_the_work_and_send_nothing_twice(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    services: Services, policy: Policy, hook: Subscriber,
) -> None:  # fmt: skip
    if engine.dialect.name != "postgresql":
        pytest.skip("FOR UPDATE SKIP LOCKED: PostgreSQL")
    hook.answer = lambda n, req: Answer(delay=0.01)
    sub = subscribe(client, auth, hook.url())
    for n in range(40):
        notify(client, engine, clock, n, "Running", "Success")
    sender = Sender(allowed_networks=LOOPBACK, timeout=2.0)
    workers = [
        Deliverer(services.engine, policy, sender, services.metrics, clock=clock, owner=f"w{i}")
        for i in range(2)
    ]

    def drive(worker: Deliverer) -> None:
        worker.wait_idle(timeout=60)

    threads = [threading.Thread(target=drive, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in workers:
        w.close()

    ids = [r.webhook_id for r in hook.received()]
    assert len(ids) == 80 and len(set(ids)) == 80
    events = hook.verified(sub["secret"])
    for n in range(40):
        kinds = [e["type"] for e in events if e["subject"] == ci_job_id(n)]
        assert kinds == ["com.cirelay.job.running", "com.cirelay.job.succeeded"]
    with engine.connect() as conn:
        owners = conn.execute(sa.select(store.delivery_attempts.c.delivery_id)).scalars().all()
    assert len(owners) == 80


def test_a_lapsed_lease_lets_another_worker_deliver_with_the_same_webhook_id(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    services: Services, policy: Policy, hook: Subscriber,
) -> None:  # fmt: skip
    """A worker that claimed a delivery and died: after the lease, another one sends it."""
    subscribe(client, auth, hook.url())
    notify(client, engine, clock, 1, "Running")
    sender = Sender(allowed_networks=LOOPBACK, timeout=2.0)
    dead = Deliverer(services.engine, policy, sender, services.metrics, clock=clock, owner="dead")
    assert dead.run_round().claimed == 1
    hook.wait_for(1)  # it got as far as sending, then died before recording
    dead.close(wait=False)

    alive = Deliverer(services.engine, policy, sender, services.metrics, clock=clock)
    alive.wait_idle()
    assert len(hook.received()) == 1  # the lease still holds
    clock.now += policy.lease + timedelta(seconds=1)
    alive.wait_idle()
    alive.close()
    first, second = hook.received()
    assert first.webhook_id == second.webhook_id
    assert deliveries(engine)[0]["state"] == "succeeded"


@pytest.mark.postgresql
@pytest.mark.outbox_unchecked  # placeholder events: the claim's mechanics, not the catalogue
def test_a_claim_over_a_burst_the_planner_has_no_statistics_for_answers_in_time(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock, hook: Subscriber,
) -> None:  # fmt: skip
    """A burst lands in a table PostgreSQL last saw empty (no ANALYZE since): 20,000 pending
    deliveries, two per job. The claim still answers within the statement timeout (1.5 s, the
    default), with each job's first delivery only. A claim that joined the backlog with
    itself was planned as a nested loop here and was cancelled every round: the worker
    delivered nothing."""
    if engine.dialect.name != "postgresql":
        pytest.skip("the planner without statistics: PostgreSQL")
    sub = subscribe(client, auth, hook.url())
    now = clock()
    jobs = 10_000
    events = [
        {"id": f"evt_burst_{n}", "type": "com.cirelay.test", "source": "/test",
         "job_id": f"job_{n % jobs:05d}", "time": now, "data": {}}
        for n in range(2 * jobs)
    ]  # fmt: skip
    with store.transaction(engine) as conn:
        conn.execute(sa.insert(store.events), events)
        seqs = conn.execute(
            sa.select(store.events.c.seq, store.events.c.job_id).order_by(store.events.c.seq)
        ).all()
        conn.execute(sa.insert(store.deliveries), [
            {"subscription_id": sub["id"], "event_seq": seq, "order_key": job_id,
             "state": "pending", "attempts": 0, "next_attempt_at": now, "origin": "fanout",
             "created_at": now}
            for seq, job_id in seqs
        ])  # fmt: skip

    with store.transaction(engine) as conn:  # statement_timeout = 1.5 s, as in production
        claims = store.claim_deliveries(
            conn, now=now, owner="w1", lease_until=now + timedelta(minutes=1), limit=16,
            per_subscription=16,
        )  # fmt: skip

    assert len(claims) == 16
    assert [c.event.id for c in claims] == [f"evt_burst_{n}" for n in range(16)]


# --- replay -------------------------------------------------------------------------------


def test_replay_one_event_or_everything_since_a_time(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber,
) -> None:  # fmt: skip
    sub = subscribe(client, auth, hook.url(), event_types=["com.cirelay.job.*"])
    notify(client, engine, clock, 1, "Running")
    since = clock()
    clock.now += timedelta(minutes=1)
    notify(client, engine, clock, 1, "Success")
    notify(client, engine, clock, 2, "Running")
    deliverer.wait_idle()
    first = hook.received()
    assert len(first) == 3

    path = f"/v1/subscriptions/{sub['id']}/replay"
    one = client.post(path, json={"event_id": first[0].webhook_id}, headers=auth)
    assert one.status_code == 202 and one.json["deliveries"] == 1
    deliverer.wait_idle()
    assert hook.received()[3].webhook_id == first[0].webhook_id

    stamp = (since + timedelta(seconds=30)).isoformat()
    many = client.post(path, json={"since": stamp}, headers=auth)
    assert many.status_code == 202 and many.json["deliveries"] == 2
    deliverer.wait_idle()
    later = [r.webhook_id for r in first if r.event()["time"] > stamp]
    assert len(later) == 2
    assert sorted(r.webhook_id for r in hook.received()[4:]) == sorted(later)
    hook.verified(sub["secret"])  # each replay signed afresh


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 422),
        ({"event_id": "evt_x", "since": "2024-01-01T00:00:00Z"}, 422),
        ({"since": "yesterday"}, 422),
        ({"since": "2024-01-01T00:00:00"}, 422),  # no offset
        ({"event_id": 5}, 422),
        ({"event_id": "evt_nope"}, 404),
        ({"until": "x"}, 422),
        ([], 422),
    ],
)
def test_replay_refuses_what_it_cannot_do(
    client: FlaskClient, auth: dict[str, str], hook: Subscriber, body: Any, status: int
) -> None:
    sub = subscribe(client, auth, hook.url())
    response = client.post(f"/v1/subscriptions/{sub['id']}/replay", json=body, headers=auth)
    assert response.status_code == status, response.json
    assert response.json["error"]


def test_replay_of_a_disabled_or_unknown_subscription(
    client: FlaskClient, auth: dict[str, str], hook: Subscriber
) -> None:
    sub = subscribe(client, auth, hook.url(), enabled=False)
    body = {"since": "2024-01-01T00:00:00Z"}
    assert client.post(f"/v1/subscriptions/{sub['id']}/replay", json=body,
                       headers=auth).status_code == 409  # fmt: skip
    assert client.post("/v1/subscriptions/sub_x/replay", json=body,
                       headers=auth).status_code == 404  # fmt: skip
    assert client.post(f"/v1/subscriptions/{sub['id']}/replay", json=body).status_code == 401


def test_deliveries_listing_validates_its_query(
    client: FlaskClient, auth: dict[str, str], hook: Subscriber
) -> None:
    sub = subscribe(client, auth, hook.url())
    path = f"/v1/subscriptions/{sub['id']}/deliveries"
    assert client.get(path + "?state=lost", headers=auth).status_code == 400
    assert client.get(path + "?limit=0", headers=auth).status_code == 400
    assert client.get(path + "?before=x", headers=auth).status_code == 400
    assert client.get(path + "?state=pending&limit=5", headers=auth).json["deliveries"] == []
    assert client.get("/v1/subscriptions/sub_x/deliveries", headers=auth).status_code == 404


# --- metrics from the database --------------------------------------------------------------


def test_backlog_size_and_age_are_read_from_the_database(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber, registry: CollectorRegistry,
) -> None:  # fmt: skip
    hook.answer = lambda n, req: Answer(500)
    subscribe(client, auth, hook.url())
    notify(client, engine, clock, 1, "Running", "Success")
    deliverer.wait_idle()
    clock.now += timedelta(seconds=42)

    assert sample(registry, "cirelay_delivery_backlog") == 2
    assert sample(registry, "cirelay_delivery_backlog_oldest_age_seconds") == 42
    text = client.get("/metrics").text
    assert "cirelay_delivery_backlog 2.0" in text
    assert "cirelay_subscriptions_disabled 0.0" in text


def test_a_long_attempt_keeps_its_lease_so_no_other_worker_sends_it_meanwhile(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    services: Services, policy: Policy, hook: Subscriber,
) -> None:  # fmt: skip
    """A subscriber that trickles its answer can hold an attempt past the lease; the worker
    renews the leases of its attempts in flight, so another worker does not take them over
    while it lives (a dead one stops renewing: the test above)."""
    import threading

    release = threading.Event()
    hook.answer = lambda n, req: (release.wait(10), Answer())[1]
    subscribe(client, auth, hook.url())
    notify(client, engine, clock, 1, "Running")
    sender = Sender(allowed_networks=LOOPBACK, timeout=30)
    slow = Deliverer(services.engine, policy, sender, services.metrics, clock=clock, owner="slow")
    other = Deliverer(services.engine, policy, sender, services.metrics, clock=clock, owner="other")
    try:
        assert slow.run_round().claimed == 1
        clock.now += policy.lease * 0.9
        slow._leased = dict.fromkeys(slow._leased, 0.0)  # claimed long ago, in monotonic time
        slow.run_round()  # renews
        assert deliveries(engine)[0]["lease_until"] == clock.now + policy.lease
        clock.now += policy.lease * 0.9  # past the first lease, within the renewed one
        assert other.run_round().claimed == 0
    finally:
        release.set()
        slow.wait_idle()
        slow.close()
        other.close()
    assert len(hook.received()) == 1 and deliveries(engine)[0]["state"] == "succeeded"


def test_finished_deliveries_past_their_retention_are_pruned_pending_ones_never(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber, services: Services,
) -> None:  # fmt: skip
    from app import worker

    hook.answer = lambda n, req: Answer(200 if req.event()["subject"] == ci_job_id(1) else 500)
    subscribe(client, auth, hook.url())
    notify(client, engine, clock, 1, "Running")  # delivered
    notify(client, engine, clock, 2, "Running")  # failing: stays pending
    deliverer.wait_idle()
    clock.now += timedelta(days=services.settings.delivery_retention_days - 1)
    assert worker.prune(services) == 0  # not old enough yet
    clock.now += timedelta(days=2)
    assert worker.prune(services) == 1
    (left,) = deliveries(engine)
    assert left["state"] == "pending" and left["order_key"] == "job_0002"
    with engine.connect() as conn:
        attempts = conn.execute(sa.select(store.delivery_attempts.c.delivery_id)).scalars().all()
    assert attempts == [left["id"]]


# --- a slow subscriber: a deadline per attempt, a cap per subscription ----------------------


class DripFeeder:
    """A subscriber that reads the request, then answers one byte every 0.1 s for
    ``seconds``: each read gets a byte long before any read timeout."""

    def __init__(self, seconds: float = 20.0) -> None:
        self.seconds = seconds
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65536)
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
            until = time.monotonic() + self.seconds
            for byte in answer:
                if time.monotonic() > until:
                    break
                conn.sendall(bytes([byte]))
                time.sleep(0.1)

    def close(self) -> None:
        self.listener.close()


def test_a_drip_feeding_subscriber_s_attempt_ends_at_its_deadline() -> None:
    feeder = DripFeeder(seconds=20.0)
    sender = Sender(allowed_networks=LOOPBACK, timeout=1.0)
    try:
        report = sender.post(f"http://127.0.0.1:{feeder.port}/hook", b"{}", {})
    finally:
        feeder.close()
    assert report.result is AttemptResult.TIMEOUT
    assert report.error == "no answer within 1 s"
    assert report.duration_ms < 10_000  # the deadline (1 s), far from the 20 s of dripping


def test_urllib3_logs_no_subscriber_path_and_no_traceback_for_malformed_headers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """urllib3 logs each request's path at DEBUG, and warns of malformed headers (a hostile
    subscriber's, or an answer the deadline cut short) with the path and a traceback; the
    path may hold the subscriber's token. What cirelay logs keeps neither."""
    listener = socket.create_server(("127.0.0.1", 0))

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nno colon here\r\n\r\n")

    threading.Thread(target=answer, daemon=True).start()
    sender = Sender(allowed_networks=LOOPBACK, timeout=5.0)
    port = listener.getsockname()[1]
    url = f"http://127.0.0.1:{port}/hooks/s3cret-path?token=s3cret-query"
    with caplog.at_level(logging.DEBUG, logger="urllib3"), listener:
        report = sender.post(url, b"{}", {})
    assert report.status_code == 200
    lines = [r for r in caplog.records if "Failed to parse headers" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO, caplog.text
    assert "MissingHeaderBodySeparatorDefect" in lines[0].getMessage()
    assert f"url=http://127.0.0.1:{port}/…" in lines[0].getMessage()  # the host, no path
    assert "s3cret" not in caplog.text and "Traceback" not in caplog.text, caplog.text
    assert not any(r.exc_info for r in caplog.records)


def test_a_slow_subscriber_holds_at_most_its_cap_while_a_healthy_one_is_delivered(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    services: Services, hook: Subscriber,
) -> None:  # fmt: skip
    policy = Policy(schedule=(10.0,), disable_after=timedelta(hours=1), timeout=30.0)
    sender = Sender(allowed_networks=LOOPBACK, timeout=30.0)
    deliverer = Deliverer(services.engine, policy, sender, services.metrics, clock=clock,
                          concurrency=4, per_subscription=2)  # fmt: skip
    release = threading.Event()
    lock = threading.Lock()
    held = [0, 0]  # now, most at once

    def stuck(n: int, request: Request) -> Answer:
        with lock:
            held[0] += 1
            held[1] = max(held)
        release.wait(30)
        with lock:
            held[0] -= 1
        return Answer()

    def rounds_until(done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 20
        while not done() and time.monotonic() < deadline:
            deliverer.run_round()
            time.sleep(0.02)

    with Subscriber() as slow:
        slow.answer = stuck
        subscribe(client, auth, slow.url())
        for n in range(8):
            notify(client, engine, clock, n, "Running")
        try:
            rounds_until(lambda: held[0] >= 2)  # the slow one's attempts are stuck
            subscribe(client, auth, hook.url())
            for n in range(10, 18):
                notify(client, engine, clock, n, "Running")
            rounds_until(lambda: len(hook.accepted()) == 8)
            delivered_meanwhile = len(hook.accepted())
            at_once = held[1]
        finally:
            release.set()
        deliverer.wait_idle()
        deliverer.close()
        assert len(slow.accepted()) == 16  # the slow one gets everything too, in the end
    assert delivered_meanwhile == 8
    assert at_once == 2


def test_an_unreachable_subscriber_is_paused_and_probed_one_delivery_at_a_time(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    services: Services, policy: Policy, hook: Subscriber,
) -> None:  # fmt: skip
    """Connections refused: the deliveries in flight fail, then the subscription is paused
    until the next probe (the first retry's delay), and then one delivery at a time goes (a
    probe) instead of each being refused in turn. The probe comes that often however far
    the probed delivery is into its backoff, and the paused subscription's new events are
    fanned out only when its pause ends. When the probe succeeds the pause ends, everything
    due goes, and the retries still waiting on their backoff are brought forward, in event
    order."""
    sender = Sender(allowed_networks=LOOPBACK, timeout=policy.timeout)
    deliverer = Deliverer(services.engine, policy, sender, services.metrics, clock=clock,
                          concurrency=16, rng=random.Random(7))  # fmt: skip
    sub = subscribe(client, auth, hook.url())
    hook.stop()
    for n in range(6):
        notify(client, engine, clock, n, "Running")
    deliverer.wait_idle()  # all six in flight at once, all refused
    assert {d["attempts"] for d in deliveries(engine)} == {1}
    paused_until = datetime.fromisoformat(subscription(client, auth, sub["id"])["paused_until"])
    assert clock() + timedelta(seconds=8) <= paused_until <= clock() + timedelta(seconds=12)

    clock.now += timedelta(seconds=13)  # every retry (10 s +- 20 %) is due: one goes
    deliverer.wait_idle()
    assert sorted(d["attempts"] for d in deliveries(engine)) == [1, 1, 1, 1, 1, 2]
    probe = max(deliveries(engine), key=lambda d: d["attempts"])
    assert probe["next_attempt_at"] >= clock() + timedelta(seconds=16)  # 20 s +- 20 %
    paused_until = datetime.fromisoformat(subscription(client, auth, sub["id"])["paused_until"])
    # the next probe in 10 s +- 20 % again, not at this one's retry
    assert clock() + timedelta(seconds=8) <= paused_until <= clock() + timedelta(seconds=12)

    hook.start()
    notify(client, engine, clock, 99, "Running")  # a new event waits for the pause's end too
    deliverer.wait_idle()
    assert hook.accepted() == []
    assert len(deliveries(engine)) == 6  # and is fanned out only then (no round pays for it)
    clock.now = paused_until  # the probe succeeds: the pause ends and the rest goes
    deliverer.wait_idle()
    deliverer.close()
    assert subscription(client, auth, sub["id"])["paused_until"] is None
    assert {d["state"] for d in deliveries(engine)} == {"succeeded"}
    assert len(hook.verified(sub["secret"])) == 7


def test_a_new_url_ends_the_pause_at_once(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber,
) -> None:  # fmt: skip
    """The deliveries the pause held back go to the new address at once; those that failed
    keep their retry."""
    sub = subscribe(client, auth, hook.url())
    hook.stop()
    for n in range(3):
        notify(client, engine, clock, n, "Running")
    deliverer.wait_idle()  # two refused (the cap of 4 slots), then paused: one never tried
    assert subscription(client, auth, sub["id"])["paused_until"] is not None
    untried = [d for d in deliveries(engine) if d["attempts"] == 0]
    assert len(untried) == 1
    with Subscriber() as moved:
        path = f"/v1/subscriptions/{sub['id']}"
        answer = client.patch(path, json={"url": moved.url()}, headers=auth)
        assert answer.status_code == 200 and answer.json["paused_until"] is None
        deliverer.wait_idle()  # the test clock has not moved
        assert len(moved.accepted()) == 1
    states = {d["id"]: d["state"] for d in deliveries(engine)}
    assert states.pop(untried[0]["id"]) == "succeeded"
    assert set(states.values()) == {"pending"}  # the refused ones wait on their retry


def test_a_subscriber_that_answers_again_has_its_waiting_retries_brought_forward_in_order(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    services: Services, policy: Policy, hook: Subscriber,
) -> None:  # fmt: skip
    sender = Sender(allowed_networks=LOOPBACK, timeout=policy.timeout)
    deliverer = Deliverer(services.engine, policy, sender, services.metrics, clock=clock,
                          concurrency=16, rng=random.Random(7))  # fmt: skip
    deliverer.recovery_rate = 100.0  # one every 10 ms
    sub = subscribe(client, auth, hook.url())
    hook.stop()
    for n in range(6):
        notify(client, engine, clock, n, "Running")
    deliverer.wait_idle()  # all six refused at once: retries at 8 to 12 s, with jitter
    assert subscription(client, auth, sub["id"])["paused_until"] is not None
    # the next probe is drawn apart from the retries (10 s +- 20 % too): put it before them
    later = deliveries(engine)
    paused_until = min(d["next_attempt_at"] for d in later) - timedelta(seconds=1)
    with engine.begin() as conn:
        conn.execute(
            sa.update(store.subscriptions)
            .where(store.subscriptions.c.id == sub["id"])
            .values(paused_until=paused_until)
        )

    hook.start()
    notify(client, engine, clock, 99, "Running")
    clock.now = paused_until  # the probe (the oldest due: the new event) succeeds
    deliverer.wait_idle()
    pending = sorted(
        (d for d in deliveries(engine) if d["state"] == "pending"),
        key=lambda d: d["next_attempt_at"],
    )
    # brought forward one every 10 ms, in event order: the first went at once, the rest are
    # due within a second rather than on their backoff
    waiting = sorted(d["id"] for d in later)
    assert [d["id"] for d in pending] == waiting[len(waiting) - len(pending) :]
    assert len(pending) < len(waiting)
    assert all(d["next_attempt_at"] <= clock() + timedelta(seconds=1) for d in pending)
    clock.now += timedelta(seconds=1)  # not the rest of their backoff
    deliverer.wait_idle()
    deliverer.close()

    assert {d["state"] for d in deliveries(engine)} == {"succeeded"}
    assert len(hook.verified(sub["secret"])) == 7


def subscription(client: FlaskClient, auth: dict[str, str], ident: str) -> dict[str, Any]:
    response = client.get(f"/v1/subscriptions/{ident}", headers=auth)
    assert response.status_code == 200
    return dict(response.json)


def test_a_subscription_deleted_while_its_delivery_is_in_flight_is_recorded_without_error(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber,
) -> None:  # fmt: skip
    started, release = threading.Event(), threading.Event()

    def held(n: int, request: Request) -> Answer:
        started.set()
        release.wait(10)
        return Answer()

    hook.answer = held
    sub = subscribe(client, auth, hook.url())
    notify(client, engine, clock, 1, "Running")
    deliverer.run_round()
    assert started.wait(10)
    assert client.delete(f"/v1/subscriptions/{sub['id']}", headers=auth).status_code < 300
    release.set()

    deliverer.wait_idle()  # the attempt's record does not fail the round

    assert deliveries(engine) == []


@pytest.mark.parametrize("value", ["²", "١٢", "-5", "soon", "12.5"])
def test_an_unreadable_retry_after_is_ignored_not_raised(value: str) -> None:
    """delta-seconds are ASCII digits (RFC 9110); anything else that is not a date is None."""
    assert parse_retry_after(value) is None
