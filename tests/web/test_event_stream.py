"""GET /v1/events/stream: Server-Sent Events over the outbox."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from cloudevents.v1.conversion import from_dict
from cloudevents.v1.http import CloudEvent
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from app import Services
from app.web import events as events_view
from tests.conftest import Clock, ci_job_id, make_job, notification_xml

XML = {"Content-Type": "application/xml"}


@pytest.fixture(autouse=True)
def fast_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(events_view, "STREAM_POLL_SECONDS", 0.01)
    monkeypatch.setattr(events_view, "STREAM_KEEPALIVE_SECONDS", 0.05)


@pytest.fixture
def job_path(client: FlaskClient, engine: Engine, clock: Clock) -> str:
    path = make_job(engine, "job_01", clock.now, ci_id=ci_job_id(1))
    client.post(path, data=notification_xml(ci_job_id(1), "Running"), headers=XML)
    return path


def messages(chunks: Iterator[bytes]) -> Iterator[str]:
    """SSE messages (the text between blank lines), as the server writes them."""
    buffer = ""
    for chunk in chunks:
        buffer += chunk.decode()
        while "\n\n" in buffer:
            message, buffer = buffer.split("\n\n", 1)
            yield message


def fields(message: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in message.splitlines() if not line.startswith(":"))


def open_stream(client: FlaskClient, auth: dict[str, str], **headers: str):  # type: ignore[no-untyped-def]
    response = client.get("/v1/events/stream", headers={**auth, **headers}, buffered=False)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    return response, messages(iter(response.response))


def next_event(stream: Iterator[str]) -> dict[str, str]:
    for message in stream:
        if message.startswith("id:"):
            return fields(message)
    raise AssertionError("stream ended")


def test_events_arrive_in_order_with_their_sequence_as_id(
    client: FlaskClient, auth: dict[str, str], job_path: str
) -> None:
    response, stream = open_stream(client, auth)
    first = next_event(stream)
    client.post(job_path, data=notification_xml(ci_job_id(1)), headers=XML)  # while connected
    second = next_event(stream)
    response.close()

    assert int(second["id"]) > int(first["id"])
    assert (first["event"], second["event"]) == (
        "com.cirelay.job.running",
        "com.cirelay.job.succeeded",
    )
    event = from_dict(CloudEvent, json.loads(second["data"]))
    assert event["subject"] == ci_job_id(1) and event["sequence"] == second["id"]


def test_last_event_id_resumes_after_it(
    client: FlaskClient, auth: dict[str, str], job_path: str
) -> None:
    response, stream = open_stream(client, auth)
    first = next_event(stream)
    response.close()
    client.post(job_path, data=notification_xml(ci_job_id(1)), headers=XML)

    response, stream = open_stream(client, auth, **{"Last-Event-ID": first["id"]})
    resumed = next_event(stream)
    response.close()
    assert resumed["event"] == "com.cirelay.job.succeeded"


def test_an_idle_stream_sends_keep_alive_comments(
    client: FlaskClient, auth: dict[str, str], job_path: str
) -> None:
    response, stream = open_stream(client, auth)
    next_event(stream)
    assert any(m.startswith(": keep-alive") for _, m in zip(range(5), stream, strict=False))
    response.close()


def test_type_filter_applies_to_the_stream(
    client: FlaskClient, auth: dict[str, str], job_path: str
) -> None:
    client.post(job_path, data=notification_xml(ci_job_id(1)), headers=XML)
    response = client.get(
        "/v1/events/stream?type=com.cirelay.job.succeeded", headers=auth, buffered=False
    )
    stream = messages(iter(response.response))
    assert next_event(stream)["event"] == "com.cirelay.job.succeeded"
    response.close()


def test_connected_clients_are_counted(
    client: FlaskClient, auth: dict[str, str], job_path: str, registry: CollectorRegistry
) -> None:
    response, stream = open_stream(client, auth)
    next_event(stream)
    assert registry.get_sample_value("cirelay_sse_clients") == 1
    response.close()
    assert registry.get_sample_value("cirelay_sse_clients") == 0


def test_stream_needs_a_bearer_key_and_a_numeric_cursor(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    assert client.get("/v1/events/stream").status_code == 401
    bad = client.get("/v1/events/stream", headers={**auth, "Last-Event-ID": "abc"})
    assert bad.status_code == 400


def test_streams_per_process_are_capped_so_threads_stay_free_for_notifications(
    client: FlaskClient, auth: dict[str, str], services: Services
) -> None:
    """Each stream holds a gunicorn thread; past CIRELAY_MAX_STREAMS the answer is 503 with
    Retry-After, and a closed stream (started or not) frees its slot."""
    limit = services.settings.max_streams
    opened = [open_stream(client, auth)[0] for _ in range(limit)]
    refused = client.get("/v1/events/stream", headers=auth)
    assert refused.status_code == 503 and refused.headers["Retry-After"]
    assert refused.json["error"] == "unavailable"
    opened.pop().close()  # never read from: closing still frees the slot
    again, stream = open_stream(client, auth)
    assert next(stream).startswith("retry:")
    for response in [*opened, again]:
        response.close()
    assert client.get("/v1/events/stream", headers=auth, buffered=False).status_code == 200
