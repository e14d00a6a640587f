"""Each fault does what it says, seen from a real receiver; and callbacks are retried.

The session's emulator runs jobs in 0.2 s and retries callbacks after 0.2 s and 0.4 s
(±10 %). Each test sets its faults with ``next`` counts (reset first) and uses its own
callback path.
"""

from __future__ import annotations

import itertools
import json

import pytest
import requests
from lxml import etree

from app.ci import wire
from app.errors import InvalidNotificationError, MalformedNotificationError
from app.notifications import parse_notification
from app.schemas import SchemaSet
from tests.emulator import (
    EmulatorProcess,
    Receiver,
    create_body,
    create_job,
    job_request,
    job_state,
    signed,
    wait_until,
)


def state_of(body: bytes) -> str | None:
    return etree.fromstring(body).findtext("JobsDetail/State")


def jobs_for(emulator: EmulatorProcess, input_object: str) -> list[dict[str, str]]:
    return [j for j in emulator.admin("GET", "/jobs") if j["input_object"] == input_object]


# --- delivery faults ----------------------------------------------------------------------


def test_duplicate_delivers_twice(
    emulator: EmulatorProcess, receiver: Receiver, schemas: SchemaSet
) -> None:
    emulator.set_faults(duplicate={"next": 1})
    job_id = create_job(emulator, job_request(callback=receiver.url("/f/dup")), schemas)

    first, second = receiver.wait("/f/dup", 2)
    assert first.body == second.body
    assert [d["kind"] for d in emulator.deliveries(job_id)] == ["final", "duplicate"]


def test_duplicate_copies_are_configurable(
    emulator: EmulatorProcess, receiver: Receiver, schemas: SchemaSet
) -> None:
    emulator.set_faults(duplicate={"next": 1, "copies": 3})
    create_job(emulator, job_request(callback=receiver.url("/f/dup3")), schemas)

    assert len({r.body for r in receiver.wait("/f/dup3", 3)}) == 1


def test_reorder_stale_sends_running_after_success(
    emulator: EmulatorProcess, receiver: Receiver, schemas: SchemaSet
) -> None:
    emulator.set_faults(reorder={"next": 1, "mode": "stale"})
    job_id = create_job(emulator, job_request(callback=receiver.url("/f/stale")), schemas)

    final, stale = receiver.wait("/f/stale", 2)
    assert [state_of(final.body), state_of(stale.body)] == ["Success", "Running"]
    assert schemas.validate("notification", etree.fromstring(stale.body)) == []
    assert (
        parse_notification(stale.body, stale.content_type, schemas).reports[0].ci_job_id == job_id
    )


def test_reorder_reverse_releases_newest_first(
    emulator: EmulatorProcess, receiver: Receiver, schemas: SchemaSet
) -> None:
    emulator.set_faults(reorder={"next": 2, "mode": "reverse", "batch": 2})
    older = create_job(emulator, job_request(callback=receiver.url("/f/rev")), schemas)
    wait_until(
        lambda: emulator.deliveries(older) and emulator.deliveries(older)[0]["outcome"] == "held"
    )
    newer = create_job(emulator, job_request(callback=receiver.url("/f/rev")), schemas)

    got = receiver.wait("/f/rev", 2)
    order = [etree.fromstring(r.body).findtext("JobsDetail/JobId") for r in got]
    assert order == [newer, older]


def test_delay_holds_the_first_attempt(
    emulator: EmulatorProcess, receiver: Receiver, schemas: SchemaSet
) -> None:
    emulator.set_faults(delay={"next": 1, "seconds": 0.5})
    job_id = create_job(emulator, job_request(callback=receiver.url("/f/delay")), schemas)

    receiver.wait("/f/delay", 1)
    [delivery] = wait_until(lambda: [d for d in emulator.deliveries(job_id) if d["attempts"]])
    assert delivery["faults"] == ["delay"]
    assert delivery["attempts"][0]["waited"] == 0.5
    assert delivery["attempts"][0]["elapsed"] >= 0.5


