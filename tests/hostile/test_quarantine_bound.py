"""Quarantine writes bounded per source (issue 14 §2): each invalid notification from a
token holder stored up to 1 MiB and an event, without limit. Now a source (a callback
token's job, or the queue secret) stores at most ``CIRELAY_QUARANTINE_PER_MINUTE`` a
minute; beyond it the sender gets the same 400, nothing is stored, and the drop is counted.
The count is the database's, so it holds across workers and replicas.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from app import build_services, create_app, store
from app.config import Settings
from app.schemas import SchemaSet
from tests.conftest import Clock, make_job, queue_path

LIMIT = 3
INVALID = b"<Response><JobsDetail/></Response>"
XML = "application/xml"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, quarantine_per_minute=LIMIT)


def stored(engine: Engine) -> list[tuple[str, str | None]]:
    with engine.connect() as conn:
        return [(q.source, q.job_id) for q in store.list_quarantined(conn)]


def quarantine_events(engine: Engine) -> int:
    with engine.connect() as conn:
        page = store.list_events(conn, after=0, limit=500, types=[], type_prefixes=[])
    return sum(1 for e in page if e.type.endswith("quarantined"))


def dropped(registry: CollectorRegistry, source: str) -> float:
    value = registry.get_sample_value("cirelay_quarantine_dropped_total", {"source": source})
    return value or 0.0


def post_invalid(client: FlaskClient, path: str) -> None:
    response = client.post(path, data=INVALID, content_type=XML)
    assert response.status_code == 400, response.get_data()
    assert response.get_json()["error"] == "invalid_notification"


def test_a_callback_source_stores_at_most_the_bound_per_minute(
    client: FlaskClient, engine: Engine, registry: CollectorRegistry, clock: Clock
) -> None:
    path = make_job(engine, "job_01", clock.now)
    for _ in range(LIMIT + 2):
        post_invalid(client, path)  # the same answer, stored or not
    assert stored(engine) == [("callback", "job_01")] * LIMIT
    assert quarantine_events(engine) == LIMIT
    assert dropped(registry, "callback") == 2
    assert (
        registry.get_sample_value("cirelay_notifications_total", {"outcome": "schema_violation"})
        == LIMIT + 2
    )


def test_sources_are_bounded_apart(
    client: FlaskClient, engine: Engine, registry: CollectorRegistry, clock: Clock
) -> None:
    first = make_job(engine, "job_01", clock.now)
    second = make_job(engine, "job_02", clock.now)
    for path in [first] * (LIMIT + 1) + [second, queue_path()] * (LIMIT + 1):
        post_invalid(client, path)
    sources = stored(engine)
    assert sources.count(("callback", "job_01")) == LIMIT
    assert sources.count(("callback", "job_02")) == LIMIT
    assert sources.count(("queue", None)) == LIMIT
    assert dropped(registry, "callback") == 2
    assert dropped(registry, "queue") == 1


def test_a_source_stores_again_once_a_minute_has_passed(
    client: FlaskClient, engine: Engine, clock: Clock
) -> None:
    for _ in range(LIMIT + 1):
        post_invalid(client, queue_path())
    clock.now += timedelta(seconds=61)
    post_invalid(client, queue_path())
    assert len(stored(engine)) == LIMIT + 1


def test_the_bound_holds_across_workers_sharing_the_database(
    app: Flask, engine: Engine, settings: Settings, schemas: SchemaSet, clock: Clock
) -> None:
    """Two processes' worth of services (as gunicorn workers or replicas have), one
    database: together they store no more than the bound."""
    other = create_app(
        services=build_services(
            settings, registry=CollectorRegistry(), engine=engine, schemas=schemas, clock=clock
        )
    )
    clients = [app.test_client(), other.test_client()]
    for i in range(2 * LIMIT):
        post_invalid(clients[i % 2], queue_path())
    assert len(stored(engine)) == LIMIT


def test_the_setting_is_read_from_the_environment() -> None:
    assert Settings().quarantine_per_minute == 60
    env = {"CIRELAY_QUARANTINE_PER_MINUTE": "5"}
    assert Settings.from_env(env, requires=()).quarantine_per_minute == 5
