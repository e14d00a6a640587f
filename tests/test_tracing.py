"""Tracing in one process, with the OpenTelemetry SDK's in-memory exporter (the trace through
several processes is tests/test_tracing_e2e.py).

- Off (the default): every helper is a no-op (the shared null context, no headers, no
  exemplar), no server span middleware is installed, a submitted job stores no traceparent.
- On: a request's server span continues the client's ``traceparent``; a callback's span
  names its route without the token; the CI call is a client span carrying CI's RequestId
  whose context goes out in the request's ``traceparent`` header (not signed, and CI still
  verifies the signature); log lines carry the trace and span ids; the latency histograms
  carry the span as an exemplar in the OpenMetrics exposition.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from flask import Flask
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from app import create_app, logs, store, tracing
from app.ci.client import CIClient
from app.web.spans import RequestSpans
from tests.ci.test_client import RecordingCI, Reply, created_body, make_client, verify
from tests.ci.test_rules import valid_request
from tests.conftest import CALLBACK_KEYS, ci_job_id, job_json, make_job, notification_xml
from tests.web.test_submit import emulator, services  # noqa: F401 - CI is the emulator

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on for the test, exporting to memory; off again after."""
    exporter = InMemorySpanExporter()
    tracing.configure(True, "cirelay-test", exporter=exporter)
    try:
        yield exporter
    finally:
        tracing.shutdown()


@pytest.fixture
def traced_app(spans: InMemorySpanExporter, app: Flask) -> Flask:
    """The app built while tracing is on (the factory installs the span middleware then)."""
    return create_app(services=app.extensions["cirelay"])


