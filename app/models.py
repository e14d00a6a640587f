"""Plain data: the job states CI reports and what one notification says about one job."""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.subscriptions import mask_url


class JobState(enum.StrEnum):
    """A job's states: CI's, spelled as CI spells them (§3.1 of the spec), and before them
    cirelay's own ``Submitting`` (stored, not yet acknowledged by CI; CI never reports it)."""

    SUBMITTING = "Submitting"
    SUBMITTED = "Submitted"
    RUNNING = "Running"
    SUCCESS = "Success"
    FAILED = "Failed"
    PAUSE = "Pause"
    CANCEL = "Cancel"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def event_name(self) -> str:
        """The verb used in event types: ``com.cirelay.job.<event_name>``."""
        return _EVENT_NAMES[self]


TERMINAL_STATES = frozenset({JobState.SUCCESS, JobState.FAILED, JobState.CANCEL})

#: no event says a job is Submitting: its first event is the move out of it
_EVENT_NAMES = {
    JobState.SUBMITTED: "submitted",
    JobState.RUNNING: "running",
    JobState.SUCCESS: "succeeded",
    JobState.FAILED: "failed",
    JobState.PAUSE: "paused",
    JobState.CANCEL: "cancelled",
}


class Outcome(enum.StrEnum):
    """What became of one notification; also the ``outcome`` label of the metrics."""

    ACCEPTED = "accepted"  # moved the job to a new state
    DUPLICATE = "duplicate"  # same job, same content as one already recorded
    STALE = "stale"  # recorded, but the job had already moved on
    SCHEMA_VIOLATION = "schema_violation"
    MALFORMED = "malformed"
    UNAUTHENTICATED = "unauthenticated"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    TRUNCATED = "truncated"  # the body ended before its Content-Length: nothing recorded
    # a queue notification about a job cirelay submitted (it has its own CallBack URL)
    WRONG_ENDPOINT = "wrong_endpoint"


class Source(enum.StrEnum):
    """How a notification reached us."""

    CALLBACK = "callback"  # per-job CallBack URL
    QUEUE = "queue"  # queue-level URL, jobs nobody submitted through cirelay
    POLL = "poll"  # learnt by asking CI (reconciler)
    REPLAY = "replay"  # a quarantined notification replayed


@dataclass(frozen=True)
class JobReport:
    """One ``JobsDetail`` of a notification, reduced to what cirelay records."""

    ci_job_id: str
    state: JobState
    tag: str
    code: str
    message: str
    queue_id: str | None
    created_at: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    user_data: str | None
    input: dict[str, Any]
    output: dict[str, Any]
    result_files: list[dict[str, Any]]
    media_info: dict[str, Any]
    workflow: dict[str, Any] | None
    template: dict[str, Any] | None
    #: sha256 over the canonical form of this JobsDetail: equal content, equal digest
    digest: str

    @property
    def ci_duration_seconds(self) -> float | None:
        if self.created_at and self.ended_at:
            return (self.ended_at - self.created_at).total_seconds()
        return None


@dataclass(frozen=True)
class Notification:
    """A parsed, schema-valid notification: what CI said, and the bytes it said it in."""

    event_name: str | None
    reports: tuple[JobReport, ...]
    wire_format: str  # "xml" or "json"
    body: bytes
    content_type: str


@dataclass(frozen=True)
class Received:
    """A notification as it arrived, before any parsing: what quarantine keeps."""

    body: bytes
    content_type: str
    headers: dict[str, str]
    source: Source
    job_id: str | None = None  # the cirelay job named by the URL, for per-job callbacks


