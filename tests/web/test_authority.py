"""Who may say what about a job: the queue secret cannot rewrite a job cirelay submitted (its
notifications come to its own CallBack URL), and the queue secret rotates as a list."""

from __future__ import annotations

from dataclasses import replace

import pytest
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from app import Services, build_services, create_app, store
from app.config import Settings
from app.schemas import SchemaSet
from tests.conftest import (
    CORPUS,
    QUEUE_SECRET,
    Clock,
    ci_job_id,
    counts,
    make_job,
    notification_xml,
    outcome_count,
    queue_path,
)

XML = {"Content-Type": "application/xml"}
#: what a forger would have the job produce
FORGED = notification_xml(ci_job_id(1), "Success").replace(
    "split/ballad-04/voice.m4a", "attacker/voice.m4a"
)


@pytest.fixture
def api_job(engine: Engine, clock: Clock) -> str:
    """A job cirelay submitted, CI JobId ci_job_id(1); returns its own callback path."""
    return make_job(engine, "job_01", clock.now, ci_id=ci_job_id(1))


def job_events(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [e.type for e in store.list_events(conn) if e.type.startswith("com.cirelay.job.")]


def test_a_queue_notification_about_a_job_with_its_own_callback_changes_nothing(
    client: FlaskClient, engine: Engine, registry: CollectorRegistry, api_job: str
) -> None:
    """The forged case: a queue notification moving an API job to Success with other result
    files is quarantined as wrong_endpoint; the job keeps its state; CI's real notification
    to the job's own URL is then accepted."""
    before = counts(engine)

    forged = client.post(queue_path(), data=FORGED, headers=XML)

    assert forged.status_code == 400 and forged.json["error"] == "wrong_endpoint"
    with engine.connect() as conn:
        job = store.get_job(conn, "job_01")
        (quarantined,) = store.list_quarantined(conn)
    assert job is not None and job.state == "Submitted" and job.result_files == []
    assert job_events(engine) == []
    assert counts(engine)["notifications"] == before["notifications"]
    assert counts(engine)["jobs"] == before["jobs"]
    assert quarantined.error == "wrong_endpoint" and quarantined.source == "queue"
    assert quarantined.job_id is None and "own CallBack URL" in str(quarantined.reasons)
    assert outcome_count(registry, "wrong_endpoint") == 1

    real = client.post(api_job, data=notification_xml(ci_job_id(1)), headers=XML)

    assert real.status_code == 200 and real.json["results"][0]["outcome"] == "accepted"
    with engine.connect() as conn:
        job = store.get_job(conn, "job_01")
    assert job is not None and job.state == "Success"
    assert [f["object"] for f in job.result_files] == [
        "split/ballad-04/voice.m4a", "split/ballad-04/band.m4a"
    ]  # fmt: skip
    assert job_events(engine) == ["com.cirelay.job.succeeded"]


def test_a_queue_notification_naming_an_api_job_among_others_creates_nothing(
    client: FlaskClient, engine: Engine, clock: Clock
) -> None:
    """Two JobsDetail: one a job nobody submitted, one a job cirelay submitted. All or
    nothing: the unknown job is not created either."""
    two = (CORPUS / "notification/valid/eventname-last-two-jobs.xml").read_text()
    second = "j17fb035ba8bf762cc3a449b6ced401ad"
    make_job(engine, "job_02", clock.now, ci_id=second)
    before = counts(engine)

    response = client.post(queue_path(), data=two, headers=XML)

    assert response.status_code == 400 and response.json["error"] == "wrong_endpoint"
    after = counts(engine)
    assert (after["jobs"], after["notifications"]) == (before["jobs"], before["notifications"])
    assert job_events(engine) == []


def test_a_queue_job_is_still_moved_by_the_queue_url(client: FlaskClient, engine: Engine) -> None:
    created = client.post(queue_path(), data=notification_xml(ci_job_id(3), "Running"),
                          headers=XML)  # fmt: skip
    moved = client.post(queue_path(), data=notification_xml(ci_job_id(3)), headers=XML)
    assert created.status_code == moved.status_code == 200
    assert moved.json["results"][0]["outcome"] == "accepted"
    assert moved.json["results"][0]["state"] == "Success"


def test_replaying_the_quarantined_forgery_still_changes_nothing(
    client: FlaskClient, services: Services, engine: Engine, clock: Clock, api_job: str
) -> None:
    client.post(queue_path(), data=FORGED, headers=XML)
    with engine.connect() as conn:
        (item,) = store.list_quarantined(conn)

    assert services.receiver.replay(item.id, clock.now) == "wrong_endpoint"
    with engine.connect() as conn:
        job = store.get_job(conn, "job_01")
        replayed = store.get_quarantined(conn, item.id)
    assert job is not None and job.state == "Submitted"
    assert replayed is not None and replayed.replay_outcome == "wrong_endpoint"
    assert job_events(engine) == []


# --- the queue secret rotates ---------------------------------------------------------------

NEW_SECRET = "queue-secret-new-0123456789abcdef"


def test_every_queue_secret_in_the_list_is_accepted(
    settings: Settings, engine: Engine, schemas: SchemaSet
) -> None:
    """Rotation: the new secret first (the one printed), the old one still accepted until
    CI's queue is switched over; a secret dropped from the list is a 404."""
    rotated = replace(settings, queue_callback_secrets=(NEW_SECRET, QUEUE_SECRET))
    services = build_services(rotated, registry=CollectorRegistry(), engine=engine,
                              schemas=schemas)  # fmt: skip
    client = create_app(services=services).test_client()
    for n, secret in enumerate((NEW_SECRET, QUEUE_SECRET), start=1):
        body = notification_xml(ci_job_id(10 + n), "Running")
        response = client.post(f"/callbacks/ci/queue/{secret}", data=body, headers=XML)
        assert response.status_code == 200, secret
    assert rotated.queue_callback_secret == NEW_SECRET

    dropped = replace(settings, queue_callback_secrets=(NEW_SECRET,))
    services = build_services(dropped, registry=CollectorRegistry(), engine=engine,
                              schemas=schemas)  # fmt: skip
    client = create_app(services=services).test_client()
    body = notification_xml(ci_job_id(20), "Running")
    assert client.post(queue_path(), data=body, headers=XML).status_code == 404
    assert client.post(f"/callbacks/ci/queue/{NEW_SECRET}", data=body,
                       headers=XML).status_code == 200  # fmt: skip