def named(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


# --- off --------------------------------------------------------------------------------------


def test_off_every_helper_is_a_no_op(app: Flask) -> None:
    assert not tracing.is_enabled()
    assert tracing.span("x") is tracing.span("y")  # the one shared null context
    with tracing.span("x") as current:
        assert current is None
        assert tracing.inject_headers() == {}
        assert tracing.exemplar() is None
        assert tracing.current_traceparent() is None
    assert not isinstance(app.wsgi_app, RequestSpans)


def test_off_a_submitted_job_stores_no_traceparent(
    app: Flask, engine: Engine, auth: dict[str, str]
) -> None:
    answer = app.test_client().post(
        "/v1/jobs", json=job_json(), headers=auth | {"traceparent": TRACEPARENT}
    )
    assert answer.status_code == 201, answer.text
    with engine.connect() as conn:
        assert store.job_traceparent(conn, answer.json["id"]) is None


# --- on ---------------------------------------------------------------------------------------


def test_a_request_span_continues_the_clients_traceparent(
    traced_app: Flask, spans: InMemorySpanExporter, auth: dict[str, str]
) -> None:
    answer = traced_app.test_client().get(
        "/v1/jobs", headers=auth | {"traceparent": TRACEPARENT}
    )
    assert answer.status_code == 200
    answer.close()  # the span ends with the answer's body
    span = named(spans, "GET /v1/jobs")
    assert hex_ids(span)[0] == CLIENT_TRACE
    assert span.parent is not None and f"{span.parent.span_id:016x}" == CLIENT_SPAN
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == 200


def test_a_callbacks_span_names_its_route_without_the_token_and_continues_the_jobs_trace(
    traced_app: Flask, spans: InMemorySpanExporter, engine: Engine
) -> None:
    now = datetime.now(UTC)
    path = make_job(engine, "job_traced", now, ci_job_id(2))
    submit = f"00-{'ab' * 16}-{'cd' * 8}-01"  # as the job's submit would have stored it
    with store.transaction(engine) as conn:
        store.update_job(conn, "job_traced", {"traceparent": submit})
    token = path.rsplit("/", 1)[1]

    answer = traced_app.test_client().post(
        path, data=notification_xml(ci_job_id(2)), content_type="application/xml"
    )

    assert answer.status_code == 200, answer.text
    answer.close()
    request = named(spans, "POST /callbacks/ci/{id}/***")
    assert request.attributes is not None
    assert request.attributes["url.path"] == "/callbacks/ci/job_traced/***"
    ingest = named(spans, "cirelay.ingest")
    assert hex_ids(ingest)[0] == "ab" * 16  # the job's trace, restored by its id
    assert ingest.parent is not None and f"{ingest.parent.span_id:016x}" == "cd" * 8
    assert [link.context.span_id for link in ingest.links] == [
        request.get_span_context().span_id  # type: ignore[union-attr]
    ]
    commit = named(spans, "cirelay.commit")
    assert commit.parent is not None
    assert commit.parent.span_id == ingest.get_span_context().span_id  # type: ignore[union-attr]
    recorded = json.dumps([dict(s.attributes or {}) for s in spans.get_finished_spans()])
    assert token not in recorded and CALLBACK_KEYS[0] not in recorded


def test_the_ci_call_is_a_span_with_cis_request_id_sent_as_traceparent(
    spans: InMemorySpanExporter,
) -> None:
    ci = RecordingCI().start()
    try:
        client: CIClient = make_client(ci.url)
        ci.reply(Reply(body=created_body(), headers={"x-ci-request-id": "NjU0ZmQ4ZjBf"}))
        with tracing.span("submit"):
            client.create_job(valid_request())
    finally:
        ci.stop()
    call = named(spans, "CI create")
    assert call.attributes is not None
    assert call.attributes["ci.request_id"] == "NjU0ZmQ4ZjBf"
    trace_id, span_id = hex_ids(call)
    [sent] = ci.requests
    assert sent.headers["traceparent"].startswith(f"00-{trace_id}-{span_id}-")
    assert "traceparent" not in sent.headers["Authorization"]  # not among the signed headers
    verify(sent)  # CI's check of the signature still passes


def test_log_lines_carry_the_trace_and_span_ids(spans: InMemorySpanExporter) -> None:
    out = io.StringIO()
    handler = logs.handler("json")
    handler.setStream(out)  # type: ignore[attr-defined]
    logger = logging.getLogger("tests.tracing")
    logger.addHandler(handler)
    try:
        with tracing.span("work") as current:
            logger.warning("inside")
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
    inside, outside = (json.loads(line) for line in out.getvalue().splitlines())
    assert current is not None
    context = current.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert "trace_id" not in outside


def test_latency_histograms_carry_the_span_as_an_exemplar_in_openmetrics(
    traced_app: Flask, spans: InMemorySpanExporter, engine: Engine
) -> None:
    path = make_job(engine, "job_exemplar", datetime.now(UTC), ci_job_id(3))
    client = traced_app.test_client()
    posted = client.post(path, data=notification_xml(ci_job_id(3)), content_type="application/xml")
    assert posted.status_code == 200
    posted.close()

    answer = client.get("/metrics", headers={"Accept": OPENMETRICS})

    assert answer.content_type.startswith("application/openmetrics-text")
    request = named(spans, "POST /callbacks/ci/{id}/***")
    trace_id, span_id = hex_ids(request)
    exemplars = {
        (s.name, s.exemplar.labels["trace_id"], s.exemplar.labels["span_id"])
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
        if s.exemplar is not None
    }
    assert ("cirelay_notification_processing_seconds_bucket", trace_id, span_id) in exemplars
    assert {name for name, _, _ in exemplars} >= {"cirelay_http_request_duration_seconds_bucket"}


def test_a_submit_stores_its_span_as_the_jobs_traceparent(
    traced_app: Flask, spans: InMemorySpanExporter, engine: Engine, auth: dict[str, str]
) -> None:
    answer = traced_app.test_client().post(
        "/v1/jobs", json=job_json(), headers=auth | {"traceparent": TRACEPARENT}
    )
    assert answer.status_code == 201, answer.text
    answer.close()
    submit = named(spans, "POST /v1/jobs")
    trace_id, span_id = hex_ids(submit)
    assert trace_id == CLIENT_TRACE
    with engine.connect() as conn:
        stored = store.job_traceparent(conn, answer.json["id"])
    assert stored == f"00-{CLIENT_TRACE}-{span_id}-01"
    call = named(spans, "CI create")
    assert call.parent is not None and f"{call.parent.span_id:016x}" == span_id
    assert tracing.job_parent(engine, answer.json["id"]) == stored
