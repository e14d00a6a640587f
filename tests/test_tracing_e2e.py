"""One job's trace, end to end, through real processes: the client's ``traceparent`` on
``POST /v1/jobs`` reaches the subscriber's webhook through the emulator (a real CI stand-in
process), ``cirelay serve`` (two gunicorn workers) and ``cirelay worker``.

Each process exports its spans over OTLP/HTTP to :class:`tests.otlp_collector.Collector`
(the SDK's in-memory exporter lives in one process; see there). The test reads the trace
back as a collector would and checks every link of the chain:

    client span ─▶ POST /v1/jobs ─▶ CI create (CI's RequestId)
                        ├▶ cirelay.ingest (per callback; linked to the callback's request span)
                        │     └▶ cirelay.commit
                        └▶ cirelay.deliver ─traceparent─▶ the subscriber
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from app import store
from tests.conftest import job_json
from tests.e2e_stack import Stack, poll
from tests.otlp_collector import Collector, Span
from tests.subscriber import Subscriber

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    with Collector() as running:
        yield running


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, collector: Collector) -> Iterator[Stack]:
    """One stack for the module (each test follows a job of its own)."""
    env = {
        "CIRELAY_TRACING": "on",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # export within a tenth of a second
        "CIRELAY_DELIVERY_ALLOWED_NETWORKS": "127.0.0.0/8",
    }
    with Stack.start(tmp_path_factory.mktemp("stack"), env) as running:
        try:
            yield running
        except BaseException:
            print(running.tails())
            raise


def only(spans: list[Span], what: str) -> Span:
    assert len(spans) == 1, f"{what}: {spans}"
    return spans[0]


def test_one_trace_from_the_clients_submit_to_the_subscribers_request(
    stack: Stack, collector: Collector
) -> None:
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    with Subscriber() as hook:
        created = stack.http.post(f"{stack.base}/v1/subscriptions", headers=stack.auth,
                                  json={"url": hook.url(), "event_types": ["*"]})  # fmt: skip
        assert created.status_code == 201, created.text

        response = stack.http.post(
            f"{stack.base}/v1/jobs", json=job_json(), timeout=30,
            headers=stack.auth | {"traceparent": f"00-{trace_id}-{client_span}-01"},
        )  # fmt: skip
        assert response.status_code == 201, response.text
        job = response.json()
        stack.wait_final(job["id"])
        succeeded = poll("the job.succeeded webhook", lambda: [
            r for r in hook.received() if r.event()["type"] == "com.cirelay.job.succeeded"
        ] or None)  # fmt: skip

    # the submit: a server span continuing the client's, and the CI call inside it
    submit = poll("the submit span", lambda: [
        s for s in collector.trace(trace_id) if s.name == "POST /v1/jobs"
    ] or None)[0]  # fmt: skip
    assert submit.parent_span_id == client_span
    assert submit.attributes["http.response.status_code"] == 201
    ci_call = only([s for s in collector.trace(trace_id) if s.name == "CI create"], "CI call")
    assert ci_call.parent_span_id == submit.span_id
    assert ci_call.attributes["ci.request_id"]  # CI's RequestId (x-ci-request-id)

    # stored with the job
    with stack.engine.connect() as conn:
        stored = conn.execute(
            sa.select(store.jobs.c.traceparent).where(store.jobs.c.id == job["id"])
        ).scalar_one()
    assert stored == f"00-{trace_id}-{submit.span_id}-01"

    # CI's callbacks (no trace header from CI) continue the job's trace, by job id
    def ingested() -> list[Span] | None:
        found = [s for s in collector.trace(trace_id) if s.name == "cirelay.ingest"]
        return found or None

    ingests = poll("ingest spans in the job's trace", ingested)

    def callback_requests() -> dict[str, Span] | None:
        found = {s.span_id: s for s in collector.named("POST /callbacks/ci/{id}/***")}
        return found if all(i.links and i.links[0][1] in found for i in ingests) else None

    requests = poll("the callback requests' spans", callback_requests)
    for ingest in ingests:
        assert ingest.parent_span_id == submit.span_id
        (linked,) = ingest.links
        assert linked[1] in requests, "linked to its callback request's span"
        assert requests[linked[1]].trace_id != trace_id  # CI's request: a trace of its own
        commit = poll("its commit span", lambda i=ingest: [
            s for s in collector.trace(trace_id)
            if s.name == "cirelay.commit" and s.parent_span_id == i.span_id
        ] or None)  # fmt: skip
        assert len(commit) == 1
    assert "/***" in next(iter(requests.values())).attributes["url.path"]  # no token

    # the delivery: a span in the job's trace, whose context the subscriber received
    event_id = succeeded[0].event()["id"]

    def delivered() -> list[Span] | None:
        found = [s for s in collector.trace(trace_id) if s.name == "cirelay.deliver"
                 and s.attributes["cirelay.event.id"] == event_id]  # fmt: skip
        return found or None

    deliver = poll("the deliver span", delivered)[0]
    assert deliver.parent_span_id == submit.span_id
    assert deliver.attributes["cirelay.delivery.result"] == "success"
    assert succeeded[0].headers["traceparent"] == f"00-{trace_id}-{deliver.span_id}-01"
    assert {s.service for s in collector.trace(trace_id)} == {"cirelay"}


def test_without_a_client_traceparent_the_submit_starts_the_jobs_trace(
    stack: Stack, collector: Collector
) -> None:
    job = stack.submit(job_json())
    with stack.engine.connect() as conn:
        stored = conn.execute(
            sa.select(store.jobs.c.traceparent).where(store.jobs.c.id == job["id"])
        ).scalar_one()
    _, trace_id, span_id, _ = stored.split("-")
    submit = poll("the submit span", lambda: [
        s for s in collector.trace(trace_id) if s.span_id == span_id
    ] or None)[0]  # fmt: skip
    assert submit.name == "POST /v1/jobs"
    assert submit.parent_span_id == ""  # a root: the job's trace starts here
