"""What a URL can carry that no row or column can hold: a row id beyond a signed 64-bit integer
(SQLite cannot bind it, PostgreSQL's BIGINT overflows) is no row, 404; a NUL in the path or
the query string (PostgreSQL refuses it in any text parameter) is a 400. Both were 500s."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from app.web.inputs import MAX_INT64

BEYOND = str(MAX_INT64 + 1)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", f"/v1/quarantine/{BEYOND}"),
        ("post", f"/v1/quarantine/{BEYOND}/replay"),
        ("post", f"/v1/subscriptions/sub_x/deliveries/{BEYOND}/retry"),
    ],
)
def test_a_row_id_beyond_int64_is_no_row(
    client: FlaskClient, auth: dict[str, str], method: str, path: str
) -> None:
    answer = getattr(client, method)(path, headers=auth)
    assert answer.status_code == 404
    assert answer.get_json()["error"] == "not_found"
    at_max = getattr(client, method)(path.replace(BEYOND, str(MAX_INT64)), headers=auth)
    assert at_max.status_code == 404  # routed, and looked up: no such row


@pytest.mark.parametrize(
    "url",
    [
        "/v1/jobs?user_data=%00",
        "/v1/jobs?ci_job_id=a%00b",
        "/v1/jobs/job_%00",
        "/v1/workflow-executions?job=job_%00",
        "/v1/workflow-executions?object=%00",
        "/v1/workflow-executions/wfx_%00",
        "/v1/quarantine?job_id=%00",
        "/v1/audit?actor=%00",
        "/v1/subscriptions/sub_%00/deliveries",
        "/v1/jobs?%00=1",
    ],
)
def test_a_nul_in_the_url_is_a_400(client: FlaskClient, auth: dict[str, str], url: str) -> None:
    answer = client.get(url, headers=auth)
    assert answer.status_code == 400
    assert answer.get_json()["error"] == "bad_request"


def test_a_percent_encoded_percent_is_not_a_nul(client: FlaskClient, auth: dict[str, str]) -> None:
    assert client.get("/v1/jobs?user_data=%2500", headers=auth).status_code == 200