def test_drop_sends_nothing_yet_the_job_finishes(
    emulator: EmulatorProcess, receiver: Receiver, schemas: SchemaSet
) -> None:
    emulator.set_faults(drop={"next": 1})
    job_id = create_job(emulator, job_request(callback=receiver.url("/f/drop")), schemas)

    wait_until(lambda: emulator.deliveries(job_id))
    [delivery] = emulator.deliveries(job_id)
    assert delivery["outcome"] == "dropped" and delivery["attempts"] == []
    assert job_state(emulator, job_id, schemas) == "Success"
    listed = signed(
        emulator.url,
        "GET",
        "/jobs",
        params={"tag": "VoiceSeparate", "states": "Success", "size": "100"},
    )
    reports, _ = wire.parse_list_response(listed.content, schemas=schemas)
    assert job_id in [r.ci_job_id for r in reports]
    assert receiver.at("/f/drop") == []


@pytest.mark.parametrize(("kind", "fmt"), [("truncated", "XML"), ("invalid", "JSON")])
def test_malformed_first_then_the_good_body(
    emulator: EmulatorProcess, receiver: Receiver, schemas: SchemaSet, kind: str, fmt: str
) -> None:
    emulator.set_faults(malformed={"next": 1, "kind": kind})
    path = f"/f/malformed-{kind}"
    job_id = create_job(
        emulator, job_request(callback=receiver.url(path), callback_format=fmt), schemas
    )

    bad, good = receiver.wait(path, 2)
    expected = MalformedNotificationError if kind == "truncated" else InvalidNotificationError
    with pytest.raises(expected):
        parse_notification(bad.body, bad.content_type, schemas)
    assert parse_notification(good.body, good.content_type, schemas).reports[0].ci_job_id == job_id
    # the emulator records an attempt once it has the answer, a moment after we have the body
    wait_until(lambda: len(emulator.deliveries(job_id)[0]["attempts"]) == 2)
    [delivery] = emulator.deliveries(job_id)
    assert [a["malformed"] for a in delivery["attempts"]] == [True, False]
    assert delivery["outcome"] == "delivered"


# --- faults of POST /jobs -----------------------------------------------------------------


def test_create_5xx_answers_503_and_creates_nothing(
    emulator: EmulatorProcess, schemas: SchemaSet
) -> None:
    emulator.set_faults(create_5xx={"next": 1})
    body = create_body(job_request("faults/5xx.wav"), schemas)

    response = signed(emulator.url, "POST", "/jobs", body=body)

    assert response.status_code == 503
    assert wire.parse_error(response.content, schemas=schemas).code == "ServiceUnavailable"
    assert jobs_for(emulator, "faults/5xx.wav") == []
    assert signed(emulator.url, "POST", "/jobs", body=body).status_code == 200


def test_create_timeout_still_creates_the_job(
    emulator: EmulatorProcess, receiver: Receiver, schemas: SchemaSet
) -> None:
    emulator.set_faults(create_timeout={"next": 1, "seconds": 1.0, "creates_job": True})
    request = job_request("faults/timeout.wav", callback=receiver.url("/f/timeout"))

    with pytest.raises(requests.Timeout):
        signed(emulator.url, "POST", "/jobs", body=create_body(request, schemas), timeout=0.3)

    [received] = receiver.wait("/f/timeout", 1)
    [job] = jobs_for(emulator, "faults/timeout.wav")
    assert etree.fromstring(received.body).findtext("JobsDetail/JobId") == job["job_id"]


def test_create_timeout_without_a_job(emulator: EmulatorProcess, schemas: SchemaSet) -> None:
    emulator.set_faults(create_timeout={"next": 1, "seconds": 0.6, "creates_job": False})
    body = create_body(job_request("faults/timeout-none.wav"), schemas)

    with pytest.raises(requests.Timeout):
        signed(emulator.url, "POST", "/jobs", body=body, timeout=0.2)

    wait_until(lambda: emulator.admin("GET", "/faults")["fired"]["create_timeout"] >= 1)
    assert jobs_for(emulator, "faults/timeout-none.wav") == []


# --- retries ------------------------------------------------------------------------------


