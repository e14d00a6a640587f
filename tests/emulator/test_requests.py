"""The emulator's HTTP API in-process (Flask test client, manual clock): request checking,
answers and their schemas, the admin API, and the job life step by step."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from lxml import etree
from werkzeug.test import TestResponse

from app.ci import wire
from app.ci.signing import sign_request
from app.emulator import EmulatorConfig, create_emulator_app, emulator_of
from app.schemas import SchemaSet
from tests.emulator import (
    BUCKET,
    HOST,
    SECRET_ID,
    SECRET_KEY,
    Receiver,
    job_request,
    wait_until,
)

Clock = Callable[[], datetime]


class ManualClock:
    def __init__(self) -> None:
        self.now = datetime(2024, 3, 5, 1, 41, 7, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def config() -> EmulatorConfig:
    return EmulatorConfig(secret_id=SECRET_ID, secret_key=SECRET_KEY, job_seconds=2.0)


@pytest.fixture
def app(config: EmulatorConfig, clock: ManualClock, schemas: SchemaSet) -> Iterator[Flask]:
    app = create_emulator_app(config, clock=clock, schemas=schemas)
    yield app
    emulator_of(app).stop()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def call(
    client: FlaskClient,
    clock: Clock,
    method: str,
    path: str,
    *,
    body: bytes = b"",
    params: dict[str, str] | None = None,
    host: str = HOST,
) -> TestResponse:
    """A request signed for the manual clock's now."""
    headers = {"Host": host}
    if method == "POST":
        headers["Content-Type"] = "application/xml"
    now = int(clock().timestamp())
    headers["Authorization"] = sign_request(
        method, path, params or {}, headers, SECRET_ID, SECRET_KEY, start=now - 60, end=now + 600
    )
    return client.open(
        path,
        method=method,
        data=body,
        query_string=params,
        headers={k: v for k, v in headers.items() if k != "Host"},
        base_url=f"http://{host}",
    )


def post(
    client: FlaskClient, clock: ManualClock, request: dict[str, Any], schemas: SchemaSet
) -> TestResponse:
    return call(
        client, clock, "POST", "/jobs", body=wire.build_create_request(request, schemas=schemas)
    )


def error_of(response: TestResponse, schemas: SchemaSet) -> wire.CIErrorBody:
    assert schemas.validate("error", etree.fromstring(response.data)) == []
    assert response.headers["Server"] == "tencent-ci"
    assert response.headers["x-ci-trace-id"]
    return wire.parse_error(response.data, schemas=schemas)


def detail_of(response: TestResponse) -> etree._Element:
    detail = etree.fromstring(response.data).find("JobsDetail")
    assert detail is not None
    return detail


# --- POST /jobs: what is refused, and how -------------------------------------------------


def without_objects(request: dict[str, Any]) -> None:
    request["Operation"]["Output"]["Object"] = ""
    request["Operation"]["Output"]["AuObject"] = ""


def mp3_at_96k(request: dict[str, Any]) -> None:
    request["Operation"]["VoiceSeparate"]["AudioConfig"]["Samplerate"] = "96000"


def amr_in_stereo(request: dict[str, Any]) -> None:
    request["Operation"]["VoiceSeparate"]["AudioConfig"].update(
        {"Codec": "amr", "Samplerate": "8000", "Channels": "2"}
    )


def no_parameters(request: dict[str, Any]) -> None:
    del request["Operation"]["VoiceSeparate"]


def ftp_callback(request: dict[str, Any]) -> None:
    request["CallBack"] = "ftp://example.org/x"


def tdmq_without_config(request: dict[str, Any]) -> None:
    request["CallBackType"] = "TDMQ"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (without_objects, "Operation.Output.Object"),
        (mp3_at_96k, "Operation.VoiceSeparate.AudioConfig.Samplerate"),
        (amr_in_stereo, "Operation.VoiceSeparate.AudioConfig.Channels"),
        (no_parameters, "Operation.TemplateId"),
        (ftp_callback, "CallBack"),
        (tdmq_without_config, "CallBackMqConfig"),
    ],
)
def test_business_rules_answer_invalid_argument_naming_the_field(
    client: FlaskClient, clock: ManualClock, schemas: SchemaSet, change: Any, field: str
) -> None:
    request = job_request()
    change(request)

    response = post(client, clock, request, schemas)

    assert response.status_code == 400
    error = error_of(response, schemas)
    assert error.code == "InvalidArgument"
    assert error.message.startswith(f"{field}:")
    assert emulator_of(client.application).store.all() == []


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "MissingContent"),
        (b"<Request><Tag>VoiceSeparate</Tag>", "InvalidContent"),
        (b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x "y">]><Request/>', "InvalidContent"),
        (b"<Request><Tag>Transcode</Tag></Request>", "InvalidArgument"),
        (b"<Job/>", "InvalidArgument"),
    ],
)
def test_bad_bodies_get_ci_codes(
    client: FlaskClient, clock: ManualClock, schemas: SchemaSet, body: bytes, code: str
) -> None:
    response = call(client, clock, "POST", "/jobs", body=body)

    assert response.status_code == 400
    assert error_of(response, schemas).code == code


