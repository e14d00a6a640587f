"""Webhook delivery end to end, as real processes: the emulator runs jobs, `cirelay serve`
records their notifications, `cirelay worker` delivers the events to a real subscriber.

- a worker killed (SIGKILL) in the middle of a delivery: after its lease lapses a new worker
  sends the event again, with the same ``webhook-id``;
- a subscriber that is down, then up: every event arrives, in order per job;
- on SQLite, a commit by the service wakes the worker at once (its commit watcher), however
  seldom it polls.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import job_json
from tests.e2e_stack import Stack, poll
from tests.subscriber import Answer, Request, Subscriber

pytestmark = pytest.mark.slow

ENV = {
    "CIRELAY_DELIVERY_ALLOWED_NETWORKS": "127.0.0.0/8",
    "CIRELAY_DELIVERY_TIMEOUT_SECONDS": "2",  # a lease is the timeout + 5 s
    "CIRELAY_DELIVERY_RETRY_SCHEDULE": "0.5,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1",
}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    with Stack.start(tmp_path, ENV) as running:
        try:
            yield running
        except BaseException:
            print(running.tails())
            raise


def subscribe(stack: Stack, url: str) -> dict[str, Any]:
    body = {"url": url, "event_types": ["com.cirelay.job.*"]}
    response = stack.http.post(f"{stack.base}/v1/subscriptions", json=body, headers=stack.auth)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def in_order_per_job(stack: Stack, hook: Subscriber, secret: str, jobs: list[str]) -> None:
    """Every event of each job arrived, each verified, first copies in sequence order."""
    events = hook.verified(secret)
    first_seen: dict[str, Any] = {}
    for event in events:
        first_seen.setdefault(event["id"], event)
    log = stack.http.get(f"{stack.base}/v1/events?limit=500", headers=stack.auth).json()
    for ci_job_id in jobs:
        arrived = [int(e["sequence"]) for e in first_seen.values() if e["subject"] == ci_job_id]
        recorded = [int(e["sequence"]) for e in log["events"] if e["subject"] == ci_job_id]
        assert arrived == recorded, (ci_job_id, arrived, recorded)
        assert len(recorded) >= 2  # submitted, and a terminal state at least


def test_a_worker_killed_mid_delivery_is_taken_over_with_the_same_webhook_id(
    stack: Stack,
) -> None:
    in_flight = threading.Event()
    held: list[str] = []

    def answer(n: int, request: Request) -> Answer:
        if not held:  # the first delivery hangs until the worker is dead
            held.append(request.webhook_id)
            in_flight.set()
            return Answer(delay=3.0)
        return Answer()

    with Subscriber() as hook:
        hook.answer = answer
        sub = subscribe(stack, hook.url())
        job = stack.submit(job_json())

        assert in_flight.wait(30), "no delivery started"
        worker = next(p for p in stack.processes if p.name == "worker")
        worker.popen.send_signal(signal.SIGKILL)
        worker.popen.wait()
        stack._spawn("worker-2", ["worker"])
        done = stack.wait_final(job["id"])

        def delivered_again() -> list[Request] | None:
            copies = [r for r in hook.received() if r.webhook_id == held[0]]
            return copies if len(copies) >= 2 else None

        copies = poll("the held event to be delivered again", delivered_again, deadline=40)
        poll("the final event", lambda: any(
            r.event()["data"]["state"] == "Success" for r in hook.accepted()
        ))  # fmt: skip
        in_order_per_job(stack, hook, sub["secret"], [done["ci_job_id"]])
    assert copies[0].webhook_id == copies[1].webhook_id
    assert copies[0].event() == copies[1].event()  # the same event, signed afresh


def test_a_subscriber_down_then_up_gets_everything_in_order_per_job(stack: Stack) -> None:
    with Subscriber() as hook:
        sub = subscribe(stack, hook.url())
        hook.stop()
        jobs = [stack.submit(job_json(user_data=f"order-{n}")) for n in range(5)]
        finished = [stack.wait_final(job["id"]) for job in jobs]

        def failed_attempts() -> bool:
            return stack.metric(
                "cirelay_delivery_attempts_total", '{result="connection_error"}'
            ) >= 5

        poll("failed attempts while the subscriber is down", failed_attempts)
        hook.start()
        def all_final() -> bool:
            finals = {r.event()["subject"] for r in hook.accepted()
                      if r.event()["data"]["state"] == "Success"}  # fmt: skip
            return len(finals) == len(finished)

        poll("every job's final event", all_final, deadline=60)
        in_order_per_job(stack, hook, sub["secret"], [job["ci_job_id"] for job in finished])
        delivered = len({r.webhook_id for r in hook.accepted()})

        def all_counted() -> bool:  # counted once recorded, up to 20 ms after the 2xx
            return stack.metric("cirelay_deliveries_total", '{outcome="delivered"}') == delivered

        poll("every delivery counted", all_counted, deadline=10)
        assert stack.metric("cirelay_delivery_backlog") == 0


def test_on_sqlite_a_commit_by_the_service_wakes_the_worker_however_seldom_it_polls(
    tmp_path: Path,
) -> None:
    """SQLite has no NOTIFY: the worker's commit watcher sees the service's commits (another
    process) and wakes the deliverer, which here would otherwise look only every 30 s."""
    slow_poll = ENV | {"CIRELAY_DELIVERY_POLL_SECONDS": "30"}
    with Stack.start(tmp_path, slow_poll) as stack, Subscriber() as hook:
        subscribe(stack, hook.url())
        time.sleep(1.0)  # the worker's first rounds are over: it waits on its poll now
        job = stack.submit(job_json())
        hook.wait_for(1, timeout=10)  # a third of the poll: only a wake gets it there
        assert hook.accepted()[0].event()["subject"] == stack.wait_final(job["id"])["ci_job_id"]
