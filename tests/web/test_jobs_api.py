"""GET /v1/jobs/<id> and GET /v1/jobs."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine

from app import store
from app.models import JobState, new_id
from tests.conftest import CORPUS, Clock, ci_job_id, make_job, notification_xml

XML = {"Content-Type": "application/xml"}


@pytest.fixture
def finished_job(client: FlaskClient, engine: Engine, clock: Clock) -> str:
    path = make_job(engine, "job_01", clock.now, ci_id=ci_job_id(1))
    client.post(path, data=notification_xml(ci_job_id(1), "Running"), headers=XML)
    client.post(path, data=notification_xml(ci_job_id(1)), headers=XML)
    return "job_01"


@pytest.mark.parametrize("ident", ["job_01", ci_job_id(1)], ids=["cirelay-id", "ci-job-id"])
def test_job_by_either_id(
    client: FlaskClient, auth: dict[str, str], finished_job: str, ident: str
) -> None:
    response = client.get(f"/v1/jobs/{ident}", headers=auth)

    assert response.status_code == 200
    job = response.json
    assert job["id"] == "job_01" and job["ci_job_id"] == ci_job_id(1)
    assert job["state"] == "Success"
    assert job["input"]["bucket"] == "stemlab-1250000000"
    assert job["output"]["au_object"] == "split/ballad-04/voice.m4a"
    assert job["result_files"][0] == {
        "bucket": "stemlab-1250000000",
        "region": "ap-shanghai",
        "object": "split/ballad-04/voice.m4a",
        "md5": "6ec1c16f968c9f8e67c1f38e642baca5",
    }
    assert job["media_info"]["duration_seconds"] == 187.733
    assert job["media_info"]["audio"][0]["sample_rate"] == 44100
    assert job["user_data"] == "client=karaoke-web;ticket=4471"
    assert job["timings"]["ci_duration_seconds"] == 78
    assert job["error"] is None
    assert [(n["state"], n["outcome"]) for n in job["notifications"]] == [
        ("Running", "accepted"),
        ("Success", "accepted"),
    ]


def test_failed_job_carries_code_and_message(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock
) -> None:
    body = (CORPUS / "notification/valid/failed-with-code-message.xml").read_bytes()
    client.post(f"/callbacks/ci/queue/{_secret()}", data=body, headers=XML)
    (job,) = client.get("/v1/jobs?state=Failed", headers=auth).json["jobs"]
    assert job["error"]["code"] and job["error"]["message"]


def _secret() -> str:
    from tests.conftest import QUEUE_SECRET

    return QUEUE_SECRET


def test_unknown_job_is_404(client: FlaskClient, auth: dict[str, str]) -> None:
    assert client.get("/v1/jobs/job_nope", headers=auth).status_code == 404


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="}],
    ids=["none", "wrong-key", "wrong-scheme"],
)
def test_read_api_needs_a_bearer_key(client: FlaskClient, headers: dict[str, str]) -> None:
    response = client.get("/v1/jobs", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json["error"] == "unauthorized"


def test_list_pages_with_a_cursor_newest_first(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock
) -> None:
    ids = []
    for n in range(5):
        clock.now += timedelta(seconds=1)
        ids.append(new_id("job", clock.now))
        make_job(engine, ids[-1], clock.now, ci_id=ci_job_id(n))

    first = client.get("/v1/jobs?limit=2", headers=auth).json
    second = client.get(f"/v1/jobs?limit=2&cursor={first['next_cursor']}", headers=auth).json
    third = client.get(f"/v1/jobs?limit=2&cursor={second['next_cursor']}", headers=auth).json

    seen = [j["id"] for page in (first, second, third) for j in page["jobs"]]
    assert seen == list(reversed(ids))
    assert third["next_cursor"] is None


def test_list_filters_by_state_tag_and_time(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock
) -> None:
    make_job(engine, "job_a", clock.now, ci_id=ci_job_id(1))
    clock.now += timedelta(hours=1)
    path = make_job(engine, "job_b", clock.now, ci_id=ci_job_id(2))
    client.post(path, data=notification_xml(ci_job_id(2)), headers=XML)

    def ids(query: str) -> list[str]:
        return [j["id"] for j in client.get(f"/v1/jobs?{query}", headers=auth).json["jobs"]]

    assert ids("state=Success") == ["job_b"]
    assert ids("state=Submitted,Success") == ["job_b", "job_a"]
    assert ids("tag=VoiceSeparate") == ["job_b", "job_a"]
    assert ids("tag=Transcode") == []
    after = (clock.now - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    assert ids(f"created_after={after}") == ["job_b"]
    assert ids(f"created_before={after}") == ["job_a"]


def test_list_filters_jobs_cirelay_has_not_yet_had_acknowledged(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock
) -> None:
    make_job(engine, "job_a", clock.now, ci_id=ci_job_id(1))
    make_job(engine, "job_b", clock.now)
    with store.transaction(engine) as conn:
        store.update_job(conn, "job_b", {"state": JobState.SUBMITTING})
    listed = client.get("/v1/jobs?state=Submitting", headers=auth).json["jobs"]
    assert [(j["id"], j["state"]) for j in listed] == [("job_b", "Submitting")]


@pytest.mark.parametrize(
    "query", ["state=Done", "limit=0", "limit=500", "limit=x", "created_after=yesterday"]
)
def test_bad_filters_are_400_naming_the_field(
    client: FlaskClient, auth: dict[str, str], query: str
) -> None:
    response = client.get(f"/v1/jobs?{query}", headers=auth)
    assert response.status_code == 400
    assert response.json["details"][0]["field"] == query.split("=")[0]