def test_unknown_paths_are_ci_errors(
    client: FlaskClient, clock: ManualClock, schemas: SchemaSet
) -> None:
    response = call(client, clock, "GET", "/templates")
    assert response.status_code == 404
    assert error_of(response, schemas).code == "InvalidUrl"


def test_describe_takes_at_most_ten_ids(
    client: FlaskClient, clock: ManualClock, schemas: SchemaSet
) -> None:
    ids = ",".join(f"j{n:032x}" for n in range(11))
    response = call(client, clock, "GET", f"/jobs/{ids}")
    assert response.status_code == 400
    assert error_of(response, schemas).message.startswith("jobId")


def test_another_region_is_an_invalid_host_when_the_region_is_pinned(
    clock: ManualClock, schemas: SchemaSet
) -> None:
    config = EmulatorConfig(secret_id=SECRET_ID, secret_key=SECRET_KEY, region="ap-beijing")
    app = create_emulator_app(config, clock=clock, schemas=schemas)
    try:
        response = call(app.test_client(), clock, "GET", "/jobs", params={"tag": "VoiceSeparate"})
    finally:
        emulator_of(app).stop()
    assert response.status_code == 400
    assert error_of(response, schemas).code == "InvalidHost"


# --- POST /jobs: what is answered ---------------------------------------------------------


def test_create_answer_is_valid_and_keeps_wildcards(
    client: FlaskClient, clock: ManualClock, schemas: SchemaSet
) -> None:
    response = post(client, clock, job_request(), schemas)

    assert response.status_code == 200
    assert response.headers["x-ci-request-id"]
    assert schemas.validate("create_response", etree.fromstring(response.data)) == []
    detail = detail_of(response)
    assert detail.findtext("CreationTime") == "2024-03-05T09:41:07+0800"
    assert detail.findtext("StartTime") == "-"
    assert detail.findtext("Operation/Output/Object") == "stems/${jobid}/bgm.${ext}"
    assert detail.findtext("Input/BucketId") == BUCKET


def test_each_operation_is_a_job(
    client: FlaskClient, clock: ManualClock, schemas: SchemaSet
) -> None:
    request = job_request()
    request["Operation"] = [request["Operation"], request["Operation"]]

    response = post(client, clock, request, schemas)

    ids = [d.findtext("JobId") for d in etree.fromstring(response.data).iterfind("JobsDetail")]
    assert len(set(ids)) == 2


def test_template_jobs_echo_the_template(
    client: FlaskClient, clock: ManualClock, schemas: SchemaSet
) -> None:
    request = job_request(TemplateId="t1460606b9752148c4ab182f55163ba7cd")
    del request["Operation"]["VoiceSeparate"]

    detail = detail_of(post(client, clock, request, schemas))

    assert detail.findtext("Operation/TemplateId") == "t1460606b9752148c4ab182f55163ba7cd"
    assert detail.findtext("Operation/TemplateName")
    assert detail.find("Operation/VoiceSeparate") is None


def test_queue_ids_are_configurable(clock: ManualClock, schemas: SchemaSet) -> None:
    queue = "p" + "1" * 32
    config = EmulatorConfig(secret_id=SECRET_ID, secret_key=SECRET_KEY, queue_ids={BUCKET: queue})
    app = create_emulator_app(config, clock=clock, schemas=schemas)
    try:
        detail = detail_of(post(app.test_client(), clock, job_request(), schemas))
    finally:
        emulator_of(app).stop()
    assert detail.findtext("QueueId") == queue


def test_jobs_of_another_bucket_do_not_exist_here(
    client: FlaskClient, clock: ManualClock, schemas: SchemaSet
) -> None:
    job_id = detail_of(post(client, clock, job_request(), schemas)).findtext("JobId")

    other = "other-1300000000.ci.ap-guangzhou.myqcloud.com"
    response = call(client, clock, "GET", f"/jobs/{job_id}", host=other)

    assert wire.parse_describe_response(response.data, schemas=schemas) == ([], [job_id])


