"""Bad input to the ``/v1`` API and to callback URLs that used to answer 500 (issue 14 §2):
each is now a 4xx with the JSON error shape, and writes nothing.

Query strings: ``str.isdigit()`` accepts Unicode digits (``²``) that ``int()`` refuses, and
numbers beyond 64 bits overflow the database's integers. Times: a valid ISO time whose UTC
is before year 1 or after 9999. Bodies: JSON nested 100,000 deep (the JSON parser's
recursion) and a callback token that is not ASCII (``hmac.compare_digest`` refuses
non-ASCII text).
"""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine

from tests.conftest import counts, job_json

DEEP = 100_000


def deep_json(kind: str) -> bytes:
    if kind == "array":
        return b"[" * DEEP + b"]" * DEEP
    return b'{"a":' * DEEP + b"1" + b"}" * DEEP


def assert_clean_4xx(response: Any, status: int | None = None) -> None:
    assert 400 <= response.status_code < 500, response.get_data()[:500]
    if status is not None:
        assert response.status_code == status, response.get_data()[:500]
    document = response.get_json()
    assert set(document) == {"error", "message", "details"}, document


@pytest.fixture
def subscription(client: FlaskClient, auth: dict[str, str], settings: Any) -> str:
    """A subscription to a public address (its URL is only checked, never called here)."""
    response = client.post(
        "/v1/subscriptions",
        json={"url": "https://93.184.215.14/hook", "event_types": ["*"]},
        headers=auth,
    )
    assert response.status_code == 201, response.get_data()
    return str(response.get_json()["id"])


@pytest.mark.parametrize(
    "query",
    [
        "after=18446744073709551616",  # 2**64
        "after=9223372036854775808",  # 2**63: beyond a signed BIGINT
        "after=" + "9" * 5000,
        "after=%C2%B2",  # ²
        "after=%D9%A3",  # ARABIC-INDIC DIGIT THREE
        "limit=%C2%B2",
        "limit=%EF%BC%91",  # FULLWIDTH DIGIT ONE
        "after=-1",
        "after=+1",
        "after=%201",
    ],
)
def test_events_query_numbers_outside_ascii_or_64_bits_are_400(
    client: FlaskClient, auth: dict[str, str], query: str
) -> None:
    assert_clean_4xx(client.get(f"/v1/events?{query}", headers=auth), 400)


@pytest.mark.parametrize("after", ["%C2%B2", "18446744073709551616"])
def test_event_stream_resume_point_outside_ascii_or_64_bits_is_400(
    client: FlaskClient, auth: dict[str, str], after: str
) -> None:
    assert_clean_4xx(client.get(f"/v1/events/stream?after={after}", headers=auth), 400)
    raw = {"Last-Event-ID": "²"} | auth
    assert_clean_4xx(client.get("/v1/events/stream", headers=raw), 400)


@pytest.mark.parametrize(
    "query",
    [
        "limit=%C2%B2",
        "limit=" + "9" * 400,
        "created_after=0001-01-01T00:00:00%2B14:00",
        "created_before=9999-12-31T23:59:59-14:00",
    ],
)
def test_job_list_query_values_that_overflow_are_400(
    client: FlaskClient, auth: dict[str, str], query: str
) -> None:
    assert_clean_4xx(client.get(f"/v1/jobs?{query}", headers=auth), 400)


@pytest.mark.parametrize(
    "query",
    ["limit=%C2%B2", "before=%C2%B2", "before=18446744073709551616", "before=" + "9" * 400],
)
def test_delivery_list_query_numbers_outside_ascii_or_64_bits_are_400(
    client: FlaskClient, auth: dict[str, str], subscription: str, query: str
) -> None:
    path = f"/v1/subscriptions/{subscription}/deliveries?{query}"
    assert_clean_4xx(client.get(path, headers=auth), 400)


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
def test_replay_since_a_time_outside_the_calendar_in_utc_is_422(
    client: FlaskClient, auth: dict[str, str], subscription: str, since: str
) -> None:
    path = f"/v1/subscriptions/{subscription}/replay"
    assert_clean_4xx(client.post(path, json={"since": since}, headers=auth), 422)


JSON_BODY_ROUTES = [
    ("POST", "/v1/jobs"),
    ("POST", "/v1/subscriptions"),
    ("PATCH", "/v1/subscriptions/{sub}"),
    ("POST", "/v1/subscriptions/{sub}/rotate-secret"),
    ("POST", "/v1/subscriptions/{sub}/replay"),
]


@pytest.mark.parametrize("kind", ["array", "object"])
@pytest.mark.parametrize(("method", "route"), JSON_BODY_ROUTES)
def test_deeply_nested_json_body_is_400_and_writes_nothing(
    client: FlaskClient,
    auth: dict[str, str],
    engine: Engine,
    subscription: str,
    method: str,
    route: str,
    kind: str,
) -> None:
    before = counts(engine)
    response = client.open(
        route.format(sub=subscription),
        method=method,
        data=deep_json(kind),
        content_type="application/json",
        headers=auth,
    )
    assert_clean_4xx(response, 400)
    assert response.get_json()["error"] == "bad_request"
    assert counts(engine) == before


@pytest.mark.parametrize(("method", "route"), JSON_BODY_ROUTES)
def test_json_body_deeper_than_the_cap_is_400(
    client: FlaskClient,
    auth: dict[str, str],
    settings: Any,
    subscription: str,
    method: str,
    route: str,
) -> None:
    depth = settings.max_depth + 1
    body = b'{"a":' * depth + b"1" + b"}" * depth
    response = client.open(
        route.format(sub=subscription), method=method, data=body,
        content_type="application/json", headers=auth,
    )  # fmt: skip
    assert_clean_4xx(response, 400)


def test_json_job_within_the_caps_is_still_accepted_shape_wise(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    """The caps refuse nothing a real job has: a job's JSON reaches the job rules (CI is not
    configured here, so a valid job ends at CI, not at the parser)."""
    response = client.post("/v1/jobs", json=job_json(user_data="x" * 10), headers=auth)
    assert response.status_code not in (400, 413), response.get_data()


@pytest.mark.parametrize(
    "token", ["%C3%A9%C3%A9", "%C3%A9" * 43, "%F0%9F%98%80", "%FF%FE", "%E2%80%8B"]
)
def test_non_ascii_callback_token_is_404_and_writes_nothing(
    client: FlaskClient, engine: Engine, token: str
) -> None:
    before = counts(engine)
    response = client.post(
        f"/callbacks/ci/job_01/{token}", data=b"<Response/>", content_type="application/xml"
    )
    assert_clean_4xx(response, 404)
    assert counts(engine) == before


def test_non_ascii_job_id_in_a_callback_url_is_404(client: FlaskClient) -> None:
    response = client.post(
        "/callbacks/ci/%C3%A9%C3%A9/abc", data=b"<Response/>", content_type="application/xml"
    )
    assert_clean_4xx(response, 404)
