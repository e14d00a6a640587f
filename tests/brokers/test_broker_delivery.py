"""Delivery to the real NATS JetStream and RabbitMQ, through the worker's own deliverer
(driven round by round, with the test's clock, like the webhook tests), on SQLite and
PostgreSQL: the same machinery as webhooks — type filters, per-job order, retries, replays,
the deliveries API and metrics — with each broker's durability (Nats-Msg-Id, publisher
confirms, mandatory routing) and the messages read as a consumer would, with the
``cloudevents`` SDK and the ``standardwebhooks`` verifier.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from app import Services, build_services, create_app, store
from app.config import Settings
from app.delivery import Deliverer, Policy, build_senders
from app.delivery.transports import Transports
from app.schemas import SchemaSet
from tests.brokers.brokers import Exchange, JetStream, Received
from tests.conftest import API_KEY, Clock, ci_job_id
from tests.subscriber import Subscriber
from tests.tcp_proxy import TcpProxy
from tests.test_delivery import deliveries, notify, sample, subscribe
from tests.test_tracing import hex_ids, named, spans  # noqa: F401 - spans: a fixture

JOB_TYPES = ["com.cirelay.job.*"]


def by_job(messages: list[Received]) -> dict[str, list[str]]:
    """Each job's event types, in the order the broker holds them."""
    found: dict[str, list[str]] = {}
    for m in messages:
        event = m.event()
        found.setdefault(event.get_subject() or "", []).append(event.get_type())
    return found


@pytest.mark.parametrize("kind", ["nats", "amqp"])
def test_a_jobs_events_arrive_in_order_once_signed_as_cloudevents(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, registry: CollectorRegistry, kind: str,
) -> None:  # fmt: skip
    with JetStream.make() if kind == "nats" else Exchange.make() as target:
        sub = subscribe(client, auth, target.url(), event_types=JOB_TYPES)
        notify(client, engine, clock, 1, "Running")
        notify(client, engine, clock, 2, "Running", "Success")
        notify(client, engine, clock, 1, "Success")
        deliverer.wait_idle()
        messages = target.wait_for(4)

    assert by_job(messages) == {
        ci_job_id(1): ["com.cirelay.job.running", "com.cirelay.job.succeeded"],
        ci_job_id(2): ["com.cirelay.job.running", "com.cirelay.job.succeeded"],
    }
    prefix = target.prefix if isinstance(target, JetStream) else "cirelay.events"
    for m in messages:
        event = m.event()  # the SDK: JSON format (NATS), the RabbitMQ binding (AMQP)
        assert m.topic == f"{prefix}.{event.get_type().removeprefix('com.cirelay.')}"
        assert m.verify(sub["secret"])["id"] == m.headers["webhook-id"] == event.get_id()
        if kind == "nats":  # the stream's dedup key, and the binding's content type header
            assert m.headers["Nats-Msg-Id"] == event.get_id()
            assert m.headers["content-type"] == "application/cloudevents+json"
        else:  # publisher-confirmed, persistent, the event id as message_id
            assert m.message_id == event.get_id() and m.persistent
            assert m.content_type == "application/cloudevents+json"
    assert [d["state"] for d in deliveries(engine)] == ["succeeded"] * 4
    assert sample(registry, "cirelay_deliveries_total", outcome="delivered", transport=kind) == 4
    assert sample(registry, "cirelay_delivery_latency_seconds_count", transport=kind) == 4
    assert sample(registry, "cirelay_deliveries_total", transport="http") == 0


@pytest.mark.parametrize("kind", ["nats", "amqp"])
def test_type_filters_hold_for_brokers(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, kind: str,
) -> None:  # fmt: skip
    with JetStream.make() if kind == "nats" else Exchange.make() as target:
        subscribe(client, auth, target.url(), event_types=["com.cirelay.job.succeeded"])
        notify(client, engine, clock, 1, "Running", "Success")
        notify(client, engine, clock, 2, "Running", "Failed")
        deliverer.wait_idle()
        time.sleep(0.2)
        got = by_job(target.messages())
    assert got == {ci_job_id(1): ["com.cirelay.job.succeeded"]}


def test_an_unroutable_amqp_message_is_retried_and_visible_as_failed(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, policy: Policy, registry: CollectorRegistry,
) -> None:  # fmt: skip
    with Exchange.make(bound=False) as nowhere:
        sub = subscribe(client, auth, nowhere.url(), event_types=JOB_TYPES)
        notify(client, engine, clock, 1, "Running")
        for _ in range(len(policy.schedule) + 1):
            deliverer.wait_idle()
            clock.now += timedelta(seconds=max(policy.schedule) * 2)

    answer = client.get(f"/v1/subscriptions/{sub['id']}/deliveries", headers=auth).json
    (delivery,) = answer["deliveries"]
    assert delivery["state"] == "failed"
    assert delivery["attempts"] == len(policy.schedule) + 1
    assert {a["result"] for a in delivery["history"]} == {"rejected"}
    assert "NO_ROUTE" in delivery["last_error"] and "cirelay.events.job.running" in (
        delivery["last_error"])  # fmt: skip
    assert sample(registry, "cirelay_delivery_attempts_total", result="rejected",
                  transport="amqp") == len(policy.schedule) + 1  # fmt: skip
    assert sample(registry, "cirelay_deliveries_total", outcome="given_up", transport="amqp") == 1


