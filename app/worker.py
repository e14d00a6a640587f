"""``cirelay worker``: delivery (:mod:`app.delivery`: webhooks, NATS JetStream, RabbitMQ) and
the reconciler (:mod:`app.reconciler`), each on a thread of its own. Stops cleanly on
SIGTERM/SIGINT: the deliveries in flight finish and are recorded first.

Its metrics port (``--metrics-port``) also answers ``/healthz`` and ``/readyz``: ready while
the database answers; the body lists each broker connection (``up``, ``connecting`` or
``down``, since when, the last error) and says ``degraded`` while one is down. A broker that
is down does not make the worker unready: it affects only its own subscriptions (their
attempts fail at once and retry while the connection is retried with backoff), and an
unready worker would hold up a rollout for another team's broker.

Several workers (on several replicas) may run against one PostgreSQL database: deliveries are
claimed with ``FOR UPDATE SKIP LOCKED`` and leased, so none is sent by two at once. On SQLite
one worker is enough (it has one writer at a time anyway); more are safe but gain nothing.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable, Iterable
from datetime import timedelta
from types import FrameType
from typing import Any

from app import Services, ci_clients, store
from app.delivery import build_deliverer
from app.delivery.transports import Transports
from app.reconciler import Reconciler
from app.waker import CommitWatcher, Waker

log = logging.getLogger(__name__)


def build_reconciler(services: Services) -> Reconciler:
    settings = services.settings
    return Reconciler(
        services.engine,
        services.receiver,
        ci_clients(settings, metrics=services.metrics, schemas=services.schemas,
                   clock=services.clock),
        silence=timedelta(seconds=settings.reconcile_after_seconds),
        submitter=services.submitter,
    )  # fmt: skip


def reconcile(services: Services, stop: threading.Event) -> None:
    reconciler = build_reconciler(services)
    interval = services.settings.reconcile_interval_seconds
    log.info(
        "worker: reconciling jobs silent for %ss, every %ss",
        services.settings.reconcile_after_seconds,
        interval,
    )
    while not stop.is_set():
        try:
            report = reconciler.run_once(services.clock())
        except Exception:  # a bad round must not end the worker; the next one retries
            log.exception("reconcile round failed")
        else:
            if report.asked:
                log.info(
                    "reconciled: asked %d, moved %d, unknown to CI %d, failed batches %d",
                    report.asked, report.moved, len(report.missing), report.failed_batches,
                )  # fmt: skip
        stop.wait(interval)


#: how often finished deliveries past their retention are deleted, and how many at a time
PRUNE_INTERVAL_SECONDS = 3600
PRUNE_BATCH = 5000


def prune(services: Services) -> int:
    """Delete finished deliveries older than ``CIRELAY_DELIVERY_RETENTION_DAYS``, in small
    transactions so ingest is never held up for long. Returns how many went."""
    cutoff = services.clock() - timedelta(days=services.settings.delivery_retention_days)
    total = 0
    while True:
        with store.transaction(services.engine) as conn:
            n = store.prune_deliveries(conn, finished_before=cutoff, limit=PRUNE_BATCH)
        total += n
        if n < PRUNE_BATCH:
            return total


def housekeeping(services: Services, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            if pruned := prune(services):
                log.info("pruned %d finished deliveries past their retention", pruned)
        except Exception:  # the next round tries again
            log.exception("pruning deliveries failed")
        stop.wait(PRUNE_INTERVAL_SECONDS)


def readiness(services: Services, transports: Transports) -> tuple[int, dict[str, Any]]:
    """``/readyz`` of the worker: 503 when the database does not answer; the brokers' health
    (a broker down makes it ``degraded``, not unready: see the module's docstring)."""
    database = store.check_database(services.engine)  # bounded, one ping at a time
    brokers = transports.health()
    status = "ready" if all(b["state"] != "down" for b in brokers) else "degraded"
    if database != "ok":
        status = "not ready"
    body = {"status": status, "checks": {"database": database}, "brokers": brokers}
    return (200 if database == "ok" else 503), body


def serve_metrics(
    services: Services,
    port: int,
    transports: Transports,
    host: str = "0.0.0.0",  # noqa: S104
) -> None:
    """``/metrics``, ``/healthz`` and ``/readyz`` of this worker on ``port`` (its Deployment
    has no other HTTP port). Under ``cirelay up`` the worker shares the service's
    multiprocess directory instead, and the service's ``/metrics`` shows its counters."""
    from wsgiref.simple_server import make_server

    from prometheus_client import PlatformCollector, ProcessCollector, make_wsgi_app
    from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

    registry = services.metrics.registry
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/healthz", "/readyz"):
            return metrics(environ, start)  # type: ignore[no-any-return]
        status, body = (200, {"status": "ok"}) if path == "/healthz" else readiness(
            services, transports)  # fmt: skip
        start(f"{status} {'OK' if status == 200 else 'Service Unavailable'}",
              [("Content-Type", "application/json")])  # fmt: skip
        return [json.dumps(body).encode()]

    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_SilentHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("worker: metrics on http://%s:%d/metrics, health on /healthz and /readyz", host,
             port)  # fmt: skip


def run(services: Services, transports: Transports, stop: threading.Event | None = None) -> None:
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, frame: FrameType | None) -> None:
            # Once is enough, and a second signal must not run this again while the first
            # is inside stop.set() holding its lock (Ctrl-C, then `cirelay up`'s SIGTERM):
            # that deadlocks the main thread.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    reconciler = threading.Thread(
        target=reconcile, args=(services, stop), name="reconciler", daemon=True
    )
    reconciler.start()
    threading.Thread(
        target=housekeeping, args=(services, stop), name="housekeeping", daemon=True
    ).start()
    settings = services.settings
    deliverer = build_deliverer(settings, services.engine, services.metrics, services.clock,
                                transports)  # fmt: skip
    waker: Waker = services.waker
    watcher = None
    database = store.sqlite_file(services.engine)
    if database is not None:  # no NOTIFY: the commit watcher wakes the deliverer instead
        waker = watcher = CommitWatcher(database)
    try:
        deliverer.run(stop, poll_seconds=settings.delivery_poll_seconds, waker=waker)
    finally:
        if watcher is not None:
            watcher.close()
    transports.close()
    # A reconcile round may be waiting on CI (up to its timeout, per request): not worth
    # waiting for. Leaving it mid-round is safe: each of its steps is one transaction.
    reconciler.join(timeout=2.0)
