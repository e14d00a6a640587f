"""Documents built to make the validators work hard (issue 14 §2): every XML or JSON the
service parses gets the same size and shape caps before any schema work, and an answer lists
at most ``MAX_VIOLATIONS`` violations. Behaviour only (status, what is listed, what is
stored); how long each takes is ``bench/hostile.py``'s to measure.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient
from lxml import etree
from sqlalchemy.engine import Engine

from app import store
from app.notifications import MAX_ATTRIBUTES, MAX_ELEMENTS, parse_notification
from app.schemas import EXPLAIN_BUDGET, MAX_VIOLATIONS, SchemaSet
from tests.conftest import SUCCESS_XML, counts, queue_path
from tests.hostile import xml_to_wire_json

XML = "application/xml"
ATTRIBUTES = b" ".join(b'a%d="1"' % i for i in range(16))
#: the sample's JobsDetail, as one line
DETAIL = etree.tostring(
    etree.fromstring(SUCCESS_XML.encode(), etree.XMLParser(remove_blank_text=True)).find(
        "JobsDetail"
    )
)


def quarantined(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return store.list_quarantined(conn)


def notification(*details: bytes) -> bytes:
    return b"<Response><EventName>TaskFinish</EventName>" + b"".join(details) + b"</Response>"


def test_the_notification_of_the_issue_is_refused_before_any_schema_work(
    client: FlaskClient, engine: Engine
) -> None:
    """5,000 JobsDetail of 16 attributes each (650 KB, inside the old caps) took 100 s of
    CPU: now it is over the element and attribute caps, a 400 with one reason."""
    body = b"<Response>" + (b"<JobsDetail " + ATTRIBUTES + b"/>") * 4999 + b"</Response>"
    response = client.post(queue_path(), data=body, content_type=XML)
    assert response.status_code == 400
    answer = response.get_json()
    assert answer["error"] == "malformed_notification"
    assert str(MAX_ELEMENTS) in answer["message"]
    (item,) = quarantined(engine)
    assert len(item.reasons) == 1


@pytest.mark.parametrize(
    "body",
    [
        # as many bad elements as the cap allows: one violation each
        b"<Response>" + b"<JobsDetail/>" * (MAX_ELEMENTS - 1) + b"</Response>",
        b"<Response>" + b"<JobsDetail><x/></JobsDetail>" * (MAX_ELEMENTS // 2 - 1) + b"</Response>",
        b"<Response>" + b"<a/>" * (MAX_ELEMENTS - 1) + b"</Response>",
        b"<Response><JobsDetail>" + b"<a/>" * (MAX_ELEMENTS - 2) + b"</JobsDetail></Response>",
        # every attribute a document may have, on the root, and every element a violation
        b"<Response " + ATTRIBUTES + b">" + b"<JobsDetail/>" * (MAX_ELEMENTS - 1) + b"</Response>",
        # valid jobs, then a bad one past what xmlschema may look at
        notification(*[DETAIL] * 11, DETAIL.replace(b"<State>Success", b"<State>Nope")),
    ],
    ids=[
        "empty-jobsdetail",
        "unknown-child-in-each-jobsdetail",
        "unknown-children-of-the-root",
        "unknown-children-of-one-jobsdetail",
        "attributes-and-empty-jobsdetail",
        "bad-twelfth-job",
    ],
)
def test_a_notification_with_many_violations_lists_at_most_the_cap(
    client: FlaskClient, engine: Engine, body: bytes
) -> None:
    before = counts(engine)
    response = client.post(queue_path(), data=body, content_type=XML)
    assert response.status_code == 400, response.get_data()[:500]
    answer = response.get_json()
    assert answer["error"] == "invalid_notification"
    assert 1 <= len(answer["details"]) <= MAX_VIOLATIONS
    assert all(d["path"].startswith("/Response") and d["reason"] for d in answer["details"])
    (item,) = quarantined(engine)
    assert item.reasons == answer["details"]
    after = counts(engine)
    assert after["jobs"] == before["jobs"] and after["notifications"] == before["notifications"]


def test_a_violation_beyond_xmlschemas_budget_is_still_named(schemas: SchemaSet) -> None:
    """xmlschema stops before the twelfth job; libxml2 names the violation there."""
    body = notification(*[DETAIL] * 11, DETAIL.replace(b"<State>Success", b"<State>Nope"))
    assert body.count(b"<") > EXPLAIN_BUDGET
    root = etree.fromstring(body)
    (violation,) = schemas.validate("notification", root)
    assert violation.path == "/Response/JobsDetail[12]/State"
    assert "Nope" in violation.reason


def test_a_small_invalid_notification_is_explained_by_xmlschema(schemas: SchemaSet) -> None:
    body = notification(DETAIL.replace(b"<State>Success", b"<State>Nope"))
    (violation,) = schemas.validate("notification", etree.fromstring(body))
    assert violation.path == "/Response/JobsDetail/State"
    assert "value must be one of" in violation.reason  # xmlschema's words, not libxml2's


def test_valid_notifications_up_to_the_caps_are_accepted(schemas: SchemaSet) -> None:
    """The caps refuse nothing real: the most jobs that fit in one notification."""
    jobs = (MAX_ELEMENTS - 2) // sum(1 for _ in etree.fromstring(DETAIL).iter())
    body = notification(*[DETAIL] * jobs)
    assert len(parse_notification(body, XML, schemas).reports) == jobs
    document = json.dumps(xml_to_wire_json(etree.fromstring(body))).encode()
    assert len(parse_notification(document, "application/json", schemas).reports) == jobs


def test_xsi_attributes_within_the_cap_are_accepted(schemas: SchemaSet) -> None:
    xsi = 'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"'
    hints = " ".join(f'xsi:noNamespaceSchemaLocation="x{i}.xsd"' for i in range(1))
    body = SUCCESS_XML.replace("<Response>", f"<Response {xsi} {hints}>", 1).encode()
    assert parse_notification(body, XML, schemas).reports
    assert MAX_ATTRIBUTES >= 1


# --- POST /v1/jobs: the same caps for CI's <Request> XML and for JSON ---------------------


def test_the_job_request_of_the_issue_is_refused_listing_few_violations(
    client: FlaskClient, engine: Engine, auth: dict[str, str]
) -> None:
    """A 630 KB <Request> took 61 s and listed 84,831 violations: the path skipped the
    shape check. Now: refused on the element cap, nothing stored."""
    body = b"<Request>" + (b"<Tag " + ATTRIBUTES + b"/>") * 4000 + b"</Request>"
    before = counts(engine)
    response = client.post("/v1/jobs", data=body, content_type=XML, headers=auth)
    assert 400 <= response.status_code < 500, response.get_data()[:500]
    assert len(response.get_json()["details"]) <= MAX_VIOLATIONS
    assert counts(engine) == before


@pytest.mark.parametrize(
    "body",
    [
        b"<Request>" + b"<Tag/>" * 490 + b"</Request>",
        b"<Request " + ATTRIBUTES + b">" + b"<Bogus/>" * 490 + b"</Request>",
        b"<Request><Tag>VoiceSeparate</Tag>" + b"<Operation/>" * 480 + b"</Request>",
    ],
    ids=["repeated-tag", "attributes-and-unknown", "operations"],
)
def test_a_job_request_with_many_violations_lists_at_most_the_cap(
    client: FlaskClient, engine: Engine, auth: dict[str, str], body: bytes
) -> None:
    before = counts(engine)
    response = client.post("/v1/jobs", data=body, content_type=XML, headers=auth)
    assert 400 <= response.status_code < 500, response.get_data()[:500]
    assert 1 <= len(response.get_json()["details"]) <= MAX_VIOLATIONS
    assert counts(engine) == before


@pytest.mark.parametrize("route", ["/v1/jobs", "/v1/subscriptions"])
def test_a_json_body_with_more_values_than_the_cap_is_400(
    client: FlaskClient, engine: Engine, auth: dict[str, str], route: str
) -> None:
    body = json.dumps({"user_data": "x", "description": [1] * 5000}).encode()
    before = counts(engine)
    response = client.post(route, data=body, content_type="application/json", headers=auth)
    assert response.status_code == 400, response.get_data()[:500]
    assert response.get_json()["error"] == "bad_request"
    assert counts(engine) == before
