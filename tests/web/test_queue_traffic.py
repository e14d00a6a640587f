"""Everything a CI queue sends to its URL (spec §10), through the app on both databases:
other tags' TaskFinish (XML, JSON, legacy without EventName), WorkflowFinish (XML, JSON),
envelope violations, and CIRELAY_ACCEPT_TAGS. The same kinds go through the real stack in
``tests/test_queue_e2e.py``; here, the rules one at a time."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from app import Services, create_app, store
from tests.conftest import (
    CORPUS,
    counts,
    make_job,
    outcome_count,
    queue_path,
)

TASKS = CORPUS / "task_notification" / "valid"
WORKFLOWS = CORPUS / "workflow_notification" / "valid"
XML = {"Content-Type": "application/xml"}
JSON = {"Content-Type": "application/json"}


def post(client: FlaskClient, path: Path, url: str | None = None) -> Any:
    headers = JSON if path.suffix == ".json" else XML
    return client.post(url or queue_path(), data=path.read_bytes(), headers=headers)


def by_tag(registry: CollectorRegistry, tag: str, outcome: str) -> float:
    labels = {"tag": tag, "outcome": outcome}
    return registry.get_sample_value("cirelay_notifications_by_tag_total", labels) or 0.0


@pytest.mark.parametrize(
    ("name", "tag", "state"),
    [
        ("noise-reduction.xml", "NoiseReduction", "Success"),
        ("noise-reduction-object.json", "NoiseReduction", "Success"),
        ("transcode-legacy-no-eventname.xml", "Transcode", "Success"),
        ("speech-recognition-failed-url-input.xml", "SpeechRecognition", "Failed"),
    ],
)
def test_another_tags_job_is_recorded_like_voiceseparate(
    client: FlaskClient, auth: dict[str, str], registry: CollectorRegistry, engine: Engine,
    name: str, tag: str, state: str,
) -> None:  # fmt: skip
    response = post(client, TASKS / name)
    assert response.status_code == 200, response.json
    ((result),) = response.json["results"]
    assert (result["outcome"], result["state"]) == ("accepted", state)

    listed = client.get(f"/v1/jobs?tag={tag}", headers=auth).json["jobs"]
    assert [j["ci_job_id"] for j in listed] == [result["ci_job_id"]]
    job = client.get(f"/v1/jobs/{result['job_id']}", headers=auth).json
    assert (job["tag"], job["origin"], job["state"]) == (tag, "queue", state)
    assert job["operation"] and tag in job["operation"]  # the tag's container, as received
    assert by_tag(registry, tag, "accepted") == 1

    before = counts(engine)
    again = post(client, TASKS / name)  # CI retries: recorded once
    assert again.json["results"][0]["outcome"] == "duplicate"
    assert counts(engine) == before  # no second notification row, no second event


def test_a_legacy_body_keeps_its_workflow_and_cos_headers(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    result = post(client, TASKS / "transcode-legacy-no-eventname.xml").json["results"][0]
    job = client.get(f"/v1/jobs/{result['job_id']}", headers=auth).json
    assert job["workflow"]["RunId"] == "7c92f3e1-vlog-run-20200914"
    assert job["input"]["cos_headers"]["EventName"] == "cos:ObjectCreated:Put"


def test_a_mixed_array_records_each_tag_and_types_voiceseparate(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    path = TASKS / "snapshot-and-voiceseparate-array.json"
    results = post(client, path).json["results"]
    assert [r["outcome"] for r in results] == ["accepted", "accepted"]
    tags = {client.get(f"/v1/jobs/{r['job_id']}", headers=auth).json["tag"] for r in results}
    assert tags == {"Snapshot", "VoiceSeparate"}

    # the VoiceSeparate job in it still meets the typed schema: a VoiceSeparate container
    # with an AudioMode it does not know is refused, for that job, at its position
    document = json.loads(path.read_text())
    document["JobsDetail"][1]["JobId"] = "j00000000000000000000000000000099"
    document["JobsDetail"][1]["Operation"]["VoiceSeparate"] = {"AudioMode": "Karaoke"}
    response = client.post(queue_path(), data=json.dumps(document), headers=JSON)
    assert response.status_code == 400
    paths = [d["path"] for d in response.json["details"]]
    assert paths == ["/Response/JobsDetail[2]/Operation/VoiceSeparate/AudioMode"]


@pytest.mark.parametrize(
    "name", ["workflow-finish.xml", "workflow-finish.json", "legacy-no-eventname-runid.xml"]
)
def test_a_workflow_instance_is_recorded_once_with_its_event(
    client: FlaskClient, auth: dict[str, str], engine: Engine, registry: CollectorRegistry,
    name: str,
) -> None:  # fmt: skip
    response = post(client, WORKFLOWS / name)
    assert response.status_code == 200, response.json
    (result,) = response.json["results"]
    assert result["outcome"] == "accepted"
    run_id = result["run_id"]

    execution = client.get(f"/v1/workflow-executions/{run_id}", headers=auth).json
    assert execution["id"] == result["workflow_execution_id"]
    assert execution["tasks"] and all(t["type"] and t["state"] for t in execution["tasks"])
    listed = client.get("/v1/workflow-executions", headers=auth).json
    assert [e["run_id"] for e in listed["workflow_executions"]] == [run_id]

    before = counts(engine)
    again = post(client, WORKFLOWS / name).json["results"][0]
    assert again["outcome"] == "duplicate"
    assert counts(engine) == before  # no second row, no second event
    events = client.get("/v1/events?limit=50", headers=auth).json["events"]
    finished = [e for e in events if e["type"] == "com.cirelay.workflow.finished"]
    assert [e["subject"] for e in finished] == [run_id]
    assert finished[0]["data"]["state"] == execution["state"]
    assert by_tag(registry, "workflow", "accepted") == 1
    assert by_tag(registry, "workflow", "duplicate") == 1


def test_another_report_for_a_recorded_instance_is_stale(
    client: FlaskClient, engine: Engine, registry: CollectorRegistry
) -> None:
    """An instance finishes once: a WorkflowFinish with other content for a RunId already
    recorded leaves the first report standing, with no second event."""
    assert post(client, WORKFLOWS / "workflow-finish.xml").json["results"][0]["outcome"] == (
        "accepted"
    )
    before = counts(engine)
    body = (WORKFLOWS / "workflow-finish.xml").read_text()
    other = body.replace("<State>Success</State>", "<State>Failed</State>", 1)
    assert other != body
    response = client.post(queue_path(), data=other, headers=XML)
    assert response.status_code == 200
    assert response.json["results"][0]["outcome"] == "stale"
    assert counts(engine) == before
    assert by_tag(registry, "workflow", "stale") == 1


def test_an_instance_s_event_links_the_jobs_recorded_in_the_same_batch(
    engine: Engine, schemas: Any, clock: Any
) -> None:
    """CI sends a task's TaskFinish and its instance's WorkflowFinish almost together: in
    one group commit, the event's task still names the job the batch just recorded."""
    from app import jobs
    from app.models import Received, Source
    from app.notifications import parse_notification

    task = (TASKS / "noise-reduction.xml").read_bytes()
    notification = parse_notification(task, "application/xml", schemas)
    ci_id = notification.reports[0].ci_job_id
    finish = (WORKFLOWS / "workflow-finish.xml").read_text()
    finish = finish.replace("j4d8e34d91b52d9cd0ab4b803a61e22e0", ci_id).encode()

    def item(body: bytes) -> jobs.Pending:
        received = Received(body, "application/xml", {}, Source.QUEUE)
        return jobs.Pending(parse_notification(body, "application/xml", schemas), received,
                            clock.now)  # fmt: skip

    with store.transaction(engine) as conn:
        (task_result,), (run,) = jobs.apply_batch(conn, [item(task), item(finish)])
    with engine.connect() as conn:
        (event,) = store.list_events(conn, after=0, limit=10,
                                     types=["com.cirelay.workflow.finished"])  # fmt: skip
    linked = {t["ci_job_id"]: t["job_id"] for t in event.data["tasks"]}
    assert linked[ci_id] == task_result.job_id and run.outcome == "accepted"


