"""The callback endpoints through Flask's client, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from app import store
from tests.conftest import (
    CORPUS,
    Clock,
    callback_path,
    ci_job_id,
    counts,
    make_job,
    notification_xml,
    outcome_count,
    queue_path,
)

XML = {"Content-Type": "application/xml"}


@pytest.fixture
def job_path(engine: Engine, clock: Clock) -> str:
    return make_job(engine, "job_01", clock.now, ci_id=ci_job_id(1))


def test_success_notification_moves_job_and_writes_one_event(
    client: FlaskClient, engine: Engine, job_path: str
) -> None:
    response = client.post(job_path, data=notification_xml(ci_job_id(1)), headers=XML)

    assert response.status_code == 200
    assert response.json["results"][0]["outcome"] == "accepted"
    with engine.connect() as conn:
        job = store.get_job(conn, "job_01")
        events = store.list_events(conn)
    assert job is not None and job.state == "Success"
    assert [e.type for e in events] == ["com.cirelay.job.succeeded"]
    assert events[0].subject == ci_job_id(1)
    assert counts(engine)["notifications"] == 1


def test_job_submitted_without_ci_id_learns_it_from_its_first_notification(
    client: FlaskClient, engine: Engine, clock: Clock
) -> None:
    path = make_job(engine, "job_02", clock.now)
    response = client.post(path, data=notification_xml(ci_job_id(2)), headers=XML)
    assert response.status_code == 200
    with engine.connect() as conn:
        assert store.find_job(conn, ci_job_id(2)) is not None


def test_repeated_notification_is_answered_2xx_and_recorded_once(
    client: FlaskClient, engine: Engine, job_path: str, registry: CollectorRegistry
) -> None:
    body = notification_xml(ci_job_id(1))
    first = client.post(job_path, data=body, headers=XML)
    second = client.post(job_path, data=body, headers=XML)

    assert first.status_code == second.status_code == 200
    assert second.json["results"][0]["outcome"] == "duplicate"
    assert counts(engine)["notifications"] == 1
    assert counts(engine)["events"] == 1
    assert outcome_count(registry, "duplicate") == 1


def test_same_content_reindented_is_still_a_duplicate(
    client: FlaskClient, engine: Engine, job_path: str
) -> None:
    body = notification_xml(ci_job_id(1))
    client.post(job_path, data=body, headers=XML)
    compact = "".join(line.strip() for line in body.splitlines())
    response = client.post(job_path, data=compact, headers=XML)
    assert response.json["results"][0]["outcome"] == "duplicate"


def test_running_after_success_is_kept_but_does_not_move_the_job_back(
    client: FlaskClient, engine: Engine, job_path: str, registry: CollectorRegistry
) -> None:
    client.post(job_path, data=notification_xml(ci_job_id(1), "Success"), headers=XML)
    response = client.post(job_path, data=notification_xml(ci_job_id(1), "Running"), headers=XML)

    assert response.status_code == 200
    assert response.json["results"][0]["outcome"] == "stale"
    with engine.connect() as conn:
        job = store.get_job(conn, "job_01")
        notes = store.list_notifications(conn, "job_01")
    assert job is not None and job.state == "Success"
    assert [(n.state, n.outcome) for n in notes] == [("Success", "accepted"), ("Running", "stale")]
    assert counts(engine)["events"] == 1
    assert outcome_count(registry, "stale") == 1


def test_failed_after_success_is_stale(client: FlaskClient, job_path: str) -> None:
    client.post(job_path, data=notification_xml(ci_job_id(1), "Success"), headers=XML)
    response = client.post(
        job_path, data=notification_xml(ci_job_id(1), "Failed", Code="1015"), headers=XML
    )
    assert response.json["results"][0]["outcome"] == "stale"


def test_running_then_success_are_two_transitions(
    client: FlaskClient, engine: Engine, job_path: str, registry: CollectorRegistry
) -> None:
    client.post(job_path, data=notification_xml(ci_job_id(1), "Running"), headers=XML)
    client.post(job_path, data=notification_xml(ci_job_id(1), "Success"), headers=XML)

    with engine.connect() as conn:
        types = [e.type for e in store.list_events(conn)]
    assert types == ["com.cirelay.job.running", "com.cirelay.job.succeeded"]
    labels = {"from_state": "Running", "to_state": "Success"}
    assert registry.get_sample_value("cirelay_job_state_transitions_total", labels) == 1


@pytest.mark.parametrize(
    "path",
    [
        "/callbacks/ci/job_01/not-the-token",
        callback_path("job_unknown"),  # a valid token for a job that does not exist
    ],
    ids=["wrong-token", "unknown-job"],
)
def test_unknown_job_or_wrong_token_is_the_same_404_and_counted(
    client: FlaskClient, engine: Engine, job_path: str, path: str, registry: CollectorRegistry
) -> None:
    response = client.post(path, data=notification_xml(ci_job_id(1)), headers=XML)

    assert response.status_code == 404
    assert response.json == {"error": "not_found", "message": "no such callback", "details": []}
    assert outcome_count(registry, "unauthenticated") == 1
    assert counts(engine)["notifications"] == 0
    assert counts(engine)["quarantined_notifications"] == 0


def test_token_of_a_rotated_out_key_still_verifies(
    client: FlaskClient, engine: Engine, job_path: str
) -> None:
    old_key_path = callback_path("job_01", key_index=1)
    assert old_key_path != job_path
    response = client.post(old_key_path, data=notification_xml(ci_job_id(1)), headers=XML)
    assert response.status_code == 200


def test_notification_for_another_job_is_quarantined(
    client: FlaskClient, engine: Engine, job_path: str
) -> None:
    response = client.post(job_path, data=notification_xml(ci_job_id(9)), headers=XML)

    assert response.status_code == 400
    assert response.json["details"][0]["path"] == "/Response/JobsDetail/JobId"
    assert counts(engine)["quarantined_notifications"] == 1
    assert counts(engine)["notifications"] == 0


def test_queue_callback_creates_the_job_from_the_notification(
    client: FlaskClient, engine: Engine
) -> None:
    body = (CORPUS / "notification/valid/workflow-triggered.xml").read_bytes()
    response = client.post(queue_path(), data=body, headers=XML)

    assert response.status_code == 200
    result = response.json["results"][0]
    with engine.connect() as conn:
        job = store.find_job(conn, result["ci_job_id"])
    assert job is not None
    assert job.origin == "queue"
    assert job.workflow and job.workflow["WorkflowName"]
    assert job.input["cos_headers"]


def test_queue_callback_with_wrong_secret_is_404(client: FlaskClient, engine: Engine) -> None:
    body = notification_xml(ci_job_id(3))
    response = client.post("/callbacks/ci/queue/wrong-secret", data=body, headers=XML)
    assert response.status_code == 404
    assert counts(engine)["jobs"] == 0


def test_queue_callback_for_a_known_queue_job_updates_it(
    client: FlaskClient, engine: Engine
) -> None:
    first = client.post(queue_path(), data=notification_xml(ci_job_id(1), "Running"), headers=XML)
    job_id = first.json["results"][0]["job_id"]
    response = client.post(queue_path(), data=notification_xml(ci_job_id(1)), headers=XML)
    assert response.json["results"][0]["job_id"] == job_id
    assert counts(engine)["jobs"] == 1
    # a job cirelay submitted is another matter: tests/web/test_authority.py


@pytest.mark.parametrize("content_type", ["application/xml", "text/xml; charset=utf-8"])
def test_xml_content_types_are_accepted(
    client: FlaskClient, job_path: str, content_type: str
) -> None:
    response = client.post(
        job_path, data=notification_xml(ci_job_id(1)), headers={"Content-Type": content_type}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", ""]
)
def test_other_content_types_are_415(
    client: FlaskClient, job_path: str, content_type: str, registry: CollectorRegistry
) -> None:
    response = client.post(
        job_path, data=notification_xml(ci_job_id(1)), headers={"Content-Type": content_type}
    )
    assert response.status_code == 415
    assert response.json["error"] == "unsupported_media_type"
    assert outcome_count(registry, "unsupported_media_type") == 1


def test_json_notification_is_checked_by_the_same_schema_and_recorded(
    client: FlaskClient, engine: Engine
) -> None:
    body = (CORPUS / "notification/valid/jobsdetail-array-workflow.json").read_bytes()
    response = client.post(queue_path(), data=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 200
    ci_id = response.json["results"][0]["ci_job_id"]
    with engine.connect() as conn:
        job = store.find_job(conn, ci_id)
        notes = store.list_notifications(conn, job.id) if job else []
    assert job is not None and job.state == "Success"
    assert len(job.result_files) == 2
    assert [n.wire_format for n in notes] == ["json"]


def test_invalid_notification_is_quarantined_with_every_reason(
    client: FlaskClient, engine: Engine, job_path: str, registry: CollectorRegistry
) -> None:
    body = notification_xml(ci_job_id(1), "Finished", Code="Success")
    body = body.replace("<Tag>VoiceSeparate</Tag>", "<Tag>Voice Separate</Tag>")
    response = client.post(job_path, data=body, headers={**XML, "X-Trace": "t-1"})

    assert response.status_code == 400
    assert response.json["error"] == "invalid_notification"
    paths = {d["path"] for d in response.json["details"]}
    assert paths == {"/Response/JobsDetail/State", "/Response/JobsDetail/Tag"}
    with engine.connect() as conn:
        (item,) = store.list_quarantined(conn)
        job = store.get_job(conn, "job_01")
    assert item.body == body.encode()
    assert item.headers["X-Trace"] == "t-1"
    assert item.job_id == "job_01"
    assert {r["path"] for r in item.reasons} == paths
    assert job is not None and job.state == "Submitted"
    assert counts(engine)["notifications"] == 0
    assert outcome_count(registry, "schema_violation") == 1
    assert registry.get_sample_value("cirelay_quarantine_size") == 1


def test_malformed_notification_is_quarantined_and_400(
    client: FlaskClient, engine: Engine, job_path: str, registry: CollectorRegistry
) -> None:
    response = client.post(job_path, data=b"<Response><JobsDetail>", headers=XML)

    assert response.status_code == 400
    assert response.json["error"] == "malformed_notification"
    assert counts(engine)["quarantined_notifications"] == 1
    assert outcome_count(registry, "malformed") == 1


def test_quarantine_writes_an_event(client: FlaskClient, engine: Engine, job_path: str) -> None:
    client.post(job_path, data=b"not xml", headers=XML)
    with engine.connect() as conn:
        (event,) = store.list_events(conn)
    assert event.type == "com.cirelay.notification.quarantined"
    assert event.data["error"] == "malformed"


def test_body_over_the_cap_is_413_and_nothing_is_stored(
    client: FlaskClient, engine: Engine, job_path: str, registry: CollectorRegistry
) -> None:
    padding = "<Message>" + "x" * 2_000_000 + "</Message>"
    big = notification_xml(ci_job_id(1)).replace("<Message/>", padding)
    response = client.post(job_path, data=big, headers=XML)

    assert response.status_code == 413
    assert outcome_count(registry, "too_large") == 1
    assert counts(engine)["quarantined_notifications"] == 0


def test_ci_job_duration_is_observed_from_creation_to_end(
    client: FlaskClient, job_path: str, registry: CollectorRegistry
) -> None:
    client.post(job_path, data=notification_xml(ci_job_id(1)), headers=XML)
    # the sample runs from 21:03:44 to 21:05:02: 78 s
    labels = {"state": "Success"}
    assert registry.get_sample_value("cirelay_ci_job_duration_seconds_sum", labels) == 78
    assert registry.get_sample_value("cirelay_ci_job_duration_seconds_count", labels) == 1


def test_processing_latency_is_observed(
    client: FlaskClient, job_path: str, registry: CollectorRegistry
) -> None:
    client.post(job_path, data=notification_xml(ci_job_id(1)), headers=XML)
    labels = {"wire_format": "xml"}
    assert registry.get_sample_value("cirelay_notification_processing_seconds_count", labels) == 1


def test_notification_time_is_the_clock_of_the_service(
    client: FlaskClient, engine: Engine, job_path: str, clock: Clock
) -> None:
    clock.now += timedelta(hours=1)
    client.post(job_path, data=notification_xml(ci_job_id(1)), headers=XML)
    with engine.connect() as conn:
        (note,) = store.list_notifications(conn, "job_01")
    assert note.received_at == clock.now


def test_answer_lists_every_result(client: FlaskClient, engine: Engine) -> None:
    body = (CORPUS / "notification/valid/eventname-last-two-jobs.xml").read_bytes()
    response = client.post(queue_path(), data=body, headers=XML)
    assert response.status_code == 200
    assert [r["outcome"] for r in response.json["results"]] == ["accepted", "accepted"]
    assert counts(engine)["jobs"] == 2
    assert json.loads(response.data)["results"][0]["state"] == "Success"


def test_same_facts_in_json_after_xml_are_a_duplicate(
    client: FlaskClient, engine: Engine, job_path: str
) -> None:
    """One digest for the same content, whatever the wire format and element order."""
    from lxml import etree

    from app.notifications import element_to_dict

    body = notification_xml(ci_job_id(1))
    client.post(job_path, data=body, headers=XML)
    root = etree.fromstring(body.encode(), etree.XMLParser(remove_blank_text=True))
    document = element_to_dict(root)
    document["JobsDetail"] = [document["JobsDetail"]]  # the VoiceSeparate JSON shape
    response = client.post(job_path, json=document)

    assert response.status_code == 200
    assert response.json["results"][0]["outcome"] == "duplicate"
    assert counts(engine)["notifications"] == 1


# --- the lane in front of Flask (app.web.callbacks.CallbackLane) ----------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_on_a_callback_url_are_json_405_allowing_post(
    client: FlaskClient, job_path: str, method: str, engine: Engine
) -> None:
    response = client.open(job_path, method=method, data=notification_xml(ci_job_id(1)),
                           headers=XML)  # fmt: skip
    assert response.status_code == 405
    assert response.json["error"] == "method_not_allowed"
    assert response.headers["Allow"] == "POST"
    assert response.headers["X-Request-ID"]
    assert counts(engine)["notifications"] == 0


@pytest.mark.parametrize(
    "path",
    [
        "/callbacks/ci/",
        "/callbacks/ci/job_01",
        "/callbacks/ci/job_01/",
        "/callbacks/ci//token",
        "/callbacks/ci/job_01//token",  # not merged into a callback URL by Flask's map
        "/callbacks/ci/job_01/token/",
        "/callbacks/ci/job_01/token/more",
        "/callbacks/ci/queue/",
    ],
)
def test_paths_that_are_not_callback_urls_are_flask_json_404(
    client: FlaskClient, path: str, registry: CollectorRegistry
) -> None:
    response = client.post(path, data=notification_xml(ci_job_id(1)), headers=XML)
    assert response.status_code == 404
    assert response.json["error"] == "not_found"
    assert outcome_count(registry, "unauthenticated") == 0  # never reached the callback checks


def test_flasks_url_map_lists_the_lanes_routes(app: Flask) -> None:
    rules = {rule.rule: rule for rule in app.url_map.iter_rules()}
    for path in ("/callbacks/ci/<job_id>/<token>", "/callbacks/ci/queue/<secret>"):
        assert "POST" in (rules[path].methods or set())


def test_request_id_is_kept_or_made_on_every_callback_answer(
    client: FlaskClient, job_path: str
) -> None:
    given = client.post(job_path, data=notification_xml(ci_job_id(1)),
                        headers={**XML, "X-Request-ID": "ci-retry-7"})  # fmt: skip
    made = client.post("/callbacks/ci/job_01/wrong", data=b"", headers=XML)
    assert given.headers["X-Request-ID"] == "ci-retry-7"
    assert made.status_code == 404 and len(made.headers["X-Request-ID"]) == 24


def test_a_fault_of_ours_is_json_500_logged_without_the_token(
    client: FlaskClient, job_path: str, services: Any, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(type(services.receiver), "ingest", broken)
    response = client.post(job_path, data=notification_xml(ci_job_id(1)), headers=XML)
    assert response.status_code == 500
    assert response.json["error"] == "internal_server_error"
    token = job_path.rsplit("/", 1)[1]
    logged = [r for r in caplog.records if r.exc_info]
    assert logged and "/callbacks/ci/job_01/***" in logged[0].getMessage()
    assert all(token not in r.getMessage() for r in caplog.records)


def test_callbacks_are_served_with_the_proxy_fix_in_place(
    services: Any, engine: Engine, job_path: str
) -> None:
    """With CIRELAY_PROXY_HOPS set, ProxyFix wraps the lane as it wraps Flask: a forwarded
    notification is received and stored with the headers it came with."""
    from dataclasses import replace

    from app import create_app

    proxied = create_app(services=replace(services, settings=replace(services.settings,
                                                                      proxy_hops=1)))  # fmt: skip
    response = proxied.test_client().post(
        job_path, data=notification_xml(ci_job_id(1)),
        headers={**XML, "X-Forwarded-For": "203.0.113.9"},
    )  # fmt: skip
    assert response.status_code == 200
    with engine.connect() as conn:
        (stored,) = conn.execute(store.notifications.select()).mappings().all()
    assert stored["headers"]["X-Forwarded-For"] == "203.0.113.9"
