"""cirelay: receive Tencent Cloud CI job notifications, record them durably, fan them out.

:func:`create_app` is the one place the parts are wired together.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
from flask import Flask
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine
from werkzeug.middleware.proxy_fix import ProxyFix

from app import jobs, store, tracing
from app.ci.client import CIClient
from app.commits import GroupCommitter
from app.config import Settings
from app.ingest import Receiver
from app.metrics import DatabaseCollector, Metrics
from app.models import Figures
from app.schemas import SchemaSet
from app.submission import Submitter
from app.waker import EventWaker

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Services:
    """Everything a request handler needs, built once per process."""

    settings: Settings
    engine: Engine
    schemas: SchemaSet
    metrics: Metrics
    database_collector: DatabaseCollector
    receiver: Receiver
    submitter: Submitter
    clock: Clock
    #: one per open event stream (``CIRELAY_MAX_STREAMS``)
    stream_slots: threading.BoundedSemaphore
    #: wakes streams and the deliverer when events are committed (PostgreSQL)
    waker: EventWaker


def build_services(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    engine: Engine | None = None,
    schemas: SchemaSet | None = None,
    clock: Clock = utc_now,
) -> Services:
    registry = registry if registry is not None else CollectorRegistry()
    tracing.configure(settings.tracing, "cirelay")
    engine = engine or store.create_engine(
        settings.database_url, pool_size=settings.db_pool_size, timeouts=database_timeouts(settings)
    )
    schemas = schemas or SchemaSet.load(settings.schema_dir)
    metrics = Metrics(registry)

    def figures() -> Figures:
        with engine.connect() as conn:
            return store.figures(conn, clock())

    collector = DatabaseCollector(figures)
    registry.register(collector)
    store.watch_pool(engine, metrics.db_connections_in_use.inc)
    committer = GroupCommitter(
        engine, jobs.apply_batch, begin=store.hold_events_lock,
        on_batch=metrics.commit_batch_size.observe,
    )  # fmt: skip
    receiver = Receiver(
        engine, schemas, metrics, committer, max_depth=settings.max_depth,
        quarantine_per_minute=settings.quarantine_per_minute,
        accept_tags=frozenset(settings.accept_tags),
    )  # fmt: skip
    submitter = Submitter(
        engine,
        ci_clients(settings, metrics=metrics, schemas=schemas, clock=clock),
        public_url=settings.public_url,
        callback_keys=settings.callback_keys,
        metrics=metrics,
    )
    slots = threading.BoundedSemaphore(settings.max_streams)
    waker = EventWaker(engine.url.render_as_string(hide_password=False))
    return Services(
        settings, engine, schemas, metrics, collector, receiver, submitter, clock, slots, waker
    )


def database_timeouts(settings: Settings) -> store.DatabaseTimeouts:
    """How long PostgreSQL may keep the service waiting (``CIRELAY_DB_*_TIMEOUT_SECONDS``)."""
    return store.DatabaseTimeouts(
        connect=settings.db_connect_timeout_seconds,
        statement=settings.db_statement_timeout_seconds or None,
        checkout=settings.db_pool_timeout_seconds,
    )


def ci_clients(
    settings: Settings, *, metrics: Metrics | None, schemas: SchemaSet, clock: Clock
) -> Callable[[str, str], CIClient]:
    """One CI client per bucket and region (CI's host names both), sharing one connection
    pool, made on first use."""
    session = requests.Session()
    clients: dict[tuple[str, str], CIClient] = {}
    lock = threading.Lock()

    def client_for(bucket: str, region: str) -> CIClient:
        with lock:
            if (bucket, region) not in clients:
                clients[bucket, region] = CIClient(
                    settings.with_overrides(ci_bucket=bucket, ci_region=region),
                    clock=clock,
                    session=session,
                    metrics=metrics,
                    schemas=schemas,
                    read_timeout=settings.ci_timeout_seconds,
                )
            return clients[bucket, region]

    return client_for


def create_app(
    settings: Settings | None = None,
    *,
    services: Services | None = None,
    registry: CollectorRegistry | None = None,
) -> Flask:
    from app import web
    from app.web.callbacks import CallbackLane
    from app.web.request_ids import RequestIds

    if services is None:
        services = build_services(settings or Settings.from_env(), registry=registry)
    app = Flask(__name__)
    # the API's bodies (callbacks have their own cap: app.web.callbacks)
    app.config["MAX_CONTENT_LENGTH"] = services.settings.max_body_bytes + 1
    app.extensions["cirelay"] = services
    web.init_app(app)
    # every request's id is bound around both lanes: CI's callbacks, then Flask
    app.wsgi_app = RequestIds(  # type: ignore[method-assign]
        CallbackLane(app.wsgi_app, services), services.metrics
    )
    if tracing.is_enabled():  # CIRELAY_TRACING=on: a server span around each request
        from app.web.spans import RequestSpans

        app.wsgi_app = RequestSpans(app.wsgi_app)  # type: ignore[method-assign]
    if services.settings.proxy_hops:  # outermost: the lane sees the client's address too
        hops = services.settings.proxy_hops
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops
        )
    return app


def create_asgi_app(settings: Settings | None = None) -> Any:
    """The service as gunicorn's event-loop worker runs it (:class:`app.web.asgi.Serving`):
    :func:`create_app` run on whole requests in ``CIRELAY_THREADS`` threads, event streams on
    the loop."""
    from app.web.asgi import Serving

    app = create_app(settings)
    services: Services = app.extensions["cirelay"]
    return Serving(app, services, threads=services.settings.threads)
