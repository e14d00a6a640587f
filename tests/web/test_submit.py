"""POST /v1/jobs against the CI emulator on loopback (a real HTTP server in a thread)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine
from werkzeug.serving import make_server

from app import Services, build_services, create_app, store
from app.config import Settings
from app.emulator import EmulatorConfig, create_emulator_app, emulator_of
from app.schemas import SchemaSet
from tests.conftest import Clock, counts, job_json

SECRET_ID = "AKIDtest0123456789abcdef0123456789"
SECRET_KEY = "test-secret-key-0123456789abcdef"


@pytest.fixture
def emulator() -> Iterator[tuple[str, Flask]]:
    config = EmulatorConfig(
        secret_id=SECRET_ID,
        secret_key=SECRET_KEY,
        job_seconds=0.3,
        callback_retry_schedule=(),
    )
    app = create_emulator_app(config)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", app
    finally:
        server.shutdown()
        server.server_close()
        emulator_of(app).stop()


@pytest.fixture
def services(  # the CI settings point at the emulator
    settings: Settings,
    engine: Engine,
    schemas: SchemaSet,
    registry: CollectorRegistry,
    clock: Clock,
    emulator: tuple[str, Flask],
) -> Services:
    ci = replace(
        settings,
        ci_endpoint=emulator[0],
        ci_secret_id=SECRET_ID,
        ci_secret_key=SECRET_KEY,
        ci_bucket="media-1250000000",
        ci_region="ap-guangzhou",
    )
    return build_services(ci, registry=registry, engine=engine, schemas=schemas)


def ci_jobs(emulator: tuple[str, Flask]) -> list[Any]:
    """The jobs the emulator holds (its in-process store: what CI was really sent)."""
    return list(emulator_of(emulator[1]).store.all())


def set_faults(emulator: tuple[str, Flask], faults: dict[str, Any]) -> None:
    response = requests.post(f"{emulator[0]}/_emulator/faults", json=faults, timeout=5)
    assert response.ok, response.text


def test_submit_creates_the_job_at_ci_and_answers_201(
    client: FlaskClient, auth: dict[str, str], engine: Engine, emulator: tuple[str, Flask]
) -> None:
    response = client.post("/v1/jobs", json=job_json(), headers=auth)

    assert response.status_code == 201, response.json
    job = response.json
    assert job["state"] == "Submitted"
    assert job["ci_job_id"].startswith("j") and len(job["ci_job_id"]) == 33
    assert job["callback_url"].startswith(f"http://cirelay.test/callbacks/ci/{job['id']}/")
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    (at_ci,) = ci_jobs(emulator)
    assert at_ci.job_id == job["ci_job_id"]
    with engine.connect() as conn:
        (event,) = store.list_events(conn)
    assert event.type == "com.cirelay.job.submitted"


def test_the_callback_url_sent_to_ci_is_the_jobs_own(
    client: FlaskClient, auth: dict[str, str], emulator: tuple[str, Flask]
) -> None:
    job = client.post("/v1/jobs", json=job_json(), headers=auth).json
    (at_ci,) = ci_jobs(emulator)
    assert at_ci.callback.url == job["callback_url"]


def test_every_rule_violation_is_reported_at_once_and_nothing_is_sent(
    client: FlaskClient, auth: dict[str, str], engine: Engine, emulator: tuple[str, Flask]
) -> None:
    bad = job_json(
        voice_separate={
            "audio_mode": "AudioAndBackground",
            "audio_config": {"codec": "amr", "samplerate": 44100, "bitrate": 2000,
                             "channels": 2},
        },
        output={"region": "ap-guangzhou", "bucket": "media-1250000000"},
        user_data="\u00e9t\u00e9",
    )  # fmt: skip
    response = client.post("/v1/jobs", json=bad, headers=auth)

    assert response.status_code == 422
    fields = {d["field"] for d in response.json["details"]}
    assert {
        "Operation.VoiceSeparate.AudioConfig.Samplerate",
        "Operation.VoiceSeparate.AudioConfig.Bitrate",
        "Operation.VoiceSeparate.AudioConfig.Channels",
        "Operation.Output.Object",
        "Operation.UserData",
    } <= fields, fields
    assert ci_jobs(emulator) == []
    assert counts(engine)["jobs"] == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (job_json(colour="red"), "colour"),
        (job_json(input={"object": "a.wav", "bucket": "Bad_Bucket"}), "input.bucket"),
        (job_json(output="stems/"), "output"),
        (job_json(voice_separate={"audio_mode": "IsAudio", "pitch": 3}), "voice_separate.pitch"),
    ],
)
def test_shape_errors_name_their_field(
    client: FlaskClient, auth: dict[str, str], body: dict[str, Any], field: str
) -> None:
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 422
    assert field in {d["field"] for d in response.json["details"]}


def test_same_idempotency_key_same_body_returns_the_same_job_without_a_second_ci_call(
    client: FlaskClient, auth: dict[str, str], emulator: tuple[str, Flask]
) -> None:
    headers = {**auth, "Idempotency-Key": "order-1-attempt"}
    first = client.post("/v1/jobs", json=job_json(), headers=headers)
    second = client.post("/v1/jobs", json=job_json(), headers=headers)

    assert first.status_code == second.status_code == 201
    assert second.json["id"] == first.json["id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert len(ci_jobs(emulator)) == 1


def test_same_idempotency_key_other_body_is_409(
    client: FlaskClient, auth: dict[str, str], emulator: tuple[str, Flask]
) -> None:
    headers = {**auth, "Idempotency-Key": "order-1-attempt"}
    client.post("/v1/jobs", json=job_json(), headers=headers)
    response = client.post("/v1/jobs", json=job_json(user_data="order-2"), headers=headers)

    assert response.status_code == 409
    assert len(ci_jobs(emulator)) == 1


def test_ci_request_xml_is_accepted_too(
    client: FlaskClient, auth: dict[str, str], emulator: tuple[str, Flask]
) -> None:
    from tests.conftest import CORPUS

    body = (CORPUS / "create_request/valid").glob("*inline*.xml").__next__().read_bytes()
    response = client.post(
        "/v1/jobs", data=body, headers={**auth, "Content-Type": "application/xml"}
    )
    assert response.status_code == 201, response.json
    (at_ci,) = ci_jobs(emulator)
    assert at_ci.callback.url == response.json["callback_url"]


def test_ci_refusal_is_a_clear_error_and_the_job_is_failed_with_cis_code(
    client: FlaskClient, auth: dict[str, str], engine: Engine, emulator: tuple[str, Flask]
) -> None:
    set_faults(emulator, {"create_5xx": {"next": 1}})
    response = client.post("/v1/jobs", json=job_json(), headers=auth)

    assert response.status_code == 502
    assert response.json["error"] == "ci_unavailable"
    job_id = next(d["job_id"] for d in response.json["details"] if "job_id" in d)
    job = client.get(f"/v1/jobs/{job_id}", headers=auth).json
    assert job["state"] == "Failed"
    assert job["error"]["code"] == "ServiceUnavailable"
    assert job["error"]["request_id"]
    assert ci_jobs(emulator) == []


def test_ci_timeout_is_504_and_the_job_waits_for_its_callback(
    services: Services,
    client: FlaskClient,
    auth: dict[str, str],
    emulator: tuple[str, Flask],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client_for = services.submitter.client_for
    monkeypatch.setattr(
        services.submitter,
        "client_for",
        lambda b, r: _with_read_timeout(client_for(b, r), 0.5),
    )
    set_faults(emulator, {"create_timeout": {"next": 1, "seconds": 2, "creates_job": True}})
    response = client.post("/v1/jobs", json=job_json(), headers=auth)

    assert response.status_code == 504
    job_id = next(d["job_id"] for d in response.json["details"] if "job_id" in d)
    job = client.get(f"/v1/jobs/{job_id}", headers=auth).json
    assert job["state"] == "Submitting"
    assert job["error"] is None
    assert job["submit_error"]["ambiguous"] is True


def _with_read_timeout(ci_client: Any, seconds: float) -> Any:
    ci_client._timeout = (3.0, seconds)
    return ci_client


def test_submit_needs_a_bearer_key(client: FlaskClient) -> None:
    assert client.post("/v1/jobs", json=job_json()).status_code == 401


def test_other_content_types_are_415(client: FlaskClient, auth: dict[str, str]) -> None:
    response = client.post("/v1/jobs", data="x", headers={**auth, "Content-Type": "text/plain"})
    assert response.status_code == 415


def test_ci_request_metrics_count_the_create(
    client: FlaskClient, auth: dict[str, str], registry: CollectorRegistry
) -> None:
    client.post("/v1/jobs", json=job_json(), headers=auth)
    labels = {"operation": "create", "outcome": "ok"}
    assert registry.get_sample_value("cirelay_ci_requests_total", labels) == 1
    transition = {"from_state": "Submitting", "to_state": "Submitted"}
    assert registry.get_sample_value("cirelay_job_state_transitions_total", transition) == 1


def test_app_without_ci_credentials_answers_503_not_500(
    settings: Settings, engine: Engine, schemas: SchemaSet, auth: dict[str, str]
) -> None:
    app = create_app(services=build_services(settings, registry=CollectorRegistry(),
                                             engine=engine, schemas=schemas))  # fmt: skip
    body = job_json(input={"object": "a.wav", "bucket": "media-1250000000",
                           "region": "ap-guangzhou"})  # fmt: skip
    response = app.test_client().post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 503
    assert "CIRELAY_CI" in response.json["message"]
    assert counts(engine)["jobs"] == 0  # nothing half-written
