"""The one path every notification takes, whether it came to a callback URL, from a poll of
CI, or out of quarantine:

    parse + validate ─▶ ONE transaction: notification row + job update + outbox event ─▶ commit
    (shared with the other notifications arriving meanwhile: see app/commits.py)
    (malformed or invalid: raw body, headers and every reason go to quarantine, in a
    transaction of their own, and the caller answers 400)

Nothing here answers HTTP; the web layer and the CLI call :func:`ingest` and render what it
returns or raises. Metrics are counted here, so every path is counted the same way.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from app import events, jobs, store, tracing
from app.commits import GroupCommitter
from app.errors import (
    BadRequestError,
    InvalidNotificationError,
    NotFoundError,
    WrongEndpointError,
)
from app.metrics import Metrics
from app.models import (
    WORKFLOW_TAG,
    ApplyResult,
    JobReport,
    Notification,
    Outcome,
    QuarantinedNotification,
    Received,
    Source,
    tag_label,
)
from app.notifications import parse_notification
from app.schemas import SchemaSet

log = logging.getLogger(__name__)

#: the window ``quarantine_per_minute`` counts a source's quarantine writes in
QUARANTINE_WINDOW = timedelta(minutes=1)


@dataclass(frozen=True)
class Receiver:
    """What ingesting needs: the database, the schemas, the limits and the metrics."""

    engine: Engine
    schemas: SchemaSet
    metrics: Metrics
    committer: GroupCommitter[jobs.Pending, list[ApplyResult]]
    max_depth: int = 32
    #: quarantine writes one source may make per :data:`QUARANTINE_WINDOW`
    quarantine_per_minute: int = 60
    #: job tags recorded from the queue's URL (``CIRELAY_ACCEPT_TAGS``); empty: every tag
    accept_tags: frozenset[str] = frozenset()

    def ingest(
        self, received: Received, now: datetime, *, quarantine: bool = True
    ) -> list[ApplyResult]:
        """Parse, validate and record one notification; raise a ServiceError otherwise.

        A malformed or invalid notification is quarantined (unless ``quarantine`` is false,
        as for a replay out of quarantine) and the error re-raised.

        Traced (``CIRELAY_TRACING=on``) as a span in the trace of the job's submit, found by
        the job id of its callback URL (CI carries no trace header back), linked to the
        callback request's own span.
        """
        with tracing.span("cirelay.ingest", parent=tracing.job_parent(self.engine, received.job_id),
                          link=tracing.current_context(),
                          attributes={"cirelay.source": received.source.value}):  # fmt: skip
            return self._ingest(received, now, quarantine=quarantine)

    def _ingest(self, received: Received, now: datetime, *, quarantine: bool) -> list[ApplyResult]:
        try:
            notification = parse_notification(
                received.body, received.content_type, self.schemas, max_depth=self.max_depth
            )
            kept = self._accepted(notification, received)
            results: list[ApplyResult] = []
            if kept.reports or kept.workflow:
                # a database that is down: 503, CI retries (so do replay and reconciler callers)
                with store.raising_unavailable(), tracing.span("cirelay.commit"):
                    results = self.committer.run(jobs.Pending(kept, received, now))
            if kept is not notification:  # the ignored ones too, in the document's order
                recorded = iter(results)
                results = [
                    next(recorded) if r in kept.reports else _ignored(r)
                    for r in notification.reports
                ]
        except BadRequestError as exc:  # malformed, invalid, or valid but for another job
            if quarantine:
                self._quarantine(received, exc, now)
            raise
        except NotFoundError:
            self.metrics.notifications.labels(Outcome.UNAUTHENTICATED.value).inc()
            raise
        for result in results:
            self._count(result)
        return results

    def _accepted(self, notification: Notification, received: Received) -> Notification:
        """The notification without the jobs of tags ``accept_tags`` excludes (itself when
        it has none). Only the queue's traffic is filtered: a job cirelay submitted reports
        to its own URL, and is always recorded."""
        if not self.accept_tags or received.job_id is not None:
            return notification
        kept = tuple(r for r in notification.reports if r.tag in self.accept_tags)
        if len(kept) == len(notification.reports):
            return notification
        return dataclasses.replace(notification, reports=kept)

    def ingest_polled(self, job_id: str, report: JobReport, now: datetime) -> ApplyResult:
        """Apply what asking CI taught us about ``job_id``, through the same rules as a
        notification, recorded with source ``poll``. Its body is the report as JSON."""
        body = json.dumps(dataclasses.asdict(report), default=str, sort_keys=True).encode()
        notification = Notification(
            event_name=None,
            reports=(report,),
            wire_format="poll",
            body=body,
            content_type="application/json",
        )
        received = Received(
            body=body, content_type="application/json", headers={}, source=Source.POLL,
            job_id=job_id,
        )  # fmt: skip
        (result,) = self.committer.run(jobs.Pending(notification, received, now))
        self._count(result)
        return result

    def _count(self, result: ApplyResult) -> None:
        self.metrics.notifications.labels(result.outcome.value).inc()
        tag = WORKFLOW_TAG if result.workflow else tag_label(result.tag)
        self.metrics.notifications_by_tag.labels(tag, result.outcome.value).inc()
        if result.outcome is Outcome.ACCEPTED and not result.workflow:
            self.metrics.transitions.labels(result.previous_state or "none", result.state).inc()
            if result.ci_duration_seconds is not None:
                self.metrics.ci_job_duration.labels(result.state).observe(
                    max(result.ci_duration_seconds, 0.0)
                )

    def _quarantine(self, received: Received, exc: BadRequestError, now: datetime) -> None:
        outcome = refusal_outcome(exc)
        self.metrics.notifications.labels(outcome.value).inc()
        item = QuarantinedNotification(
            id=0,
            received_at=now,
            source=received.source.value,
            job_id=received.job_id,
            content_type=received.content_type[:128],
            headers=received.headers,
            body=received.body,
            error=outcome.value,
            reasons=exc.details or [{"path": "", "reason": exc.message}],
            replayed_at=None,
            replay_outcome=None,
        )
        # Each invalid notification costs a row (up to the body cap) and an event, and a
        # token holder can send them as fast as it likes: a source (a callback's job, or the
        # queue) stores at most quarantine_per_minute a minute, counted in the database so
        # the bound holds across workers and replicas (concurrent writers may overshoot it
        # by the few that count at the same moment). Beyond it: the same 400, not stored.
        with store.raising_unavailable(), store.transaction(self.engine) as conn:
            recent = store.count_recent_quarantined(
                conn, source=item.source, job_id=item.job_id, since=now - QUARANTINE_WINDOW
            )
            stored = recent < self.quarantine_per_minute
            if stored:
                item = store.insert_quarantined(conn, item)
                events.record_quarantined(conn, item, now)
        if not stored:
            self.metrics.quarantine_dropped.labels(item.source).inc()
        message = "notification quarantined" if stored else "notification not quarantined"
        log.warning(
            message + ("" if stored else ": its source reached CIRELAY_QUARANTINE_PER_MINUTE"),
            extra={"error": exc.code, "reasons": exc.details, "job_id": received.job_id},
        )

    def replay(self, ident: int, now: datetime) -> str:
        """Send a quarantined notification through :meth:`ingest` again (after a schema fix).

        Returns the outcome; records it on the quarantined row. A replay that fails again is
        not quarantined a second time.
        """
        with store.transaction(self.engine) as conn:
            item = store.get_quarantined(conn, ident)
        if item is None:
            raise NotFoundError(f"no quarantined notification {ident}")
        received = Received(
            body=item.body,
            content_type=item.content_type,
            headers=item.headers,
            source=Source.REPLAY,
            job_id=item.job_id,
        )
        try:
            results = self.ingest(received, now, quarantine=False)
            outcome = results[0].outcome.value
        except BadRequestError as exc:
            outcome = refusal_outcome(exc).value
        with store.transaction(self.engine) as conn:
            store.mark_replayed(conn, ident, now, outcome)
        return outcome


def _ignored(report: JobReport) -> ApplyResult:
    """A job of a tag ``CIRELAY_ACCEPT_TAGS`` excludes: answered, counted, not stored."""
    return ApplyResult(Outcome.IGNORED, None, report.ci_job_id, None, report.state, tag=report.tag)


def refusal_outcome(exc: BadRequestError) -> Outcome:
    """What a refused notification counts as, in the metrics, in quarantine and in a
    replay's record: the one place an error is mapped to an outcome."""
    if isinstance(exc, InvalidNotificationError):
        return Outcome.SCHEMA_VIOLATION
    if isinstance(exc, WrongEndpointError):
        return Outcome.WRONG_ENDPOINT
    return Outcome.MALFORMED
