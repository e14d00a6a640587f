"""PostgreSQL going away: readiness fails, notifications and API calls are answered 503 (so CI
and clients retry) with nothing half-written, and everything works again once it is back.

The service talks to PostgreSQL through a TCP proxy the test cuts and restores: the real
driver, pool and server, with the network between them failing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from app import build_services, create_app, store
from app.config import Settings
from app.schemas import SchemaSet
from tests.conftest import Clock, counts, make_job, notification_xml
from tests.tcp_proxy import TcpProxy

pytestmark = pytest.mark.postgresql
XML = {"Content-Type": "application/xml"}


@pytest.fixture
def proxy(pg_engine: Engine) -> Iterator[TcpProxy]:
    url = pg_engine.url
    with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as running:
        yield running


@pytest.fixture
def direct(pg_engine: Engine) -> Engine:
    """The database, reached without the proxy, emptied."""
    tables = ", ".join(t.name for t in store.metadata.sorted_tables)
    with pg_engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    return pg_engine


@pytest.fixture
def client(
    direct: Engine, proxy: TcpProxy, settings: Settings, schemas: SchemaSet, clock: Clock
) -> Iterator[FlaskClient]:
    url = direct.url.set(port=proxy.port).render_as_string(hide_password=False)
    engine = store.create_engine(url.replace("postgresql+psycopg://", "postgresql://"))
    services = build_services(settings, registry=CollectorRegistry(), engine=engine,
                              schemas=schemas, clock=clock)  # fmt: skip
    app = create_app(services=services)
    yield app.test_client()
    engine.dispose()


@pytest.fixture
def settings(pg_engine: Engine) -> Settings:
    from tests.conftest import API_KEY, CALLBACK_KEYS, QUEUE_SECRET

    return Settings(
        database_url="postgresql://via-proxy",
        api_keys=(API_KEY,),
        callback_keys=CALLBACK_KEYS,
        queue_callback_secret=QUEUE_SECRET,
    )


def notify(client: FlaskClient, path: str, ci_id: str, state: str) -> int:
    return client.post(path, data=notification_xml(ci_id, state), headers=XML).status_code


def test_while_the_database_is_down_everything_is_503_and_nothing_is_half_written(
    client: FlaskClient, direct: Engine, proxy: TcpProxy, clock: Clock, auth: dict[str, str]
) -> None:
    path = make_job(direct, "job_0001", clock(), "j" + "0" * 31 + "1")
    ci_id = "j" + "0" * 31 + "1"
    assert notify(client, path, ci_id, "Running") == 200
    assert client.get("/readyz").status_code == 200
    before = counts(direct)

    proxy.cut()
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json["checks"]["database"] == "unreachable"
    for response in (
        client.post(path, data=notification_xml(ci_id, "Success"), headers=XML),
        client.post(path, data=b"<Response><broken", headers=XML),  # would be quarantined
        client.get("/v1/jobs/job_0001", headers=auth),
        client.get("/v1/events", headers=auth),
    ):
        assert response.status_code == 503, response.data
        assert response.headers["Retry-After"]
        assert response.json["error"] == "unavailable"
    assert client.get("/healthz").status_code == 200  # alive: no restart for a database outage
    assert counts(direct) == before  # nothing half-written

    proxy.restore()
    assert client.get("/readyz").status_code == 200
    assert notify(client, path, ci_id, "Success") == 200
    assert client.get("/v1/jobs/job_0001", headers=auth).json["state"] == "Success"
    after = counts(direct)
    assert after["notifications"] == before["notifications"] + 1
    assert after["events"] == before["events"] + 1


def test_connections_the_database_dropped_are_replaced_without_an_error(
    client: FlaskClient, direct: Engine, proxy: TcpProxy, clock: Clock, auth: dict[str, str]
) -> None:
    """A blip (every pooled connection reset, the server reachable again at once) is not
    visible to callers: the pool checks a connection before handing it out."""
    path = make_job(direct, "job_0002", clock(), "j" + "0" * 31 + "2")
    assert client.get("/v1/jobs/job_0002", headers=auth).status_code == 200
    proxy.cut()
    proxy.restore()
    ci_id = "j" + "0" * 31 + "2"
    assert notify(client, path, ci_id, "Running") == 200
    assert client.get("/v1/jobs/job_0002", headers=auth).json["state"] == "Running"
