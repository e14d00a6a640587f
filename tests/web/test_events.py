"""GET /v1/events: the outbox as CloudEvents, with a cursor."""

from __future__ import annotations

import pytest
from cloudevents.v1.conversion import from_dict
from cloudevents.v1.http import CloudEvent
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine

from tests.conftest import Clock, ci_job_id, make_job, notification_xml

XML = {"Content-Type": "application/xml"}


@pytest.fixture
def three_events(client: FlaskClient, engine: Engine, clock: Clock) -> None:
    """job 1: running, succeeded; then a quarantined notification."""
    path = make_job(engine, "job_01", clock.now, ci_id=ci_job_id(1))
    client.post(path, data=notification_xml(ci_job_id(1), "Running"), headers=XML)
    client.post(path, data=notification_xml(ci_job_id(1)), headers=XML)
    client.post(path, data=b"<broken", headers=XML)


def events(client: FlaskClient, auth: dict[str, str], query: str = "") -> dict:  # type: ignore[type-arg]
    response = client.get(f"/v1/events{query}", headers=auth)
    assert response.status_code == 200, response.json
    return dict(response.json)


def test_events_are_cloudevents_in_sequence_order(
    client: FlaskClient, auth: dict[str, str], three_events: None
) -> None:
    page = events(client, auth)

    parsed = [from_dict(CloudEvent, e) for e in page["events"]]
    assert [e["type"] for e in parsed] == [
        "com.cirelay.job.running",
        "com.cirelay.job.succeeded",
        "com.cirelay.notification.quarantined",
    ]
    assert parsed[1]["subject"] == ci_job_id(1)
    assert parsed[1]["source"].startswith("https://stemlab-1250000000.ci.ap-shanghai.myqcloud.com/")
    assert parsed[1].data["state"] == "Success"
    assert parsed[1].data["previous_state"] == "Running"
    assert parsed[1].data["result_files"]
    seqs = [int(e["sequence"]) for e in parsed]
    assert seqs == sorted(seqs) and len(set(e["id"] for e in parsed)) == 3
    assert page["next_after"] == seqs[-1]


def test_the_cursor_resumes_without_gaps_or_repeats(
    client: FlaskClient, auth: dict[str, str], three_events: None
) -> None:
    first = events(client, auth, "?limit=2")
    rest = events(client, auth, f"?after={first['next_after']}")
    again = events(client, auth, f"?after={rest['next_after']}")

    ids = [e["id"] for e in first["events"] + rest["events"]]
    assert len(ids) == 3 == len(set(ids))
    assert again == {"events": [], "next_after": rest["next_after"]}


@pytest.mark.parametrize(
    ("types", "expected"),
    [
        ("com.cirelay.job.*", ["com.cirelay.job.running", "com.cirelay.job.succeeded"]),
        ("com.cirelay.job.succeeded", ["com.cirelay.job.succeeded"]),
        ("com.cirelay.job.failed,com.cirelay.notification.quarantined",
         ["com.cirelay.notification.quarantined"]),
        ("*", ["com.cirelay.job.running", "com.cirelay.job.succeeded",
               "com.cirelay.notification.quarantined"]),
    ],
)  # fmt: skip
def test_type_filters(
    client: FlaskClient, auth: dict[str, str], three_events: None, types: str, expected: list[str]
) -> None:
    page = events(client, auth, f"?type={types}")
    assert [e["type"] for e in page["events"]] == expected


@pytest.mark.parametrize("query", ["?after=-1", "?after=x", "?limit=0", "?limit=501"])
def test_bad_cursor_parameters_are_400(
    client: FlaskClient, auth: dict[str, str], query: str
) -> None:
    assert client.get(f"/v1/events{query}", headers=auth).status_code == 400


def test_events_need_a_bearer_key(client: FlaskClient) -> None:
    assert client.get("/v1/events").status_code == 401
