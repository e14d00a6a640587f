"""Shared fixtures: settings, a migrated database (SQLite always, PostgreSQL when
``CIRELAY_TEST_DATABASE_URL`` is set), the app and its client, and notification builders."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine, make_url

from app import Services, build_services, create_app, store
from app.config import Settings
from app.contract.jobs import JOB_REQUEST
from app.migrations import upgrade
from app.schemas import SchemaSet
from app.tokens import sign_job
from tests.contract.outbox import checking_outbox
from tests.fleet import create_database

CORPUS = Path(__file__).parent / "corpus"


def _database_of_this_worker(url: str | None) -> str | None:
    """Under pytest-xdist (``make test`` runs a worker per core) each worker tests on a
    PostgreSQL database of its own, ``<name>_<worker>``, made afresh on the same server: the
    tests empty and migrate theirs freely. The processes they start inherit it (and a
    child that imports this module takes it as it is)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not url or not worker or os.environ.get("CIRELAY_TEST_DATABASE_OF") == worker:
        return url
    own = create_database(url, f"{make_url(url).database}_{worker}")
    os.environ.update(CIRELAY_TEST_DATABASE_URL=own, CIRELAY_TEST_DATABASE_OF=worker)
    return own


PG_URL = _database_of_this_worker(os.environ.get("CIRELAY_TEST_DATABASE_URL"))
API_KEY = "test-api-key-0123456789"
CALLBACK_KEYS = ("callback-key-new-0123456789", "callback-key-old-0123456789")
QUEUE_SECRET = "queue-secret-0123456789abcdef"

SUCCESS_XML = (CORPUS / "notification/valid/success-alphabetical.xml").read_text()
SAMPLE_JOB_ID = "j6d67510d4c4f15952ca66bc47f5b1ea3"

_BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if PG_URL:
        return
    skip = pytest.mark.skip(reason="CIRELAY_TEST_DATABASE_URL is not set")
    for item in items:
        if "postgresql" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _outbox_follows_the_catalogue(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Every event any test writes to the outbox is of a catalogued type and its ``data``
    satisfies that type's schema (tests/contract/outbox.py); only a test of the storage
    itself, marked ``outbox_unchecked``, may write events of its own making."""
    if request.node.get_closest_marker("outbox_unchecked"):
        yield
        return
    with checking_outbox(monkeypatch):
        yield


@pytest.fixture(scope="session")
def schemas() -> SchemaSet:
    return SchemaSet.load()


@pytest.fixture(scope="session")
def pg_engine() -> Iterator[Engine]:
    assert PG_URL
    engine = store.create_engine(PG_URL)
    with engine.begin() as conn:  # a clean slate, then the real migrations
        store.metadata.drop_all(conn)
        conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=_BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        engine = store.create_engine(f"sqlite:///{tmp_path / 'cirelay.db'}")
        upgrade(engine)
        yield engine
        engine.dispose()
        return
    engine = request.getfixturevalue("pg_engine")
    empty_postgresql(engine)
    yield engine


def empty_postgresql(engine: Engine) -> None:
    """Every table of the shared PostgreSQL test database emptied, sequences restarted."""
    tables = ", ".join(t.name for t in store.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture
def settings(engine: Engine) -> Settings:
    return Settings(
        database_url=engine.url.render_as_string(hide_password=False),
        public_url="http://cirelay.test",
        api_keys=(API_KEY,),
        callback_keys=CALLBACK_KEYS,
        queue_callback_secrets=(QUEUE_SECRET,),
    )


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2024, 11, 18, 13, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def services(
    settings: Settings,
    engine: Engine,
    schemas: SchemaSet,
    registry: CollectorRegistry,
    clock: Clock,
) -> Services:
    return build_services(settings, registry=registry, engine=engine, schemas=schemas, clock=clock)


@pytest.fixture
def app(services: Services) -> Flask:
    app = create_app(services=services)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


# --- builders -----------------------------------------------------------------------------


def notification_xml(ci_job_id: str = SAMPLE_JOB_ID, state: str = "Success", **fields: str) -> str:
    """The sample success notification with another JobId and State, and any top-level
    JobsDetail fields replaced (``Code="1015"``, ``UserData="x"``…)."""
    text = SUCCESS_XML.replace(SAMPLE_JOB_ID, ci_job_id)
    text = re.sub(r"<State>\w+</State>", f"<State>{state}</State>", text)
    for name, value in fields.items():
        text, n = re.subn(rf"<{name}>[^<]*</{name}>|<{name}/>", f"<{name}>{value}</{name}>", text)
        assert n, f"no <{name}> in the sample"
    return text


def job_json(**changes: object) -> dict[str, object]:
    """A VoiceSeparate job in cirelay's JSON, as POST /v1/jobs takes it."""
    job: dict[str, object] = copy.deepcopy(JOB_REQUEST["example"])  # the documented example
    job.update(changes)
    return job


def ci_job_id(n: int) -> str:
    return f"j{n:032x}"


def make_job(engine: Engine, job_id: str, now: datetime, ci_id: str | None = None) -> str:
    """A job as submission leaves it; returns its callback path."""
    with store.transaction(engine) as conn:
        store.insert_job(
            conn,
            {
                "id": job_id,
                "ci_job_id": ci_id,
                "origin": "api",
                "state": "Submitted",
                "tag": "VoiceSeparate",
                "detail": {},
                "created_at": now,
                "updated_at": now,
            },
        )
    return callback_path(job_id)


def callback_path(job_id: str, key_index: int = 0) -> str:
    return f"/callbacks/ci/{job_id}/{sign_job(job_id, CALLBACK_KEYS[key_index:])}"


def queue_path() -> str:
    return f"/callbacks/ci/queue/{QUEUE_SECRET}"


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t.name: conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
            for t in store.metadata.sorted_tables
        }


def outcome_count(registry: CollectorRegistry, outcome: str) -> float:
    """``cirelay_notifications_total{outcome}`` as the registry holds it (0 if never counted)."""
    value = registry.get_sample_value("cirelay_notifications_total", {"outcome": outcome})
    return value or 0.0