def test_a_missing_stream_or_exchange_is_a_rejected_attempt(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, stream: JetStream, exchange: Exchange,
) -> None:  # fmt: skip
    subscribe(client, auth, stream.url().replace(stream.name, "NO_SUCH_STREAM"))
    subscribe(client, auth, exchange.url().replace(exchange.name, "no-such-exchange"))
    subscribe(client, auth, exchange.url())  # the channel closed by the broker is reopened
    notify(client, engine, clock, 1, "Running")
    deliverer.wait_idle()
    rows = {d["subscription_id"]: d for d in deliveries(engine)}
    errors = sorted(str(d["last_error"]) for d in rows.values() if d["state"] == "pending")
    assert len(errors) == 2
    assert "JetStream refused it" in errors[0] and "no exchange 'no-such-exchange'" in errors[1]
    assert exchange.wait_for(1)[0].event().get_type() == "com.cirelay.job.running"


def test_replay_republishes_to_the_broker(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, exchange: Exchange,
) -> None:  # fmt: skip
    with JetStream.make(duplicate_window=0.5) as stream:
        subs = [subscribe(client, auth, url, event_types=JOB_TYPES)
                for url in (stream.url(), exchange.url())]  # fmt: skip
        since = clock()
        notify(client, engine, clock, 1, "Running", "Success")
        deliverer.wait_idle()
        first = [m.headers["webhook-id"] for m in exchange.wait_for(2)]
        time.sleep(0.6)  # past the stream's duplicate window: a replay is stored again
        for sub in subs:
            answer = client.post(f"/v1/subscriptions/{sub['id']}/replay", headers=auth,
                                 json={"since": since.isoformat()})  # fmt: skip
            assert answer.status_code == 202 and answer.json["deliveries"] == 2
        deliverer.wait_idle()
        again = [m.headers["webhook-id"] for m in exchange.wait_for(4)]
        in_stream = [m.headers["Nats-Msg-Id"] for m in stream.messages()]
    assert again == first + first
    assert in_stream == first + first


def test_within_the_duplicate_window_jetstream_keeps_one_copy(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, stream: JetStream,
) -> None:  # fmt: skip
    sub = subscribe(client, auth, stream.url(), event_types=JOB_TYPES)
    notify(client, engine, clock, 1, "Running")
    deliverer.wait_idle()
    event_id = stream.messages()[0].headers["Nats-Msg-Id"]
    answer = client.post(f"/v1/subscriptions/{sub['id']}/replay", headers=auth,
                         json={"event_id": event_id})  # fmt: skip
    assert answer.status_code == 202
    deliverer.wait_idle()
    assert [m.headers["Nats-Msg-Id"] for m in stream.messages()] == [event_id]
    assert [d["state"] for d in deliveries(engine)] == ["succeeded", "succeeded"]


def test_a_broker_that_is_down_affects_only_its_own_subscriptions(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, transports: Transports, stream: JetStream, hook: Subscriber,
) -> None:  # fmt: skip
    with TcpProxy(*("127.0.0.1", stream.port)) as proxy:
        proxy.cut()  # nothing listens there now
        subscribe(client, auth, stream.url(port=proxy.port), event_types=JOB_TYPES)
        subscribe(client, auth, hook.url(), event_types=JOB_TYPES)
        notify(client, engine, clock, 1, "Running")
        deliverer.wait_idle()
        assert len(hook.accepted()) == 1
        (failed,) = [d for d in deliveries(engine) if d["state"] == "pending"]
        assert "ConnectionRefusedError" in failed["last_error"]
        (nats_link,) = transports.health()
        assert nats_link["state"] == "down" and nats_link["transport"] == "nats"
        assert nats_link["broker"] == f"nats://127.0.0.1:{proxy.port}"

        proxy.restore()
        link = _wait_state(transports, "up")
        assert link["state"] == "up"
        clock.now += timedelta(minutes=5)
        notify(client, engine, clock, 1, "Success")
        deliverer.wait_idle()
    assert by_job(stream.messages()) == {
        ci_job_id(1): ["com.cirelay.job.running", "com.cirelay.job.succeeded"]
    }


def _wait_state(transports: Transports, state: str, deadline: float = 20.0) -> dict[str, Any]:
    end = time.monotonic() + deadline
    while True:
        links = transports.health()
        if (links and links[0]["state"] == state) or time.monotonic() > end:
            return links[0]
        time.sleep(0.1)