# --- the job's life, step by step ---------------------------------------------------------


def state_of(client: FlaskClient, clock: ManualClock, job_id: str) -> etree._Element:
    return detail_of(call(client, clock, "GET", f"/jobs/{job_id}"))


def test_life_of_a_job_on_a_manual_clock(
    app: Flask, client: FlaskClient, clock: ManualClock, schemas: SchemaSet
) -> None:
    job_id = str(detail_of(post(client, clock, job_request(), schemas)).findtext("JobId"))
    running = emulator_of(app)

    clock.advance(0.4)
    running.tick(wait_for_finish=True)
    assert state_of(client, clock, job_id).findtext("State") == "Submitted"

    clock.advance(0.2)
    running.tick(wait_for_finish=True)
    detail = state_of(client, clock, job_id)
    assert (detail.findtext("State"), detail.findtext("EndTime")) == ("Running", "-")
    assert detail.findtext("StartTime") == "2024-03-05T09:41:07+0800"

    clock.advance(1.5)
    running.tick(wait_for_finish=True)
    detail = state_of(client, clock, job_id)
    assert detail.findtext("State") == "Success"
    assert detail.findtext("EndTime") == "2024-03-05T09:41:09+0800"
    assert detail.findtext("Operation/Output/AuObject") == f"stems/{job_id}/vocal.mp3"
    md5s = detail.findall("Operation/MediaResult/OutputFile/Md5Info")
    assert [m.findtext("ObjectName") for m in md5s] == [
        f"stems/{job_id}/vocal.mp3",
        f"stems/{job_id}/bgm.mp3",
    ]


# --- admin --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"explode": {"next": 1}},
        {"drop": {"probability": 2}},
        {"drop": {"next": -1}},
        {"drop": {"next": "1"}},
        {"reorder": {"mode": "sideways"}},
        {"delay": {"minutes": 1}},
        {"seed": "x"},
        [1, 2],
    ],
)
def test_admin_refuses_bad_fault_settings(client: FlaskClient, payload: Any) -> None:
    response = client.post("/_emulator/faults", json=payload)
    assert response.status_code == 400
    assert response.json is not None and response.json["error"] == "bad_request"


def test_admin_sets_and_resets_faults(client: FlaskClient) -> None:
    status = client.post("/_emulator/faults", json={"drop": {"next": 2}, "seed": 3}).json
    assert status is not None
    assert status["remaining"]["drop"] == 2
    assert status["settings"]["seed"] == 3

    reset = client.post("/_emulator/faults", json={"reset": True}).json
    assert reset is not None and reset["remaining"]["drop"] == 0


def test_admin_can_be_turned_off(clock: ManualClock, schemas: SchemaSet) -> None:
    config = EmulatorConfig(secret_id=SECRET_ID, secret_key=SECRET_KEY, admin=False)
    app = create_emulator_app(config, clock=clock, schemas=schemas)
    try:
        assert app.test_client().get("/_emulator/faults").status_code == 404
    finally:
        emulator_of(app).stop()


# --- the queue's callback -----------------------------------------------------------------


@pytest.mark.parametrize(("callback", "expected"), [(None, 1), ("no", 0)])
def test_queue_callback_serves_jobs_without_their_own(
    schemas: SchemaSet, callback: str | None, expected: int
) -> None:
    receiver = Receiver.start()
    config = EmulatorConfig(
        secret_id=SECRET_ID,
        secret_key=SECRET_KEY,
        job_seconds=0.05,
        queue_callback_url=receiver.url("/queue"),
        queue_callback_format="JSON",
    )

    def clock() -> datetime:
        return datetime.now(UTC)

    app = create_emulator_app(config, clock=clock, schemas=schemas)
    try:
        response = post(app.test_client(), clock, job_request(callback=callback), schemas)
        job_id = detail_of(response).findtext("JobId")
        running = emulator_of(app)
        wait_until(lambda: running.store.get(BUCKET, [job_id])[0][0].is_finished)
        if expected:
            [got] = receiver.wait("/queue", 1)
            assert got.content_type == "application/json"
        else:
            time.sleep(0.2)
            assert receiver.at("/queue") == []
            assert running.notifier.deliveries(job_id) == []
    finally:
        emulator_of(app).stop()
        receiver.close()