def test_retries_after_500_with_backoff(
    emulator: EmulatorProcess, receiver: Receiver, schemas: SchemaSet
) -> None:
    receiver.script("/f/retry", [500, 500])
    job_id = create_job(emulator, job_request(callback=receiver.url("/f/retry")), schemas)

    receiver.wait("/f/retry", 3)
    [delivery] = wait_until(
        lambda: [d for d in emulator.deliveries(job_id) if d["outcome"] == "delivered"]
    )
    attempts = delivery["attempts"]
    assert [a["status"] for a in attempts] == [500, 500, 200]
    for attempt, base in zip(attempts[1:], (0.2, 0.4), strict=True):
        assert base * 0.9 <= attempt["waited"] <= base * 1.1
    for before, after in itertools.pairwise(attempts):
        assert after["elapsed"] - before["elapsed"] >= after["waited"] - 0.01


def test_gives_up_after_the_schedule(
    emulator: EmulatorProcess, receiver: Receiver, schemas: SchemaSet
) -> None:
    receiver.script("/f/down", [503] * 5)
    job_id = create_job(emulator, job_request(callback=receiver.url("/f/down")), schemas)

    [delivery] = wait_until(
        lambda: [d for d in emulator.deliveries(job_id) if d["outcome"] == "failed"]
    )
    assert [a["status"] for a in delivery["attempts"]] == [503, 503, 503]
    assert len(receiver.at("/f/down")) == 3


def test_connection_errors_are_retried(emulator: EmulatorProcess, schemas: SchemaSet) -> None:
    closed = "http://127.0.0.1:9/nobody-listens"  # the discard port: nothing answers
    job_id = create_job(emulator, job_request(callback=closed), schemas)

    [delivery] = wait_until(
        lambda: [d for d in emulator.deliveries(job_id) if d["outcome"] == "failed"]
    )
    assert len(delivery["attempts"]) == 3
    assert all(a["error"] and a["status"] is None for a in delivery["attempts"])


def test_the_admin_view_hides_callback_tokens(
    emulator: EmulatorProcess, receiver: Receiver, schemas: SchemaSet
) -> None:
    job_id = create_job(
        emulator, job_request(callback=receiver.url("/callbacks/ci/job-1/secret-token")), schemas
    )

    receiver.wait("/callbacks/ci/job-1/secret-token", 1)
    [delivery] = wait_until(lambda: emulator.deliveries(job_id))
    assert "secret-token" not in json.dumps(delivery)
    assert "secret-token" not in emulator.logs()


def test_reorder_reverse_releases_a_lone_notification_after_the_hold(
    emulator: EmulatorProcess, receiver: Receiver, schemas: SchemaSet
) -> None:
    emulator.set_faults(reorder={"next": 1, "mode": "reverse", "batch": 5, "hold_seconds": 0.3})
    job_id = create_job(emulator, job_request(callback=receiver.url("/f/lone")), schemas)

    receiver.wait("/f/lone", 1)
    [delivery] = wait_until(lambda: [d for d in emulator.deliveries(job_id) if d["attempts"]])
    assert delivery["faults"] == ["reorder:reverse"]
    assert delivery["attempts"][0]["elapsed"] >= 0.3


@pytest.mark.parametrize(
    "content_type",
    [None, "application/x-www-form-urlencoded", "text/plain", "application/json"],
)
def test_faults_take_a_json_body_whatever_its_content_type(
    emulator: EmulatorProcess, content_type: str | None
) -> None:
    """`curl -d '{"drop": …}'` (README) declares a form: the body is JSON all the same."""
    headers = {"Content-Type": content_type} if content_type else {}
    answer = requests.post(f"{emulator.url}/_emulator/faults", data='{"drop": {"next": 1}}',
                           headers=headers, timeout=10)  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert emulator.admin("GET", "/faults")["remaining"]["drop"] == 1


def test_faults_refuse_a_body_that_is_not_a_json_object(emulator: EmulatorProcess) -> None:
    answer = requests.post(f"{emulator.url}/_emulator/faults", data="drop=1", timeout=10)
    assert answer.status_code == 400 and answer.json()["error"] == "bad_request"
