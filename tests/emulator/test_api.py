"""The emulator as a real process, driven by Tencent's own SDK and by signed requests, with a
real HTTP server receiving its callbacks."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
from lxml import etree
from qcloud_cos.cos_exception import CosServiceError

from app.ci import wire
from app.ci.client import CIClient
from app.config import Settings
from app.models import JobState
from app.notifications import parse_notification
from app.schemas import SchemaSet
from tests.emulator import (
    BUCKET,
    COS_HOST,
    REGION,
    SECRET_ID,
    SECRET_KEY,
    EmulatorProcess,
    Receiver,
    create_body,
    create_job,
    job_request,
    job_state,
    sdk_client,
    signed,
    wait_until,
)

JOB_ID = re.compile(r"j[0-9a-f]{32}")
CI_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+0800")


# --- Tencent's SDK, unchanged -------------------------------------------------------------


def test_sdk_creates_a_job_and_reads_it_back(emulator: EmulatorProcess) -> None:
    client = sdk_client(emulator.port)

    created = client.ci_create_media_jobs(Bucket=BUCKET, Jobs=job_request("songs/sdk.wav"), Lst={})
    detail = created["JobsDetail"][0]
    assert JOB_ID.fullmatch(detail["JobId"])
    assert detail["State"] == "Submitted"
    assert detail["StartTime"] == "-" and detail["EndTime"] == "-"
    assert CI_TIME.fullmatch(detail["CreationTime"])
    assert detail["Operation"]["Output"]["Object"] == "stems/${jobid}/bgm.${ext}"

    got = client.ci_get_media_jobs(Bucket=BUCKET, JobIDs=detail["JobId"])
    assert got["JobsDetail"][0]["JobId"] == detail["JobId"]
    listed = client.ci_list_media_jobs(Bucket=BUCKET, Tag="VoiceSeparate", Size=100)
    assert detail["JobId"] in [d["JobId"] for d in listed["JobsDetail"]]


def test_sdk_sees_the_job_finish(emulator: EmulatorProcess) -> None:
    client = sdk_client(emulator.port)
    created = client.ci_create_media_jobs(Bucket=BUCKET, Jobs=job_request("songs/b.wav"), Lst={})
    job_id = created["JobsDetail"][0]["JobId"]

    def finished() -> Any:
        detail = client.ci_get_media_jobs(Bucket=BUCKET, JobIDs=job_id)["JobsDetail"][0]
        return detail if detail["State"] == "Success" else None

    detail = wait_until(finished, timeout=10)
    assert detail["Operation"]["Output"]["AuObject"] == f"stems/{job_id}/vocal.mp3"
    assert CI_TIME.fullmatch(detail["EndTime"])


def test_sdk_reports_a_wrong_key_as_ci_does(emulator: EmulatorProcess) -> None:
    client = sdk_client(emulator.port, secret_key="not-the-key")
    with pytest.raises(CosServiceError) as caught:
        client.ci_get_media_jobs(Bucket=BUCKET, JobIDs="j" + "0" * 32)
    assert caught.value.get_status_code() == 403
    assert caught.value.get_error_code() == "AccessDenied"
    assert "SignatureDoesNotMatch" in caught.value.get_error_msg()


def test_cirelay_client_round_trip(emulator: EmulatorProcess, schemas: SchemaSet) -> None:
    settings = Settings(
        ci_endpoint=emulator.url,
        ci_secret_id=SECRET_ID,
        ci_secret_key=SECRET_KEY,
        ci_bucket=BUCKET,
        ci_region=REGION,
    )
    client = CIClient(settings, clock=lambda: datetime.now(UTC), schemas=schemas)

    created = client.create_job(job_request("songs/client.wav"))
    job_id = created.reports[0].ci_job_id
    reports, missing = client.describe_jobs([job_id, "j" + "f" * 32])
    assert [r.ci_job_id for r in reports] == [job_id]
    assert missing == ["j" + "f" * 32]


# --- lifecycle and callbacks --------------------------------------------------------------


def test_job_moves_submitted_running_success(emulator: EmulatorProcess, schemas: SchemaSet) -> None:
    job_id = create_job(emulator, job_request("songs/life.wav"), schemas)
    seen: list[str] = []

    def success() -> bool:
        state = job_state(emulator, job_id, schemas)
        if not seen or seen[-1] != state:
            seen.append(state)
        return state == "Success"

    wait_until(success, timeout=10, interval=0.01)
    assert seen[-1] == "Success"
    assert set(seen) <= {"Submitted", "Running", "Success"}
    assert seen == sorted(seen, key=["Submitted", "Running", "Success"].index)


def test_xml_callback_is_a_valid_notification(
    emulator: EmulatorProcess, receiver: Receiver, schemas: SchemaSet
) -> None:
    job_id = create_job(emulator, job_request(callback=receiver.url("/cb/xml")), schemas)

    [got] = receiver.wait("/cb/xml", 1)
    assert got.content_type == "application/xml"
    assert schemas.validate("notification", etree.fromstring(got.body)) == []
    notification = parse_notification(got.body, got.content_type, schemas)
    [report] = notification.reports
    assert (report.ci_job_id, report.state) == (job_id, JobState.SUCCESS)
    assert report.output["object"] == f"stems/{job_id}/bgm.mp3"
    assert [f["object"] for f in report.result_files] == [
        f"stems/{job_id}/vocal.mp3",
        f"stems/{job_id}/bgm.mp3",
    ]
    assert all(re.fullmatch(r"[0-9a-f]{32}", f["md5"]) for f in report.result_files)
    assert report.media_info["audio"][0]["codec"] == "mp3"


def test_json_callback_follows_the_json_shape(
    emulator: EmulatorProcess, receiver: Receiver, schemas: SchemaSet
) -> None:
    job_id = create_job(
        emulator,
        job_request(callback=receiver.url("/cb/json"), callback_format="JSON", codec="aac"),
        schemas,
    )

    [got] = receiver.wait("/cb/json", 1)
    assert got.content_type == "application/json"
    document = json.loads(got.body)
    assert "Response" not in document
    assert isinstance(document["JobsDetail"], list)
    detail = document["JobsDetail"][0]
    assert "Message" not in detail  # empty elements are omitted
    assert isinstance(detail["Operation"]["MediaResult"]["OutputFile"]["ObjectName"], list)
    assert detail["Operation"]["MediaInfo"]["Stream"]["Audio"][0]["Channel"] == "2"
    notification = parse_notification(got.body, got.content_type, schemas)
    assert notification.reports[0].ci_job_id == job_id
    assert notification.reports[0].output["au_object"] == f"stems/{job_id}/vocal.m4a"


def test_callback_no_sends_nothing(
    emulator: EmulatorProcess, receiver: Receiver, schemas: SchemaSet
) -> None:
    job_id = create_job(emulator, job_request(callback="no"), schemas)

    wait_until(lambda: job_state(emulator, job_id, schemas) == "Success")
    time.sleep(0.3)
    assert emulator.deliveries(job_id) == []


def test_input_with_fail_ends_failed_with_a_ci_code(
    emulator: EmulatorProcess, receiver: Receiver, schemas: SchemaSet
) -> None:
    create_job(
        emulator, job_request("songs/fail-notfound.wav", callback=receiver.url("/cb/fail")), schemas
    )

    [got] = receiver.wait("/cb/fail", 1)
    detail = etree.fromstring(got.body).find("JobsDetail")
    assert detail is not None
    assert detail.findtext("State") == "Failed"
    assert detail.findtext("Code") == "1103"
    assert "ResourceNotFound" in (detail.findtext("Message") or "")
    assert detail.find("Operation/MediaResult") is None


# --- describe and list --------------------------------------------------------------------


def test_describe_names_missing_ids(emulator: EmulatorProcess, schemas: SchemaSet) -> None:
    job_id = create_job(emulator, job_request(), schemas)
    missing = "j" + "a" * 32

    response = signed(emulator.url, "GET", f"/jobs/{job_id},{missing}")

    assert response.status_code == 200
    assert schemas.validate("describe_response", etree.fromstring(response.content)) == []
    reports, absent = wire.parse_describe_response(response.content, schemas=schemas)
    assert [r.ci_job_id for r in reports] == [job_id]
    assert absent == [missing]


def test_list_pages_with_next_token(emulator: EmulatorProcess, schemas: SchemaSet) -> None:
    created = [create_job(emulator, job_request(f"pages/{n}.wav"), schemas) for n in range(3)]
    params = {"tag": "VoiceSeparate", "size": "2", "orderByTime": "Asc"}
    seen: list[str] = []
    token = ""
    for _ in range(20):
        response = signed(emulator.url, "GET", "/jobs", params={**params, "nextToken": token})
        assert response.status_code == 200, response.text
        reports, next_token = wire.parse_list_response(response.content, schemas=schemas)
        assert len(reports) <= 2
        seen += [r.ci_job_id for r in reports]
        if not next_token:
            break
        token = next_token
    assert seen[-3:] == created
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "tag"),
        ({"tag": "VoiceSeparate", "size": "101"}, "size"),
        ({"tag": "VoiceSeparate", "orderByTime": "Sideways"}, "orderByTime"),
        ({"tag": "VoiceSeparate", "states": "Done"}, "states"),
        ({"tag": "VoiceSeparate", "startCreationTime": "yesterday"}, "startCreationTime"),
        ({"tag": "VoiceSeparate", "nextToken": "forged"}, "nextToken"),
    ],
)
def test_list_refuses_bad_parameters(
    emulator: EmulatorProcess, params: dict[str, str], field: str, schemas: SchemaSet
) -> None:
    response = signed(emulator.url, "GET", "/jobs", params=params)
    assert response.status_code == 400
    error = wire.parse_error(response.content, schemas=schemas)
    assert error.code == "InvalidArgument"
    assert error.message.startswith(field)


def test_list_filters_by_state_and_time(emulator: EmulatorProcess, schemas: SchemaSet) -> None:
    job_id = create_job(emulator, job_request("filters/one.wav"), schemas)
    wait_until(lambda: job_state(emulator, job_id, schemas) == "Success")
    params = {
        "tag": "VoiceSeparate",
        "states": "Success",
        "size": "100",
        "inputObject": "filters/one.wav",
        "startCreationTime": "2001-01-01T00:00:00+0800",
    }

    response = signed(emulator.url, "GET", "/jobs", params=params)
    reports, _ = wire.parse_list_response(response.content, schemas=schemas)
    assert [r.ci_job_id for r in reports] == [job_id]

    later = signed(
        emulator.url,
        "GET",
        "/jobs",
        params={**params, "startCreationTime": "2999-01-01T00:00:00+0800"},
    )
    assert wire.parse_list_response(later.content, schemas=schemas)[0] == []


# --- signatures and hosts -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"secret_key": "wrong-key"}, 403, "AccessDenied"),
        ({"secret_id": "AKIDnobody"}, 401, "SecretidNotExist"),
        ({"window": (1_000_000_000, 1_000_000_600)}, 401, "SignatureExpired"),
    ],
)
def test_signature_failures_use_ci_codes(
    emulator: EmulatorProcess, schemas: SchemaSet, change: dict[str, object], status: int, code: str
) -> None:
    response = signed(
        emulator.url,
        "POST",
        "/jobs",
        body=create_body(job_request(), schemas),
        **change,
    )

    assert response.status_code == status
    assert schemas.validate("error", etree.fromstring(response.content)) == []
    assert wire.parse_error(response.content, schemas=schemas).code == code
    assert response.headers["Server"] == "tencent-ci"
    assert response.headers["x-ci-request-id"]
    assert response.headers["x-ci-trace-id"]


def test_missing_authorization(emulator: EmulatorProcess, schemas: SchemaSet) -> None:
    response = requests.get(
        emulator.url + "/jobs/j" + "0" * 32, headers={"Host": COS_HOST}, timeout=5
    )
    assert response.status_code == 401
    error = wire.parse_error(response.content, schemas=schemas)
    assert error.code == "MissingAuthorization"
    assert error.resource  # COS hosts name the resource


def test_other_hosts_are_refused(emulator: EmulatorProcess, schemas: SchemaSet) -> None:
    response = signed(emulator.url, "GET", "/jobs", host="example.com", params={"tag": "x"})
    assert response.status_code == 400
    assert wire.parse_error(response.content, schemas=schemas).code == "InvalidHost"


def test_sigterm_stops_the_process_cleanly() -> None:
    process = EmulatorProcess.start({})
    assert process.admin("GET", "/health") == {"status": "ok"}
    assert process.stop() == 0
    assert "cirelay emulator stopped" in process.logs()