def test_tasks_link_to_the_jobs_and_filters_find_the_instance(
    client: FlaskClient, auth: dict[str, str], clock: Any
) -> None:
    job = post(client, TASKS / "noise-reduction.xml").json["results"][0]
    body = (
        (WORKFLOWS / "workflow-finish.xml")
        .read_text()
        .replace("j4d8e34d91b52d9cd0ab4b803a61e22e0", job["ci_job_id"])
    )
    client.post(queue_path(), data=body, headers=XML)
    clock.now += timedelta(seconds=1)  # ids sort by arrival
    post(client, WORKFLOWS / "workflow-finish.json")

    def run_ids(query: str) -> list[str]:
        response = client.get(f"/v1/workflow-executions?{query}", headers=auth)
        assert response.status_code == 200, response.json
        return [e["run_id"] for e in response.json["workflow_executions"]]

    mine = "i5a6b7c8d9e0f11ee8a1b525400c3d4e5"
    other = "i6b7c8d9e0f1a11ee8a1b525400c3d4e5"
    assert run_ids("") == [other, mine]
    assert run_ids("state=Failed") == [other]
    assert run_ids("state=Success,Failed") == [other, mine]
    assert run_ids("state=Success, Failed") == [other, mine]  # read as /v1/jobs reads it
    assert run_ids(f"job={job['ci_job_id']}") == [mine]
    assert run_ids(f"job={job['job_id']}") == [mine]
    assert run_ids("task_type=Snapshot") == [other]
    assert run_ids("workflow_id=w0c1e6f18e306f348047808ca2d210148") == [mine]
    assert run_ids("bucket=shorts-1300000099") == [other]
    assert run_ids("limit=1") == [other]
    page = client.get("/v1/workflow-executions?limit=1", headers=auth).json
    assert run_ids(f"limit=1&cursor={page['next_cursor']}") == [mine]

    linked = client.get(f"/v1/workflow-executions/{mine}", headers=auth).json["tasks"]
    assert {t["ci_job_id"]: t["job_id"] for t in linked}[job["ci_job_id"]] == job["job_id"]
    for bad in ("state=Running", "limit=0", "created_after=yesterday", "bucket=" + "b" * 81):
        assert client.get(f"/v1/workflow-executions?{bad}", headers=auth).status_code == 400
    assert client.get("/v1/workflow-executions/i404", headers=auth).status_code == 404
    assert client.get("/v1/workflow-executions").status_code == 401


