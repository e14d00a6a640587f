"""Each delivery attempt is a span in the trace of its event's job (restored from the
traceparent stored with the job), the webhook carries that span's ``traceparent``, and the
delivery latency histogram carries it as an exemplar: in one process, with the SDK's
in-memory exporter, a real subscriber on loopback and the deliverer run round by round."""

from __future__ import annotations

from flask.testing import FlaskClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from app import store
from app.delivery import Deliverer
from tests.conftest import Clock
from tests.subscriber import Subscriber
from tests.test_delivery import deliverer, hook, notify, policy, services, subscribe  # noqa: F401
from tests.test_tracing import hex_ids, named, spans  # noqa: F401

JOB_TRACE, SUBMIT_SPAN = "ab" * 16, "cd" * 8


def test_a_delivery_attempt_is_a_span_of_the_jobs_trace_sent_on_the_webhook(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, hook: Subscriber, registry: CollectorRegistry,  # noqa: F811
    spans: InMemorySpanExporter,  # noqa: F811 - the fixtures imported above
) -> None:  # fmt: skip
    subscribe(client, auth, hook.url(), event_types=["com.cirelay.job.succeeded"])
    notify(client, engine, clock, 1)  # the job, as its submit stored it
    with store.transaction(engine) as conn:
        store.update_job(conn, "job_0001", {"traceparent": f"00-{JOB_TRACE}-{SUBMIT_SPAN}-01"})
    notify(client, engine, clock, 1, "Success")

    deliverer.wait_idle()

    deliver = named(spans, "cirelay.deliver")
    trace_id, span_id = hex_ids(deliver)
    assert trace_id == JOB_TRACE
    assert deliver.parent is not None and f"{deliver.parent.span_id:016x}" == SUBMIT_SPAN
    assert deliver.attributes is not None
    assert deliver.attributes["cirelay.delivery.result"] == "success"
    (request,) = hook.accepted()
    assert deliver.attributes["cirelay.event.id"] == request.webhook_id
    assert request.headers["traceparent"] == f"00-{JOB_TRACE}-{span_id}-01"
    exemplars = [
        s.exemplar.labels
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
        if s.name == "cirelay_delivery_latency_seconds_bucket" and s.exemplar is not None
    ]
    assert exemplars == [{"trace_id": JOB_TRACE, "span_id": span_id}]
