"""Every Prometheus metric of the service, in one place.

Each metric is registered on an injectable registry, so a test builds its own and reads values
with ``registry.get_sample_value(...)``. Under gunicorn, prometheus_client runs in multiprocess
mode (``PROMETHEUS_MULTIPROC_DIR``, set and emptied by ``cirelay serve``); :func:`exposition`
then aggregates the files of all workers. Gauges that describe the database (quarantine size)
are read from it at scrape time, so every worker reports the same truth. Labels are
low-cardinality only: never a job id.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from app.models import AttemptResult, Figures, JobState, Outcome
from app.subscriptions import TRANSPORTS

#: Media jobs take seconds to hours.
JOB_DURATION_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
#: Receiving one notification should take milliseconds.
PROCESSING_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
#: One HTTP exchange with CI: tens of milliseconds, bounded by the read timeout (10 s).
CI_REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)
#: One HTTP request to the service: milliseconds; a stream lasts as long as its client.
HTTP_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
#: Notifications per group commit: one when idle, up to GroupCommitter.max_batch (64).
COMMIT_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
#: ``operation`` and ``outcome`` label values of the CI client's metrics.
CI_OPERATIONS = ("create", "describe", "list")
CI_OUTCOMES = ("ok", "rejected", "unavailable", "timeout", "error")
#: From a state change's commit to the subscriber's 2xx: milliseconds when all is well, hours
#: when a subscriber was down and retries brought it the event.
DELIVERY_LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 14400,
    43200,
)  # fmt: skip
ATTEMPT_BUCKETS = (1, 2, 3, 4, 5, 6, 8, 10, 15)
#: ``source`` label values of cirelay_quarantine_dropped_total
QUARANTINE_SOURCES = ("callback", "queue")
#: ``outcome`` label values of cirelay_deliveries_total
DELIVERY_OUTCOMES = ("delivered", "given_up", "subscription_disabled")


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.notifications = Counter(
            "cirelay_notifications",
            "CI notifications received, by outcome.",
            ["outcome"],
            registry=registry,
        )
        self.notifications_by_tag = Counter(
            "cirelay_notifications_by_tag",
            "Jobs and workflow instances CI reported (one per JobsDetail or"
            " WorkflowExecution), by tag (a known job tag, 'workflow', else 'other') and"
            " outcome.",
            ["tag", "outcome"],
            registry=registry,
        )
        self.processing_seconds = Histogram(
            "cirelay_notification_processing_seconds",
            "Time from a notification's arrival to its answer.",
            ["wire_format"],
            buckets=PROCESSING_BUCKETS,
            registry=registry,
        )
        self.quarantine_dropped = Counter(
            "cirelay_quarantine_dropped",
            "Invalid notifications answered 400 but not stored: their source (callback or"
            " queue) had stored CIRELAY_QUARANTINE_PER_MINUTE in the last minute.",
            ["source"],
            registry=registry,
        )
        for source in QUARANTINE_SOURCES:
            self.quarantine_dropped.labels(source)
        self.transitions = Counter(
            "cirelay_job_state_transitions",
            "Job state changes recorded, by previous and new state (previous 'none': new job).",
            ["from_state", "to_state"],
            registry=registry,
        )
        self.ci_job_duration = Histogram(
            "cirelay_ci_job_duration_seconds",
            "Job durations CI reports (EndTime - CreationTime), by final state.",
            ["state"],
            buckets=JOB_DURATION_BUCKETS,
            registry=registry,
        )
        self.sse_clients = Gauge(
            "cirelay_sse_clients",
            "Clients connected to GET /v1/events/stream.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        # --- webhook delivery (app.delivery, in the worker) ---
        # ``transport``: http, nats or amqp (app.subscriptions.TRANSPORTS), from the URL scheme
        self.deliveries = Counter(
            "cirelay_deliveries",
            "Deliveries finished, by outcome (delivered, given_up), and subscriptions"
            " disabled (subscription_disabled); by transport (http, nats, amqp).",
            ["outcome", "transport"],
            registry=registry,
        )
        self.delivery_attempts = Counter(
            "cirelay_delivery_attempts",
            "Delivery attempts, by result and transport.",
            ["result", "transport"],
            registry=registry,
        )
        self.attempts_per_delivery = Histogram(
            "cirelay_delivery_attempts_per_delivery",
            "Attempts a finished delivery took.",
            buckets=ATTEMPT_BUCKETS,
            registry=registry,
        )
        self.delivery_latency = Histogram(
            "cirelay_delivery_latency_seconds",
            "From the state change's commit to the subscriber's 2xx or the broker's ack"
            " (replays excluded), by transport.",
            ["transport"],
            buckets=DELIVERY_LATENCY_BUCKETS,
            registry=registry,
        )
        for transport in TRANSPORTS:
            self.delivery_latency.labels(transport)
            for name in DELIVERY_OUTCOMES:
                self.deliveries.labels(name, transport)
            for result in AttemptResult:
                self.delivery_attempts.labels(result.value, transport)
        for outcome in Outcome:
            self.notifications.labels(outcome.value)
        for fmt in ("xml", "json"):
            self.processing_seconds.labels(fmt)
        for state in (JobState.SUCCESS, JobState.FAILED, JobState.CANCEL):
            self.ci_job_duration.labels(state.value)
        # --- the CI client (app.ci.client): one sample per HTTP request to CI ---
        self.ci_requests = Counter(
            "cirelay_ci_requests",
            "HTTP requests to CI, by operation and outcome.",
            ["operation", "outcome"],
            registry=registry,
        )
        self.ci_request_seconds = Histogram(
            "cirelay_ci_request_duration_seconds",
            "Time of one HTTP request to CI, from send to parsed answer or failure.",
            ["operation"],
            buckets=CI_REQUEST_BUCKETS,
            registry=registry,
        )
        # --- HTTP (app.web.request_ids): every request either lane served ---
        self.http_requests = Counter(
            "cirelay_http_requests",
            "HTTP requests answered, by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.http_request_seconds = Histogram(
            "cirelay_http_request_duration_seconds",
            "From a request's arrival to the end of its answer's body (a stream: its life).",
            buckets=HTTP_REQUEST_BUCKETS,
            registry=registry,
        )
        # --- the database (app.commits, the engine's pool) ---
        self.commit_batch_size = Histogram(
            "cirelay_commit_batch_size",
            "Notifications committed together in one group-commit transaction.",
            buckets=COMMIT_BATCH_BUCKETS,
            registry=registry,
        )
        self.db_connections_in_use = Gauge(
            "cirelay_db_connections_in_use",
            "Database connections checked out of the pools (all workers).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        for operation in CI_OPERATIONS:
            self.ci_request_seconds.labels(operation)
            for ci_outcome in CI_OUTCOMES:
                self.ci_requests.labels(operation, ci_outcome)


class DatabaseCollector(Collector):
    """Gauges read from the database at scrape time, so every worker and replica reports the
    same truth. While the database is down they are left out (readiness reports that)."""

    def __init__(self, read: Callable[[], Figures]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        try:
            figures = self._read()
        except Exception:
            return
        yield GaugeMetricFamily(
            "cirelay_quarantine_size",
            "Quarantined notifications not yet replayed successfully.",
            value=figures.quarantine_size,
        )
        yield GaugeMetricFamily(
            "cirelay_delivery_backlog",
            "Webhook deliveries pending (first attempt or retry) for enabled subscriptions.",
            value=figures.delivery_backlog,
        )
        yield GaugeMetricFamily(
            "cirelay_delivery_backlog_oldest_age_seconds",
            "Age of the oldest pending webhook delivery of an enabled subscription (0: none).",
            value=figures.delivery_backlog_oldest_seconds,
        )
        yield GaugeMetricFamily(
            "cirelay_subscriptions_disabled",
            "Webhook subscriptions disabled, by hand or for failing.",
            value=figures.subscriptions_disabled,
        )


def is_multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def exposition(
    registry: CollectorRegistry, database: Collector, accept: str | None = None
) -> tuple[bytes, str]:
    """The text exposition: this process's registry, or all workers' files under gunicorn
    with each worker's CPU and memory (:class:`WorkersCollector`). With ``accept`` (the
    scraper's Accept header, passed while tracing is on) OpenMetrics when asked for, the
    format that carries exemplars."""
    if is_multiprocess():
        scrape = CollectorRegistry()
        multiprocess.MultiProcessCollector(scrape)  # type: ignore[no-untyped-call]
        scrape.register(database)
        scrape.register(WorkersCollector())
        registry = scrape
    if accept:
        encoder, content_type = choose_encoder(accept)
        return encoder(registry), content_type
    return generate_latest(registry), CONTENT_TYPE_LATEST


class WorkersCollector(Collector):
    """``process_cpu_seconds_total`` and ``process_resident_memory_bytes`` of every gunicorn
    worker (this process and its siblings: the children of its parent), with a ``pid``
    label: in multiprocess mode a scrape reaches one worker, which reports them all. Read
    from /proc by prometheus_client's own ProcessCollector; empty where there is no /proc."""

    WANTED = ("process_cpu_seconds", "process_resident_memory_bytes")

    def collect(self) -> Iterable[Metric]:
        families: dict[str, Metric] = {}
        for pid in _siblings():
            reader = ProcessCollector(pid=lambda pid=pid: pid, registry=None)  # type: ignore[misc]
            for family in reader.collect():
                if family.name not in self.WANTED:
                    continue
                merged = families.setdefault(
                    family.name, Metric(family.name, family.documentation, family.type)
                )
                for found in family.samples:
                    merged.add_sample(found.name, {"pid": str(pid)}, found.value)
        return list(families.values())


def _siblings() -> list[int]:
    """This process and the other children of its parent (gunicorn's workers)."""
    parent = os.getppid()
    pids = {os.getpid()}
    try:
        for task in os.listdir(f"/proc/{parent}/task"):
            with open(f"/proc/{parent}/task/{task}/children") as children:
                pids.update(int(p) for p in children.read().split())
    except OSError:
        pass
    return sorted(pids)
