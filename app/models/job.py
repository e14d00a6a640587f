"""Plain data: the job states CI reports and what one notification says about one job."""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


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
    # valid, about a tag CIRELAY_ACCEPT_TAGS excludes: answered 200, not stored
    IGNORED = "ignored"


#: the tags the ``tag`` metric label names (CI's media job tags, spec §10 and the SDKs); any
#: other tag is counted as ``other``, so the label stays bounded whatever a queue sends
KNOWN_TAGS = (
    "VoiceSeparate", "NoiseReduction", "SpeechRecognition", "Tts", "Transcode", "Snapshot",
    "Animation", "Concat", "SmartCover", "VideoMontage", "VideoProcess", "Watermark",
    "SDRtoHDR", "DigitalWatermark", "ExtractDigitalWatermark", "SuperResolution",
    "Segment", "StreamExtract", "PicProcess", "MediaInfo", "SoundHound", "VideoTag",
    "QualityEstimate", "Translation", "WordsGeneralize", "FileCompress", "FileUncompress",
    "FileHashCode",
)  # fmt: skip
_KNOWN_TAGS = frozenset(KNOWN_TAGS)
#: the one tag cirelay submits and types beyond the envelope (``notification.xsd``)
VOICE_SEPARATE = "VoiceSeparate"
#: a workflow instance's states (WorkflowExecution.State: Failed when any task failed)
WORKFLOW_STATES = (JobState.SUCCESS.value, JobState.FAILED.value)
#: the ``tag`` label of a workflow instance's notification
WORKFLOW_TAG = "workflow"


def tag_label(tag: str) -> str:
    """The bounded ``tag`` metric label of a job's tag: itself if known, else ``other``."""
    return tag if tag in _KNOWN_TAGS else "other"


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
    #: the tag's own Operation containers as received (``{"NoiseReduction": {...}}``)
    operation: dict[str, Any] | None = None

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
    #: a WorkflowFinish: the instance it reports (``reports`` is then empty)
    workflow: WorkflowReport | None = None


@dataclass(frozen=True)
class WorkflowReport:
    """What a valid WorkflowFinish says about one workflow instance (execution)."""

    run_id: str
    workflow_id: str
    workflow_name: str | None
    bucket: str | None
    object: str | None
    cos_headers: dict[str, str]
    state: str  # Success or Failed
    ci_created_at: datetime | None
    #: each node: type, state, ci_job_id, name, template_id, template_name, created/ended
    tasks: list[dict[str, Any]]
    #: sha256 over the canonical form of the WorkflowExecution: equal content, equal digest
    digest: str


@dataclass(frozen=True)
class WorkflowExecution:
    """A workflow instance as cirelay records it."""

    id: str
    report: WorkflowReport
    source: str
    wire_format: str
    created_at: datetime

    def view(self, job_ids: dict[str, str] | None = None) -> dict[str, Any]:
        """The public JSON view: the read API's answer and the event's ``data``. ``job_ids``
        maps CI JobIds to cirelay's job ids, to link each task to its job."""
        r = self.report
        links = job_ids or {}
        return {
            "id": self.id,
            "run_id": r.run_id,
            "workflow_id": r.workflow_id,
            "workflow_name": r.workflow_name,
            "bucket": r.bucket,
            "object": r.object,
            "cos_headers": r.cos_headers,
            "state": r.state,
            "tasks": [
                {**task, "job_id": links.get(task.get("ci_job_id") or "")} for task in r.tasks
            ],
            "timings": {
                "ci_created_at": iso_z(r.ci_created_at),
                "ci_ended_at": max(
                    (t["ci_ended_at"] for t in r.tasks if t.get("ci_ended_at")), default=None
                ),
                "created_at": iso_z(self.created_at),
            },
            "source": self.source,
            "wire_format": self.wire_format,
        }


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
    """What became of one JobsDetail (or of one WorkflowExecution: ``job_id`` is then the
    execution's id, ``ci_job_id`` its RunId and ``workflow`` true)."""

    outcome: Outcome
    job_id: str | None
    ci_job_id: str
    previous_state: JobState | None
    state: JobState
    ci_duration_seconds: float | None = None
    details: list[str] = field(default_factory=list)
    #: the job's tag (``workflow`` for a workflow instance), for the ``tag`` metric label
    tag: str = ""
    workflow: bool = False


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
    #: the tag's own Operation containers as CI reported them (any tag, typed as received)
    operation: dict[str, Any] | None = None

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
            "operation": self.operation,
            "timings": {
                "ci_created_at": iso_z(self.ci_created_at),
                "ci_started_at": iso_z(self.ci_started_at),
                "ci_ended_at": iso_z(self.ci_ended_at),
                "ci_duration_seconds": (
                    (self.ci_ended_at - self.ci_created_at).total_seconds()
                    if self.ci_ended_at and self.ci_created_at
                    else None
                ),
                "created_at": iso_z(self.created_at),
                "updated_at": iso_z(self.updated_at),
                "last_notified_at": iso_z(self.last_notified_at),
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
    #: read only when asked for (``store.list_notifications(..., with_bodies=True)``)
    content_type: str | None = None
    headers: dict[str, str] | None = None
    body: bytes | None = None


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


def iso_z(value: datetime | None) -> str | None:
    """A time as the API and events show it: ISO 8601, UTC as ``Z``."""
    return value.isoformat().replace("+00:00", "Z") if value else None


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id(prefix: str, now: datetime) -> str:
    """A ULID with a prefix: 48 bits of milliseconds then 80 random bits, Crockford base32.

    Ids sort by creation time, so they double as pagination cursors.
    """
    value = (int(now.timestamp() * 1000) << 80) | secrets.randbits(80)
    chars = [_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5)]
    return f"{prefix}_{''.join(chars)}"