@dataclass
class ApplyResult:
    outcome: Outcome
    job_id: str
    ci_job_id: str
    previous_state: JobState | None
    state: JobState
    ci_duration_seconds: float | None = None
    details: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Job:
    """A job as cirelay records it."""

    id: str
    ci_job_id: str | None
    origin: str  # "api" (submitted through cirelay) or "queue" (learnt from a notification)
    state: JobState
    tag: str
    queue_id: str | None
    code: str | None
    message: str | None
    user_data: str | None
    input: dict[str, Any]
    output: dict[str, Any]
    result_files: list[dict[str, Any]]
    media_info: dict[str, Any]
    workflow: dict[str, Any] | None
    template: dict[str, Any] | None
    ci_created_at: datetime | None
    ci_started_at: datetime | None
    ci_ended_at: datetime | None
    created_at: datetime
    updated_at: datetime
    last_notified_at: datetime | None
    #: for jobs submitted through cirelay: the CI request as sent, the client's
    #: Idempotency-Key and a digest of its request, and CI's error if it refused
    request: dict[str, Any] | None = None
    idempotency_key: str | None = None
    request_digest: str | None = None
    submit_error: dict[str, Any] | None = None

    def view(self) -> dict[str, Any]:
        """The public JSON view of a job: the read API's answer and every event's ``data``."""
        failed = self.state == JobState.FAILED
        return {
            "id": self.id,
            "ci_job_id": self.ci_job_id,
            "origin": self.origin,
            "state": self.state,
            "tag": self.tag,
            "queue_id": self.queue_id,
            "input": self.input,
            "output": self.output,
            "result_files": self.result_files,
            "media_info": self.media_info,
            "error": (self.submit_error or {"code": self.code, "message": self.message})
            if failed
            else None,
            # what went wrong submitting it, kept after an ambiguous timeout is resolved
            "submit_error": self.submit_error,
            "user_data": self.user_data,
            "workflow": self.workflow,
            "template": self.template,
            "timings": {
                "ci_created_at": _iso(self.ci_created_at),
                "ci_started_at": _iso(self.ci_started_at),
                "ci_ended_at": _iso(self.ci_ended_at),
                "ci_duration_seconds": (
                    (self.ci_ended_at - self.ci_created_at).total_seconds()
                    if self.ci_ended_at and self.ci_created_at
                    else None
                ),
                "created_at": _iso(self.created_at),
                "updated_at": _iso(self.updated_at),
                "last_notified_at": _iso(self.last_notified_at),
            },
        }


@dataclass(frozen=True)
class NotificationRecord:
    """One stored notification of a job."""

    id: int
    job_id: str
    state: str
    source: str
    outcome: str
    wire_format: str
    digest: str
    received_at: datetime


@dataclass(frozen=True)
class QuarantinedNotification:
    id: int
    received_at: datetime
    source: str
    job_id: str | None
    content_type: str
    headers: dict[str, str]
    body: bytes
    error: str
    reasons: list[dict[str, str]]
    replayed_at: datetime | None
    replay_outcome: str | None


@dataclass(frozen=True)
class Event:
    """One entry of the outbox: a job state change or a quarantined notification."""

    seq: int
    id: str
    type: str
    source: str
    subject: str | None
    job_id: str | None
    time: datetime
    data: dict[str, Any]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(prefix: str, now: datetime) -> str:
    """A ULID with a prefix: 48 bits of milliseconds then 80 random bits, Crockford base32.

    Ids sort by creation time, so they double as pagination cursors.
    """
    value = (int(now.timestamp() * 1000) << 80) | secrets.randbits(80)
    chars = [_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5)]
    return f"{prefix}_{''.join(chars)}"


@dataclass(frozen=True)
class Figures:
    """What the metrics read from the database at scrape time."""

    quarantine_size: int
    delivery_backlog: int
    delivery_backlog_oldest_seconds: float
    subscriptions_disabled: int


@dataclass(frozen=True)
class TypeFilter:
    """Event-type patterns (``com.cirelay.job.succeeded``, ``com.cirelay.job.*``, ``*``) as
    exact types and prefixes; no patterns or ``*`` means every type."""

    types: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()

    @classmethod
    def from_patterns(cls, patterns: list[str]) -> TypeFilter:
        if not patterns or "*" in patterns:
            return cls()
        return cls(
            types=tuple(p for p in patterns if not p.endswith(".*")),
            prefixes=tuple(p[:-1] for p in patterns if p.endswith(".*")),
        )

    @property
    def everything(self) -> bool:
        return not self.types and not self.prefixes

    def matches(self, event_type: str) -> bool:
        return (
            self.everything
            or event_type in self.types
            or any(event_type.startswith(p) for p in self.prefixes)
        )


