"""OpenTelemetry tracing: opt-in with ``CIRELAY_TRACING=on``, nothing at all when off.

One job's path is one trace::

    client ─traceparent─▶ POST /v1/jobs (server span) ─▶ CI create (client span, CI's RequestId)
      └▶ the job row keeps the submit's traceparent (jobs.traceparent)
    CI's callback (no header: CI carries none back) ─▶ ingest + commit spans, children of the
      job's stored traceparent ("link by job"), linked to the callback request's own span
    worker ─▶ one deliver span per attempt, child of the job's traceparent ─▶ the webhook
      carries the attempt's traceparent, so the subscriber's trace joins the submitter's

When tracing is off every helper returns at once: :func:`span` a shared ``nullcontext``,
:func:`inject_headers` an empty dict, :func:`exemplar` ``None``; the SDK is not even imported.
When on, the exporter is OTLP over HTTP/protobuf configured by the standard variables
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``), read by the SDK itself.

``Deliverer.send`` adds :func:`inject_headers` (taken inside the deliver span) to the headers
of every attempt, whatever its transport: webhooks and broker messages carry the same
``traceparent``.

Secrets stay out: a request span's path goes through :func:`app.logs.redact_path`, and no
header, body or URL query is recorded.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from app import logs, store

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer
    from sqlalchemy.engine import Engine

    from app.models import Claim

log = logging.getLogger(__name__)
R = TypeVar("R")

#: what :func:`span` returns while tracing is off (reusable: ``nullcontext`` keeps no state)
_NOOP: AbstractContextManager[None] = nullcontext(None)
#: jobs whose traceparent is kept in memory (it never changes once the job is stored)
JOB_CACHE_SIZE = 10_000
#: path segments that are ids, for low-cardinality span names
_ID_SEGMENT = re.compile(r"[a-z]+_[0-9A-Za-z]{6,}|[0-9]+")

_enabled = False
_tracer: Tracer | None = None
_provider: Any = None
_jobs: OrderedDict[str, str | None] = OrderedDict()
_jobs_lock = threading.Lock()


def is_enabled() -> bool:
    return _enabled


def configure(enabled: bool, service_name: str, *, exporter: SpanExporter | None = None) -> None:
    """Turn tracing on (once per process; a no-op when ``enabled`` is false or it is on).

    ``exporter`` (tests: the SDK's ``InMemorySpanExporter``) is exported to synchronously;
    without it spans go in batches to the OTLP exporter the ``OTEL_*`` variables describe.
    """
    global _enabled, _tracer, _provider
    if not enabled or _enabled:
        return
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _provider = provider
    _tracer = provider.get_tracer("cirelay")
    _enabled = True
    logs.use_trace_ids(log_ids)


def shutdown() -> None:
    """Flush what is buffered and turn tracing off (tests; a process ending flushes anyway)."""
    global _enabled, _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _enabled, _tracer, _provider = False, None, None
    logs.use_trace_ids(None)
    with _jobs_lock:
        _jobs.clear()


# --- spans ---------------------------------------------------------------------------------


def span(
    name: str,
    *,
    kind: str = "internal",
    parent: str | None = None,
    attributes: Mapping[str, str | int | float | bool] | None = None,
    link: Any = None,
) -> AbstractContextManager[Span | None]:
    """A span around the block, current inside it. ``parent``: a W3C traceparent to continue
    (otherwise the current span's); ``link``: a span context to link to; ``kind``:
    ``internal``, ``server``, ``client`` or ``producer``."""
    if not _enabled:
        return _NOOP
    return _span(name, kind, parent, attributes, link)


@contextmanager
def _span(
    name: str,
    kind: str,
    parent: str | None,
    attributes: Mapping[str, str | int | float | bool] | None,
    link: Any,
) -> Iterator[Span | None]:
    from opentelemetry.trace import Link, SpanKind

    assert _tracer is not None
    context = _extract({"traceparent": parent}) if parent else None
    with _tracer.start_as_current_span(
        name,
        context=context,
        kind=SpanKind[kind.upper()],
        attributes=dict(attributes or {}),
        links=[Link(link)] if link is not None and link.is_valid else None,
    ) as current:
        yield current


def set_attributes(attributes: Mapping[str, str | int | float | bool | None]) -> None:
    """Attributes on the current span (``None`` values left out)."""
    if not _enabled:
        return
    from opentelemetry import trace

    trace.get_current_span().set_attributes({k: v for k, v in attributes.items() if v is not None})


def current_context() -> Any:
    """The current span's context (``None`` when off): for :func:`span`'s ``link``."""
    if not _enabled:
        return None
    from opentelemetry import trace

    return trace.get_current_span().get_span_context()


def inject_headers() -> dict[str, str]:
    """The headers that carry the current span to the next hop (``traceparent``, and
    ``tracestate`` when set): for an HTTP request to CI, a webhook, a broker message. Empty
    when tracing is off or no span is current."""
    if not _enabled:
        return {}
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    headers: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(headers)
    return headers


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, or ``None``."""
    return inject_headers().get("traceparent") if _enabled else None


def exemplar() -> dict[str, str] | None:
    """The current sampled span as a Prometheus exemplar (``trace_id``, ``span_id``)."""
    if not _enabled:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not (context.is_valid and context.trace_flags.sampled):
        return None
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}


def log_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` of the current span, for log lines (``None`` when off)."""
    if not _enabled:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def _extract(carrier: Mapping[str, str | None]) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract(
        {k: v for k, v in carrier.items() if v is not None}
    )


# --- one span per HTTP request -------------------------------------------------------------


def route_name(method: str, path: str) -> str:
    """A low-cardinality span name: ``POST /v1/jobs``, ``GET /v1/jobs/{id}``,
    ``POST /callbacks/ci/{id}/***`` (ids and secrets out)."""
    shown = logs.redact_path(path)
    segments = ["{id}" if _ID_SEGMENT.fullmatch(s) else s for s in shown.split("/")]
    return f"{method} {'/'.join(segments)}"


class RequestSpan:
    """The server span of one request (started by :func:`start_request`): made current
    until :meth:`end`, with the client's ``traceparent`` as its parent."""

    def __init__(self, method: str, path: str, traceparent: str | None) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace import SpanKind

        assert _tracer is not None
        parent = _extract({"traceparent": traceparent}) if traceparent else None
        self.span = _tracer.start_span(
            route_name(method, path),
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": logs.redact_path(path)},
        )
        self._token = context.attach(trace.set_span_in_context(self.span))

    def status(self, code: int) -> None:
        from opentelemetry.trace import StatusCode

        self.span.set_attribute("http.response.status_code", code)
        if code >= 500:
            self.span.set_status(StatusCode.ERROR)

    def fail(self, exc: BaseException) -> None:
        from opentelemetry.trace import StatusCode

        self.span.record_exception(exc)
        self.span.set_status(StatusCode.ERROR)
        self.end()

    def end(self) -> None:
        from opentelemetry import context

        self.span.end()
        context.detach(self._token)


def start_request(method: str, path: str, traceparent: str | None) -> RequestSpan | None:
    """The request's server span, current from now on; ``None`` when tracing is off."""
    return RequestSpan(method, path, traceparent) if _enabled else None


# --- the trace of a job --------------------------------------------------------------------


def remember_job(job_id: str, traceparent: str | None) -> None:
    """The job was stored with ``traceparent``: no need to read it back in this process."""
    if _enabled:
        _keep(job_id, traceparent)


def job_parent(engine: Engine, job_id: str | None) -> str | None:
    """The traceparent stored with the job at its submit, read once per process (``None``
    when off, for a job not submitted through cirelay, or if it cannot be read: a trace is
    never worth failing a request or a delivery)."""
    if not _enabled or job_id is None:
        return None
    with _jobs_lock:
        if job_id in _jobs:
            _jobs.move_to_end(job_id)
            return _jobs[job_id]
    try:
        with engine.connect() as conn:
            traceparent = store.job_traceparent(conn, job_id)
    except Exception:
        log.warning("tracing: cannot read job %s's traceparent", job_id, exc_info=True)
        return None
    _keep(job_id, traceparent)
    return traceparent


def _keep(job_id: str, traceparent: str | None) -> None:
    with _jobs_lock:
        _jobs[job_id] = traceparent
        _jobs.move_to_end(job_id)
        while len(_jobs) > JOB_CACHE_SIZE:
            _jobs.popitem(last=False)


# --- deliveries ----------------------------------------------------------------------------


def delivery_span(engine: Engine, claim: Claim) -> AbstractContextManager[Span | None]:
    """The span of one delivery attempt, in the trace of the event's job (a new trace for an
    event of no job). Inside it, :func:`inject_headers` gives the message's headers."""
    if not _enabled:
        return _NOOP
    event, subscription = claim.event, claim.subscription
    return span(
        "cirelay.deliver",
        kind="client",
        parent=job_parent(engine, event.job_id),
        attributes={
            "cirelay.event.id": event.id,
            "cirelay.event.type": event.type,
            "cirelay.subscription.id": subscription.id,
            "cirelay.delivery.id": claim.delivery_id,
            "cirelay.delivery.attempt": claim.attempt,
        },
    )


def traced_report(report: R) -> R:
    """An attempt's report (an :class:`app.delivery.sender.AttemptReport`) with its result
    on the current span, and the span as its ``exemplar`` (for the latency histogram)."""
    if not _enabled:
        return report
    result = report.result  # type: ignore[attr-defined]
    set_attributes({
        "cirelay.delivery.result": result.value,
        "http.response.status_code": report.status_code,  # type: ignore[attr-defined]
    })  # fmt: skip
    return replace(report, exemplar=exemplar())  # type: ignore[type-var]
