"""What reaches a real webhook from a live ``cirelay serve`` keeps to the AsyncAPI document:
the body is the message of its type (the CloudEvent envelope and the catalogue's ``data``),
the headers are the message's headers. The test event among them: it is sent outside the
outbox, so the outbox check (tests/contract/outbox.py) never sees it."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from app.contract import asyncapi
from app.contract.catalogue import EVENT_TYPES
from tests.conftest import job_json
from tests.e2e_stack import Stack, poll
from tests.subscriber import Request, Subscriber

pytestmark = pytest.mark.slow

TEST_EVENT = "com.cirelay.subscription.test"


def message_problems(request: Request) -> list[str]:
    """Why a webhook request breaks the AsyncAPI message of its type ([] when it does not)."""
    event = request.event()
    messages = asyncapi()["components"]["messages"]
    found = [m for m in messages.values() if m["name"] == event.get("type")]
    if not found:
        return [f"type {event.get('type')!r} is not a message of the AsyncAPI document"]
    (message,) = found
    problems: list[Any] = []
    for schema, value in ((message["payload"], event), (message["headers"], request.headers)):
        checker = Draft202012Validator(schema, format_checker=FormatChecker())
        problems += [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                     for e in checker.iter_errors(value)]  # fmt: skip
    return problems


def test_the_test_event_a_webhook_receives_keeps_to_the_document(
    live: Stack, subscriber: Subscriber
) -> None:
    created = live.http.post(
        f"{live.base}/v1/subscriptions", json={"url": subscriber.url("/channel-test")},
        headers=live.auth, timeout=10,
    ).json()  # fmt: skip
    answer = live.http.post(
        f"{live.base}/v1/subscriptions/{created['id']}/test", headers=live.auth, timeout=30
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["result"] == "success"
    (received,) = [r for r in subscriber.received() if r.path == "/channel-test"]
    assert received.event()["type"] == TEST_EVENT
    assert received.event()["data"]["subscription_id"] == created["id"]
    assert message_problems(received) == []
    # and the check can fail: the test event's data is no job's
    assert EVENT_TYPES[TEST_EVENT].schema != EVENT_TYPES["com.cirelay.job.running"].schema
    wrong = Request(received.path, received.headers,
                    received.body.replace(TEST_EVENT.encode(), b"com.cirelay.job.running"),
                    received.arrived, received.status)  # fmt: skip
    assert message_problems(wrong) != []


def test_every_webhook_the_stack_sent_keeps_to_the_document(
    live: Stack, subscriber: Subscriber
) -> None:
    """Whatever the session's subscriber received (the fuzzer's subscriptions' deliveries
    too, when it ran first)."""
    live.http.post(
        f"{live.base}/v1/subscriptions", json={"url": subscriber.url("/channel-all")},
        headers=live.auth, timeout=10,
    ).raise_for_status()  # fmt: skip
    job = live.submit(job_json())
    live.wait_final(job["id"])

    def succeeded() -> list[Request] | None:
        got = subscriber.received()
        done = any(r.path == "/channel-all" and r.event()["type"] == "com.cirelay.job.succeeded"
                   for r in got)  # fmt: skip
        return got if done else None

    got = poll("the job's events at the webhook", succeeded)
    assert all(message_problems(r) == [] for r in got), [message_problems(r) for r in got]