@dataclass(frozen=True)
class Subscription:
    """Where events go: a URL, which event types, and the Standard Webhooks secret(s)."""

    id: str
    url: str
    event_types: list[str]
    description: str
    enabled: bool
    secret: str
    previous_secret: str | None
    previous_secret_expires_at: datetime | None
    disabled_reason: str | None
    created_at: datetime
    updated_at: datetime
    #: the last event sequence number considered for this subscription (the fan-out cursor)
    fanout_seq: int = 0
    #: since when its deliveries have kept failing (``None`` while healthy)
    failing_since: datetime | None = None
    last_failure_at: datetime | None = None
    successes_in_a_row: int = 0

    def view(self) -> dict[str, Any]:
        """The public view: never the secrets (nor a broker URL's credentials)."""
        return {
            "id": self.id,
            "url": mask_url(self.url),
            "event_types": self.event_types,
            "description": self.description,
            "enabled": self.enabled,
            "disabled_reason": self.disabled_reason,
            "failing_since": _iso(self.failing_since),
            "previous_secret_expires_at": _iso(self.previous_secret_expires_at),
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
        }

    def signing_secrets(self, now: datetime) -> list[str]:
        """The secrets a delivery is signed with now: the current one, and the previous one
        during its grace period after a rotation."""
        if (
            self.previous_secret
            and self.previous_secret_expires_at
            and (now < self.previous_secret_expires_at)
        ):
            return [self.secret, self.previous_secret]
        return [self.secret]


class DeliveryState(enum.StrEnum):
    PENDING = "pending"  # waiting for its first attempt, a retry, or an earlier event of its job
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # given up: retries exhausted, or the subscriber answered 410 Gone


class AttemptResult(enum.StrEnum):
    """What one delivery attempt came to; also the ``result`` label of the metrics."""

    SUCCESS = "success"  # 2xx
    HTTP_ERROR = "http_error"  # any other status, redirects included (never followed)
    GONE = "gone"  # 410: the subscriber asks us to stop
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    FORBIDDEN_ADDRESS = "forbidden_address"  # resolved to a non-public address at connect
    REJECTED = "rejected"  # a broker refused it: unroutable, no such stream or exchange, nack


@dataclass(frozen=True)
class DeliveryAttempt:
    delivery_id: int
    attempt: int
    started_at: datetime
    duration_ms: float
    result: str
    status_code: int | None
    error: str | None

    def view(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "started_at": _iso(self.started_at),
            "duration_ms": round(self.duration_ms, 3),
            "result": self.result,
            "status_code": self.status_code,
            "error": self.error,
        }


@dataclass(frozen=True)
class Delivery:
    """One event on its way to one subscription."""

    id: int
    subscription_id: str
    event_seq: int
    event_id: str
    event_type: str
    order_key: str | None
    state: str
    attempts: int
    next_attempt_at: datetime
    origin: str
    created_at: datetime
    completed_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    history: list[DeliveryAttempt] = field(default_factory=list)

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "subscription_id": self.subscription_id,
            "event_id": self.event_id,
            "event_type": self.event_type,
            "sequence": self.event_seq,
            "state": self.state,
            "attempts": self.attempts,
            "next_attempt_at": _iso(self.next_attempt_at)
            if self.state == DeliveryState.PENDING
            else None,
            "origin": self.origin,
            "created_at": _iso(self.created_at),
            "completed_at": _iso(self.completed_at),
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "history": [a.view() for a in self.history],
        }


@dataclass(frozen=True)
class Claim:
    """A delivery a worker has leased for one attempt: everything the attempt needs."""

    delivery_id: int
    attempt: int
    lease_owner: str
    origin: str
    subscription: Subscription
    event: Event