@pytest.mark.parametrize(
    "path",
    sorted((CORPUS / "task_notification" / "invalid").iterdir())
    + sorted((CORPUS / "workflow_notification" / "invalid").iterdir()),
    ids=lambda p: f"{p.parent.parent.name}/{p.name}",
)
def test_an_envelope_violation_is_still_quarantined(
    client: FlaskClient, engine: Engine, path: Path
) -> None:
    expected = json.loads((CORPUS / "expected-violations.json").read_text())
    response = post(client, path)
    assert response.status_code == 400, response.json
    assert response.json["error"] == "invalid_notification"
    want = expected[path.relative_to(CORPUS).as_posix()]
    assert want["path"] in [d["path"] for d in response.json["details"]]
    tables = counts(engine)
    assert tables["quarantined_notifications"] == 1
    assert tables["jobs"] == tables["workflow_executions"] == 0


def test_a_workflow_instance_lacking_its_state_is_refused(client: FlaskClient) -> None:
    body = (WORKFLOWS / "workflow-finish.xml").read_text()
    body = body.replace("<State>Success</State>\n    <Tasks>", "<Tasks>", 1)
    response = client.post(queue_path(), data=body, headers=XML)
    assert response.status_code == 400
    assert response.json["details"] == [
        {"path": "/Response/WorkflowExecution", "reason": "State must occur exactly once"}
    ]


def test_a_workflow_instance_at_a_jobs_own_url_is_refused(
    client: FlaskClient, engine: Engine, clock: Any
) -> None:
    url = make_job(engine, "job_01", clock())
    response = post(client, WORKFLOWS / "workflow-finish.xml", url)
    assert response.status_code == 400
    assert response.json["details"][0]["reason"] == (
        "WorkflowFinish notifications go to the queue's URL"
    )
    assert counts(engine)["workflow_executions"] == 0
    with engine.connect() as conn:
        (kept,) = store.list_quarantined(conn, limit=10)
    assert kept.job_id == "job_01"


def test_accept_tags_ignores_the_tags_it_excludes(
    services: Services, auth: dict[str, str], engine: Engine, registry: CollectorRegistry
) -> None:
    settings = services.settings.with_overrides(accept_tags=("VoiceSeparate", "Transcode"))
    from app import build_services

    mine = build_services(settings, registry=CollectorRegistry(), engine=engine,
                          schemas=services.schemas, clock=services.clock)  # fmt: skip
    client = create_app(services=mine).test_client()
    ignored = post(client, TASKS / "noise-reduction.xml")
    assert ignored.status_code == 200
    assert ignored.json["results"] == [
        {"outcome": "ignored", "job_id": None,
         "ci_job_id": "j1f0a9c2e16a511efb2d5525400c1d2e3", "state": "Success"}
    ]  # fmt: skip
    assert counts(engine)["jobs"] == counts(engine)["notifications"] == 0
    assert outcome_count(mine.metrics.registry, "ignored") == 1
    labels = {"tag": "NoiseReduction", "outcome": "ignored"}
    assert mine.metrics.registry.get_sample_value("cirelay_notifications_by_tag_total", labels) == 1

    mixed = post(client, TASKS / "snapshot-and-voiceseparate-array.json").json["results"]
    assert [r["outcome"] for r in mixed] == ["ignored", "accepted"]  # Snapshot, VoiceSeparate
    kept = post(client, TASKS / "transcode-legacy-no-eventname.xml").json["results"]
    assert kept[0]["outcome"] == "accepted"
    assert post(client, WORKFLOWS / "workflow-finish.xml").json["results"][0]["outcome"] == (
        "accepted"
    )  # workflow instances are always recorded


def test_the_reconciler_asks_ci_only_about_voiceseparate_jobs(
    client: FlaskClient, engine: Engine, clock: Any
) -> None:
    """CI's answers are checked by the typed describe schema: a silent job of another tag
    would fail it, and with it the batch of VoiceSeparate jobs asked about beside it."""
    body = (TASKS / "noise-reduction.xml").read_text().replace("Success", "Running")
    assert client.post(queue_path(), data=body, headers=XML).status_code == 200
    typed = (CORPUS / "notification" / "valid" / "success-alphabetical.xml").read_text()
    client.post(queue_path(), data=typed.replace("Success", "Running"), headers=XML)
    with engine.connect() as conn:
        silent = store.list_silent_jobs(conn, silent_since=clock() + timedelta(1), limit=10)
    assert [job.tag for job in silent] == ["VoiceSeparate"]
