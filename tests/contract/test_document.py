"""The OpenAPI and AsyncAPI documents: valid, served, and true to the routes Flask has."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from jsonschema import Draft7Validator, Draft202012Validator, FormatChecker
from openapi_spec_validator import validate

from app.contract import EVENT_TYPES, asyncapi, openapi_document
from app.contract.asyncapi import CARRIES

#: served pages that are not API operations: the viewer's files (and the console's HTML)
NOT_API = ("/docs/assets/", "/console/")
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
ASYNCAPI_SCHEMA = Path(__file__).parent / "asyncapi-3.0.0.schema.json"


def routes(app: Flask) -> set[tuple[str, str]]:
    """Every (path, method) Flask routes, in OpenAPI's spelling (``/v1/jobs/{ident}``)."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.rule.startswith(NOT_API):
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            found.add((path, method.lower()))
    return found


def documented() -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in openapi_document()["paths"].items()
        for method in item
        if method in METHODS
    }


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in openapi_document()["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def test_every_route_is_documented_and_every_documented_route_exists(app: Flask) -> None:
    served, written = routes(app), documented()
    assert served - written == set(), "routes missing from the OpenAPI document (app/contract)"
    assert written - served == set(), "documented operations Flask does not route"


def test_the_drift_test_sees_a_new_route(app: Flask) -> None:
    app.add_url_rule("/v1/undocumented/<int:n>", "undocumented", lambda n: "", methods=["PUT"])
    assert routes(app) - documented() == {("/v1/undocumented/{n}", "put")}


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_operation_says_who_may_call_it_and_how_it_fails() -> None:
    ids = [operation["operationId"] for _, _, operation in operations()]
    assert len(ids) == len(set(ids))
    for path, method, operation in operations():
        where = f"{method.upper()} {path}"
        assert "security" in operation, where
        answers = operation["responses"]
        for status, answer in answers.items():
            if "$ref" in answer:
                assert answer["$ref"].endswith(f"Error{status}"), where
            else:
                assert "X-Request-ID" in answer["headers"], f"{where} {status}"
        if operation["security"]:
            assert "401" in answers, where
            scope = operation["security"][0]["bearer"]
            assert scope == (["read"] if method == "get" else ["admin"]), where
            assert ("403" in answers) == (method != "get"), where
        if "requestBody" in operation and path.startswith("/v1/"):
            assert {"413", "422"} <= set(answers), where


def test_every_error_answer_is_the_one_error_shape() -> None:
    components = openapi_document()["components"]
    for name, answer in components["responses"].items():
        schema = answer["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}, name
    assert components["schemas"]["Error"]["required"] == ["error", "message", "details"]


def test_served_without_a_key(client: FlaskClient) -> None:
    answer = client.get("/openapi.json")
    assert answer.status_code == 200
    assert answer.get_json() == json.loads(json.dumps(openapi_document()))
    answer = client.get("/asyncapi.json")
    assert answer.status_code == 200
    assert answer.get_json() == json.loads(json.dumps(asyncapi()))


# --- the event catalogue -------------------------------------------------------------------


def test_every_event_type_has_a_valid_schema_and_an_example_that_satisfies_it() -> None:
    assert {
        "com.cirelay.job.submitted", "com.cirelay.job.running", "com.cirelay.job.succeeded",
        "com.cirelay.job.failed", "com.cirelay.job.paused", "com.cirelay.job.cancelled",
        "com.cirelay.notification.quarantined", "com.cirelay.subscription.disabled",
    } <= set(EVENT_TYPES)  # fmt: skip
    envelope = openapi_document()["components"]["schemas"]["CloudEvent"]
    shown = openapi_document()["components"]["schemas"]["EventType"]["properties"]["example"]
    for name, event_type in EVENT_TYPES.items():
        Draft202012Validator.check_schema(event_type.schema)
        example = event_type.example()
        assert example["type"] == name
        Draft202012Validator(shown, format_checker=FormatChecker()).validate(example)
        logged = list(Draft202012Validator(envelope).iter_errors(example)) == []
        assert logged == event_type.logged, name  # only a type outside the log lacks `sequence`
        Draft202012Validator(event_type.schema, format_checker=FormatChecker()).validate(
            example["data"]
        )


def test_a_job_event_schema_refuses_another_state() -> None:
    schema = EVENT_TYPES["com.cirelay.job.succeeded"].schema
    data = EVENT_TYPES["com.cirelay.job.failed"].example()["data"]
    assert list(Draft202012Validator(schema).iter_errors(data))


def test_the_catalogue_is_served_behind_a_key(client: FlaskClient, auth: dict[str, str]) -> None:
    assert client.get("/v1/event-types").status_code == 401
    listed = client.get("/v1/event-types", headers=auth).get_json()["event_types"]
    assert [t["type"] for t in listed] == list(EVENT_TYPES)
    one = client.get("/v1/event-types/com.cirelay.job.failed", headers=auth)
    assert one.status_code == 200
    assert one.get_json() == json.loads(json.dumps(EVENT_TYPES["com.cirelay.job.failed"].view()))
    missing = client.get("/v1/event-types/com.cirelay.job.exploded", headers=auth)
    assert missing.status_code == 404
    assert missing.get_json()["error"] == "not_found"


# --- AsyncAPI ------------------------------------------------------------------------------


def test_the_asyncapi_document_is_valid_asyncapi_3() -> None:
    """Checked against the AsyncAPI 3.0.0 JSON Schema (npm @asyncapi/specs 6.11.1,
    schemas/3.0.0-without-$id.json)."""
    document = json.loads(json.dumps(asyncapi()))
    meta = json.loads(ASYNCAPI_SCHEMA.read_text())
    errors = sorted(Draft7Validator(meta).iter_errors(document), key=str)
    assert not errors, [e.message[:300] for e in errors[:5]]


def test_every_asyncapi_message_is_an_event_type_with_a_payload_schema_its_example_meets() -> None:
    document = asyncapi()
    messages = document["components"]["messages"]
    assert {m["name"] for m in messages.values()} == set(EVENT_TYPES)
    for message in messages.values():
        Draft202012Validator.check_schema(message["payload"])
        checker = Draft202012Validator(message["payload"], format_checker=FormatChecker())
        for example in message["examples"]:
            checker.validate(example["payload"])
        other = next(t for t in EVENT_TYPES if t != message["name"])
        assert list(checker.iter_errors(EVENT_TYPES[other].example()))
    for name, channel in document["channels"].items():
        carried = {
            messages[m["$ref"].rsplit("/", 1)[1]]["name"] for m in channel["messages"].values()
        }
        assert carried == {t.type for t in CARRIES[name]}, name
    assert set(document["channels"]) == {"webhook", "eventStream", "natsSubject", "amqpRoutingKey"}


def test_the_test_event_is_sent_to_webhooks_only() -> None:
    """It is no outbox event: never on the stream, NATS or AMQP (a broker's test is a 409)."""
    test_event = "com.cirelay.subscription.test"
    assert test_event in EVENT_TYPES
    for name, carried in CARRIES.items():
        assert (test_event in {t.type for t in carried}) == (name == "webhook"), name


@pytest.mark.parametrize(
    ("channel", "url"),
    [
        ("natsSubject", "nats://nats.example.com/EVENTS?subject_prefix=acme.cirelay"),
        (
            "amqpRoutingKey",
            "amqp://mq.example.com/%2F?exchange=events&routing_key_prefix=acme.cirelay",
        ),
    ],
)
def test_the_broker_channels_name_the_topics_the_transports_publish_to(
    channel: str, url: str
) -> None:
    """The channel's address with its parameters is the subject / routing key the delivery
    computes (``BrokerTarget.topic``) for every event type of the log, default prefix too."""
    from app.subscriptions import DEFAULT_TOPIC_PREFIX, BrokerTarget

    described = asyncapi()["channels"][channel]
    parameters = described["parameters"]
    assert parameters["prefix"]["default"] == DEFAULT_TOPIC_PREFIX
    target = BrokerTarget.parse(url)
    for event in CARRIES[channel]:
        name = event.type.removeprefix("com.cirelay.")
        assert name in parameters["event"]["enum"]
        address = described["address"].format(prefix="acme.cirelay", event=name)
        assert target.topic(event.type) == address
    assert len(parameters["event"]["enum"]) == len(CARRIES[channel])


@pytest.mark.parametrize("event_type", ["com.cirelay.job.exploded", "cirelay.job.running"])
def test_the_outbox_check_refuses_an_unknown_type(event_type: str) -> None:
    from tests.contract.outbox import problems

    assert problems(event_type, {}) != []


def test_the_outbox_check_is_wired_into_every_write_to_the_outbox(engine: Any) -> None:
    """The autouse fixture really stands on the write path: an event the catalogue does not
    allow, written the way the services write one, fails and leaves nothing behind."""
    from datetime import UTC, datetime

    import sqlalchemy as sa

    from app import store
    from tests.contract.outbox import OffCatalogue

    event = {"id": "evt_off_catalogue", "type": "com.cirelay.job.exploded", "source": "/t",
             "subject": None, "job_id": None, "time": datetime.now(UTC), "data": {}}  # fmt: skip
    with pytest.raises(OffCatalogue), store.transaction(engine) as conn:
        store.insert_event(conn, event)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(store.events)).scalar() == 0


def test_the_job_example_meets_its_schema_and_the_codec_matrix_is_the_rules() -> None:
    from app.ci.rules import check_request
    from app.submission import request_from_json

    schemas = openapi_document()["components"]["schemas"]
    job = schemas["JobRequest"]
    Draft202012Validator(job).validate(job["example"])
    assert check_request(request_from_json(job["example"], default_bucket="media-1250000000",
                                           default_region="ap-guangzhou")[0]) == []  # fmt: skip
    amr_at_44100 = {"audio_config": {"codec": "amr", "samplerate": 44100}}
    bad = {**job["example"], "voice_separate": amr_at_44100}
    assert list(Draft202012Validator(job).iter_errors(bad))
