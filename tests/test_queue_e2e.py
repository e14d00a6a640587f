"""A CI queue's whole traffic through the real stack (spec §10): the emulator as a process
of its own runs jobs of other tags and workflow instances and notifies cirelay's queue URL
(``cirelay serve``, gunicorn), the worker delivers the events to a real subscriber. Each kind
is answered 200 (the emulator's delivery record), readable through the API, and its event
arrives signed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e_stack import QUEUE_SECRET, Stack, poll
from tests.subscriber import Subscriber

pytestmark = pytest.mark.slow

ENV = {
    "CIRELAY_DELIVERY_ALLOWED_NETWORKS": "127.0.0.0/8",
    # Snapshot is left out: its jobs are answered 200, counted ignored, not stored
    "CIRELAY_ACCEPT_TAGS": "VoiceSeparate,NoiseReduction,Transcode",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack.start(tmp_path_factory.mktemp("queue"), ENV) as running:
        try:
            yield running
        finally:
            print(running.tails())


@pytest.fixture(scope="module")
def hook(stack: Stack) -> Iterator[tuple[Subscriber, str]]:
    with Subscriber() as subscriber:
        body = {"url": subscriber.url(), "event_types": ["*"]}
        response = stack.http.post(f"{stack.base}/v1/subscriptions", json=body,
                                   headers=stack.auth)  # fmt: skip
        assert response.status_code == 201, response.text
        yield subscriber, response.json()["secret"]


def emulate(stack: Stack, what: str, body: dict[str, Any]) -> dict[str, Any]:
    url = f"{stack.base}/callbacks/ci/queue/{QUEUE_SECRET}"
    response = stack.http.post(f"{stack.emulator}/_emulator/{what}", json={**body, "url": url},
                               timeout=5)  # fmt: skip
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def delivered(stack: Stack, ci_id: str) -> list[dict[str, Any]]:
    """The emulator's record of its notification(s) about ``ci_id``, once answered."""
    return poll(f"the notification of {ci_id} to be answered", lambda: [
        d for d in stack.deliveries(ci_id) if d["outcome"] == "delivered"
    ] or None)  # fmt: skip


def event_for(hook: tuple[Subscriber, str], type_: str, subject: str) -> Any:
    subscriber, secret = hook

    def arrived() -> Any:
        events = [e for e in subscriber.verified(secret)
                  if e["type"] == type_ and e["subject"] == subject]  # fmt: skip
        return events[0] if events else None

    return poll(f"{type_} for {subject} at the subscriber", arrived)


@pytest.mark.parametrize(
    ("tag", "fmt", "legacy"),
    [("NoiseReduction", "XML", False), ("NoiseReduction", "JSON", False),
     ("Transcode", "XML", True)],
)
def test_a_job_of_another_tag_is_recorded_and_its_event_delivered(
    stack: Stack, hook: tuple[Subscriber, str], tag: str, fmt: str, legacy: bool
) -> None:
    body = {"tag": tag, "format": fmt, "legacy": legacy, "input_object": f"in/{tag}.wav"}
    (ci_id,) = emulate(stack, "inject", body)["job_ids"]
    (record,) = delivered(stack, ci_id)
    assert (record["attempts"][-1]["status"], record["format"]) == (200, fmt)
    job = stack.job(ci_id)
    assert (job["tag"], job["origin"], job["state"]) == (tag, "queue", "Success")
    assert tag in job["operation"]
    assert [n["wire_format"] for n in job["notifications"]] == [fmt.lower()]
    listed = stack.http.get(f"{stack.base}/v1/jobs?tag={tag}", headers=stack.auth).json()
    assert ci_id in [j["ci_job_id"] for j in listed["jobs"]]
    event = event_for(hook, "com.cirelay.job.succeeded", ci_id)
    assert event.get_data()["tag"] == tag


@pytest.mark.parametrize(("fmt", "legacy"), [("XML", False), ("JSON", False), ("XML", True)])
def test_a_workflow_instance_is_recorded_and_its_event_delivered(
    stack: Stack, hook: tuple[Subscriber, str], fmt: str, legacy: bool
) -> None:
    run = emulate(stack, "workflows", {
        "tasks": ["VoiceSeparate", "NoiseReduction"], "format": fmt, "legacy": legacy,
        "object": f"uploads/{fmt}-{legacy}.wav", "workflow_name": "stems-then-clean",
    })  # fmt: skip
    (record,) = delivered(stack, run["RunId"])
    assert record["attempts"][-1]["status"] == 200
    url = f"{stack.base}/v1/workflow-executions/{run['RunId']}"
    execution = stack.http.get(url, headers=stack.auth).json()
    assert (execution["state"], execution["workflow_name"]) == ("Success", "stems-then-clean")
    tasks = execution["tasks"]
    assert [t["ci_job_id"] for t in tasks] == run["job_ids"]
    for ci_id in run["job_ids"]:  # each task's own TaskFinish (sent on its own) is recorded
        delivered(stack, ci_id)
        assert stack.job(ci_id)["workflow"]["RunId"] == run["RunId"]
    event = event_for(hook, "com.cirelay.workflow.finished", run["RunId"])
    assert event.get_data()["id"] == execution["id"]


def test_a_failed_task_fails_the_instance(stack: Stack) -> None:
    run = emulate(stack, "workflows", {"tasks": ["Transcode"], "object": "in/fail.mp4"})
    delivered(stack, run["RunId"])
    url = f"{stack.base}/v1/workflow-executions?state=Failed&job={run['job_ids'][0]}"
    (execution,) = stack.http.get(url, headers=stack.auth).json()["workflow_executions"]
    assert execution["run_id"] == run["RunId"]
    delivered(stack, run["job_ids"][0])
    assert stack.job(run["job_ids"][0])["state"] == "Failed"


def test_accept_tags_ignores_what_it_excludes(stack: Stack) -> None:
    (ci_id,) = emulate(stack, "inject", {"tag": "Snapshot"})["job_ids"]
    (record,) = delivered(stack, ci_id)
    assert record["attempts"][-1]["status"] == 200
    assert stack.http.get(f"{stack.base}/v1/jobs/{ci_id}", headers=stack.auth).status_code == 404
    assert stack.metric("cirelay_notifications_total", '{outcome="ignored"}') >= 1
    labels = '{outcome="ignored",tag="Snapshot"}'
    assert stack.metric("cirelay_notifications_by_tag_total", labels) == 1


def test_an_envelope_violation_is_still_quarantined(stack: Stack) -> None:
    body = (Path(__file__).parent / "corpus" / "task_notification" / "invalid" /
            "missing-tag.xml").read_bytes()  # fmt: skip
    url = f"{stack.base}/callbacks/ci/queue/{QUEUE_SECRET}"
    response = stack.http.post(url, data=body, headers={"Content-Type": "application/xml"})
    assert response.status_code == 400
    assert response.json()["details"][0]["path"] == "/Response/JobsDetail"
    assert any(q["source"] == "queue" and q["error"] == "schema_violation"
               for q in stack.quarantined())  # fmt: skip
