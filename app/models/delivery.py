"""Plain data for delivery: subscriptions, deliveries and their attempts, claims, the filters
the console and the admin API select them by, and the audit log's entries."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.models.job import Event, iso_z
from app.subscriptions import mask_url


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
    #: its endpoint cannot be reached (refused, timing out): no delivery is attempted before
    #: this time, and after it one at a time (a probe) until one succeeds
    paused_until: datetime | None = None

    def view(self) -> dict[str, Any]:
        """The public view: never the secrets (nor a broker URL's credentials)."""
        return {
            "id": self.id,
            "url": mask_url(self.url),
            "event_types": self.event_types,
            "description": self.description,
            "enabled": self.enabled,
            "disabled_reason": self.disabled_reason,
            "failing_since": iso_z(self.failing_since),
            "paused_until": iso_z(self.paused_until),
            "previous_secret_expires_at": iso_z(self.previous_secret_expires_at),
            "created_at": iso_z(self.created_at),
            "updated_at": iso_z(self.updated_at),
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
            "started_at": iso_z(self.started_at),
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
            "next_attempt_at": iso_z(self.next_attempt_at)
            if self.state == DeliveryState.PENDING
            else None,
            "origin": self.origin,
            "created_at": iso_z(self.created_at),
            "completed_at": iso_z(self.completed_at),
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


@dataclass(frozen=True)
class Actor:
    """Who takes an action: the API key's name (never the key) and through what (``api``,
    ``console``)."""

    name: str
    via: str


@dataclass(frozen=True)
class AuditEntry:
    """One action taken in the console or the admin API (:mod:`app.operations`)."""

    id: int
    at: datetime
    actor: str
    via: str
    action: str
    subject: str | None
    details: dict[str, Any]

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": iso_z(self.at),
            "actor": self.actor,
            "via": self.via,
            "action": self.action,
            "subject": self.subject,
            "details": self.details,
        }


@dataclass(frozen=True)
class DeliveryFilter:
    """Which deliveries: of one subscription, in some states, of one job's events, created
    in a time range. Empty fields match everything."""

    subscription_id: str | None = None
    states: tuple[str, ...] = ()
    job_id: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    delivery_id: int | None = None


@dataclass(frozen=True)
class QuarantineFilter:
    """Which quarantined notifications: by error, source, job, time received, and whether
    they still wait for a replay. Empty fields match everything."""

    error: str | None = None
    source: str | None = None
    job_id: str | None = None
    received_after: datetime | None = None
    received_before: datetime | None = None
    pending_only: bool = False