# --- credentials ---------------------------------------------------------------------------


def test_credentials_are_masked_in_every_answer_and_never_logged(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, exchange: Exchange, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    secret_password = "s3cret-pa55word"  # wrong on purpose: the broker refuses it
    url = exchange.url(login=f"guest:{secret_password}@")
    created = subscribe(client, auth, url, event_types=JOB_TYPES)
    masked = exchange.url(login="guest:***@")
    assert created["url"] == masked
    listed = client.get("/v1/subscriptions", headers=auth).json["subscriptions"]
    assert [s["url"] for s in listed] == [masked]
    assert client.get(f"/v1/subscriptions/{created['id']}", headers=auth).json["url"] == masked
    notify(client, engine, clock, 1, "Running")
    deliverer.wait_idle()
    answer = client.get(f"/v1/subscriptions/{created['id']}/deliveries", headers=auth)
    (delivery,) = answer.json["deliveries"]
    assert delivery["history"][0]["result"] == "connection_error"
    assert "ACCESS_REFUSED" in delivery["last_error"]
    audit = client.get("/v1/audit", headers=auth)  # "subscription created": its URL masked
    assert masked in audit.text
    seen = answer.text + audit.text + caplog.text + str(deliveries(engine))
    assert secret_password not in seen

    # the masked URL sent back is refused, not stored as the password "***"
    patch = client.patch(f"/v1/subscriptions/{created['id']}", json={"url": masked},
                         headers=auth)  # fmt: skip
    assert patch.status_code == 422 and "mask" in patch.text


def test_credentials_named_from_settings(
    engine: Engine, clock: Clock, policy: Policy, services: Services, exchange: Exchange,
    registry: CollectorRegistry, schemas: SchemaSet,
) -> None:  # fmt: skip
    named = replace(services.settings, broker_credentials=("rabbit=guest:guest",))
    assert named.broker_logins == {"rabbit": ("guest", "guest")}
    with_names = build_services(named, registry=CollectorRegistry(), engine=engine,
                                schemas=schemas, clock=clock)  # fmt: skip
    client = create_app(services=with_names).test_client()
    auth = {"Authorization": f"Bearer {API_KEY}"}
    unknown = client.post("/v1/subscriptions", headers=auth,
                          json={"url": exchange.url(login="", credentials="nope")})  # fmt: skip
    assert unknown.status_code == 422 and "nope" in unknown.text
    sub = subscribe(client, auth, exchange.url(login="", credentials="rabbit"))
    assert sub["url"] == exchange.url(login="", credentials="rabbit")
    senders = build_senders(named)
    d = Deliverer(engine, policy, senders, with_names.metrics, clock=clock)
    try:
        notify(client, engine, clock, 1, "Running")
        d.wait_idle()
    finally:
        d.close()
        senders.close()
    assert [m.event().get_type() for m in exchange.wait_for(1)] == ["com.cirelay.job.running"]


@pytest.mark.parametrize("url", [
    "nats://127.0.0.1:4222/STREAM",
    "amqp://guest:guest@127.0.0.1:5672/%2F?exchange=x",
])  # fmt: skip
def test_a_broker_inside_needs_its_network_allowed(
    url: str, settings: Settings, engine: Engine, schemas: SchemaSet, auth: dict[str, str]
) -> None:
    assert not settings.delivery_allowed_networks
    client = create_app(services=build_services(settings, engine=engine, schemas=schemas))
    answer = client.test_client().post("/v1/subscriptions", json={"url": url}, headers=auth)
    assert answer.status_code == 422
    assert "CIRELAY_DELIVERY_ALLOWED_NETWORKS" in answer.text and "guest:guest" not in answer.text


JOB_TRACE, SUBMIT_SPAN = "ab" * 16, "cd" * 8


@pytest.mark.parametrize("kind", ["nats", "amqp"])
def test_a_broker_message_carries_the_delivery_span_s_traceparent(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, spans: InMemorySpanExporter, kind: str,  # noqa: F811
) -> None:  # fmt: skip
    """Issue 20: the traceparent goes on every webhook *and broker message*, so a consumer's
    trace joins the job's (the real NATS and RabbitMQ)."""
    with JetStream.make() if kind == "nats" else Exchange.make() as target:
        subscribe(client, auth, target.url(), event_types=["com.cirelay.job.succeeded"])
        notify(client, engine, clock, 1)
        with store.transaction(engine) as conn:
            store.update_job(conn, "job_0001", {"traceparent": f"00-{JOB_TRACE}-{SUBMIT_SPAN}-01"})
        notify(client, engine, clock, 1, "Success")
        deliverer.wait_idle()
        (message,) = target.wait_for(1)
    trace_id, span_id = hex_ids(named(spans, "cirelay.deliver"))
    assert trace_id == JOB_TRACE
    assert message.headers["traceparent"] == f"00-{JOB_TRACE}-{span_id}-01"
