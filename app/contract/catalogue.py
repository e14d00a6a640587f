"""The event catalogue: every event type cirelay emits, the JSON Schema of its ``data`` and an
example, as ``GET /v1/event-types`` serves them and the AsyncAPI document lists them.

Adding an event type is one entry in :data:`EVENT_TYPES` (a test fails for any event the
suite writes to the outbox whose type is not here or whose ``data`` breaks its schema)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.contract.jobs import JOB
from app.contract.parts import Schema
from app.contract.workflows import WORKFLOW_EXECUTION
from app.delivery import SUBSCRIPTION_DISABLED
from app.events import QUARANTINED, WORKFLOW_FINISHED, job_event_type
from app.models import JobState, Source
from app.operations import TEST_EVENT_TYPE

DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True)
class EventType:
    type: str
    description: str
    #: the JSON Schema of the event's ``data``
    schema: Schema
    #: the CloudEvent's ``source`` and ``subject`` in the example
    source: str
    subject: str | None
    example_data: dict[str, Any]
    #: written to the event log (the outbox), so it has a ``sequence``; False for an event
    #: sent to one webhook outside it (the test event)
    logged: bool = True

    def example(self) -> dict[str, Any]:
        """A whole CloudEvent of this type, as a subscriber receives it."""
        document: dict[str, Any] = {
            "specversion": "1.0",
            "id": "evt_01JD2Q8Z6R3W1XK9Y4V7T5M0AB",
            "type": self.type,
            "source": self.source,
            "time": "2026-11-25T08:00:00.123456Z",
            "datacontenttype": "application/json",
            "sequence": "42",
            "data": self.example_data,
        }
        if not self.logged:
            del document["sequence"]
        if self.subject is not None:
            document["subject"] = self.subject
        return document

    def view(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "description": self.description,
            "schema": self.schema,
            "example": self.example(),
        }


def _schema(title: str, body: Schema) -> Schema:
    return {"$schema": DIALECT, "title": title, **body}


_CI_JOB_ID = "j6d67510d4c4f15952ca66bc47f5b1ea3"
_JOB_SOURCE = "https://media-1250000000.ci.ap-guangzhou.myqcloud.com/queues/default"

#: what each job state's event says, for the catalogue
_JOB_STATES = {
    JobState.SUBMITTED: "CI accepted the job (or cirelay first heard of a queue job).",
    JobState.RUNNING: "CI started the job.",
    JobState.SUCCESS: "The job succeeded: `result_files` names the stems written.",
    JobState.FAILED: "The job failed: `error` has CI's code and message (or the refusal).",
    JobState.PAUSE: "The job's queue was paused.",
    JobState.CANCEL: "The job was cancelled.",
}


def _job_example(state: JobState) -> dict[str, Any]:
    failed = state is JobState.FAILED
    ended = state.is_terminal
    return {
        "id": "job_01JD2Q8Z6R3W1XK9Y4V7T5M0AB",
        "ci_job_id": _CI_JOB_ID,
        "origin": "api",
        "state": state.value,
        "tag": "VoiceSeparate",
        "queue_id": "p2242ab62c7c94486915508540933a2c6",
        "input": {
            "bucket": "media-1250000000",
            "region": "ap-guangzhou",
            "object": "songs/a.wav",
        },
        "output": {
            "bucket": "media-1250000000",
            "region": "ap-guangzhou",
            "object": "stems/bgm.mp3",
            "au_object": "stems/vocal.mp3",
        },
        "result_files": [{"object": "stems/bgm.mp3"}, {"object": "stems/vocal.mp3"}]
        if state is JobState.SUCCESS
        else [],
        "media_info": {},
        "error": {"code": "1015", "message": "input is not an audio file"} if failed else None,
        "submit_error": None,
        "user_data": "order-1",
        "workflow": None,
        "template": None,
        "operation": None,
        "timings": {
            "ci_created_at": "2026-11-25T07:59:58Z",
            "ci_started_at": "2026-11-25T07:59:59Z" if state is not JobState.SUBMITTED else None,
            "ci_ended_at": "2026-11-25T08:00:00Z" if ended else None,
            "ci_duration_seconds": 2.0 if ended else None,
            "created_at": "2026-11-25T07:59:57.5Z",
            "updated_at": "2026-11-25T08:00:00.1Z",
            "last_notified_at": "2026-11-25T08:00:00.1Z",
        },
        "previous_state": None if state is JobState.SUBMITTED else JobState.SUBMITTED.value,
    }


def _job_event(state: JobState) -> EventType:
    name = job_event_type(state)
    schema = _schema(
        name,
        {
            **JOB,
            "description": "The job as `GET /v1/jobs/{ident}` shows it, and its previous state.",
            "required": [*JOB["required"], "previous_state"],
            "properties": {
                **JOB["properties"],
                "state": {"type": "string", "const": state.value},
                "previous_state": {
                    "type": ["string", "null"],
                    "enum": [*(s.value for s in JobState), None],
                },
            },
        },
    )
    return EventType(name, _JOB_STATES[state], schema, _JOB_SOURCE, _CI_JOB_ID, _job_example(state))


_QUARANTINED = EventType(
    QUARANTINED,
    "A notification was refused (malformed, or invalid against CI's schema) and kept in "
    "quarantine for `cirelay quarantine show|replay`.",
    _schema(
        QUARANTINED,
        {
            "type": "object",
            "required": ["quarantine_id", "source", "job_id", "error", "reasons"],
            "additionalProperties": False,
            "properties": {
                "quarantine_id": {"type": "integer"},
                "source": {"type": "string", "enum": [s.value for s in Source]},
                "job_id": {"type": ["string", "null"]},
                "error": {"type": "string"},
                "reasons": {"type": "array", "items": {"type": "object"}},
            },
        },
    ),
    "/cirelay/quarantine",
    None,
    {
        "quarantine_id": 7,
        "source": "queue",
        "job_id": None,
        "error": "invalid_notification",
        "reasons": [{"path": "/Response/JobsDetail/State", "message": "not a job state"}],
    },
)

_DISABLED = EventType(
    SUBSCRIPTION_DISABLED,
    "A subscription stopped receiving deliveries (failing too long, or it answered 410).",
    _schema(
        SUBSCRIPTION_DISABLED,
        {
            "type": "object",
            "required": ["subscription_id", "url", "reason"],
            "additionalProperties": False,
            "properties": {
                "subscription_id": {"type": "string"},
                "url": {"type": "string"},
                "reason": {"type": "string"},
            },
        },
    ),
    "/cirelay/subscriptions",
    "sub_01JD2Q8Z6R3W1XK9Y4V7T5M0AB",
    {
        "subscription_id": "sub_01JD2Q8Z6R3W1XK9Y4V7T5M0AB",
        "url": "https://hooks.example.com/cirelay",
        "reason": "deliveries failing since 2026-11-24T08:00:00Z",
    },
)

_RUN_ID = "i8d9f3c2a1b0e11ef9a7b525400a1b2c3"

_WORKFLOW_FINISHED = EventType(
    WORKFLOW_FINISHED,
    "A workflow instance ended (CI's WorkflowFinish): each node, linked to cirelay's job by "
    "its CI JobId. As `GET /v1/workflow-executions/{ident}` shows it.",
    _schema(WORKFLOW_FINISHED, WORKFLOW_EXECUTION),
    "https://media-1250000000.ci.myqcloud.com/workflows/w1b4a2c3d4e5f60718293a4b5c6d7e8f9",
    _RUN_ID,
    {
        "id": "wfx_01JD2Q8Z6R3W1XK9Y4V7T5M0AB",
        "run_id": _RUN_ID,
        "workflow_id": "w1b4a2c3d4e5f60718293a4b5c6d7e8f9",
        "workflow_name": "separate-uploads",
        "bucket": "media-1250000000",
        "object": "songs/a.wav",
        "cos_headers": {"Content-Type": "audio/wav"},
        "state": JobState.SUCCESS.value,
        "tasks": [
            {
                "type": "VoiceSeparate",
                "state": JobState.SUCCESS.value,
                "ci_job_id": _CI_JOB_ID,
                "name": "VoiceSeparate_1581665960536",
                "template_id": "t1460606b9752148c4ab182f55163ba7cd",
                "template_name": "voice-separate",
                "ci_created_at": "2026-11-25T07:59:58Z",
                "ci_ended_at": "2026-11-25T08:00:00Z",
                "job_id": "job_01JD2Q8Z6R3W1XK9Y4V7T5M0AB",
            }
        ],
        "timings": {
            "ci_created_at": "2026-11-25T07:59:57Z",
            "ci_ended_at": "2026-11-25T08:00:00Z",
            "created_at": "2026-11-25T08:00:00.1Z",
        },
        "source": "queue",
        "wire_format": "xml",
    },
)

_TEST = EventType(
    TEST_EVENT_TYPE,
    "A test event (`POST /v1/subscriptions/{ident}/test`, or the console's button): sent "
    "to that one webhook at once, outside the event log (never in `GET /v1/events`, the "
    "stream or a broker), so it has no `sequence`.",
    _schema(
        TEST_EVENT_TYPE,
        {
            "type": "object",
            "required": ["subscription_id", "test", "sent_by"],
            "additionalProperties": False,
            "properties": {
                "subscription_id": {"type": "string"},
                "test": {"type": "boolean", "const": True},
                "sent_by": {"type": "string", "description": "the API key's name"},
            },
        },
    ),
    "/cirelay/console",
    "sub_01JD2Q8Z6R3W1XK9Y4V7T5M0AB",
    {"subscription_id": "sub_01JD2Q8Z6R3W1XK9Y4V7T5M0AB", "test": True, "sent_by": "ops"},
    logged=False,
)

#: the types written to the event log (the outbox): every channel carries them
LOGGED: tuple[EventType, ...] = (
    *(_job_event(state) for state in _JOB_STATES),
    _WORKFLOW_FINISHED,
    _QUARANTINED,
    _DISABLED,
)
#: the types sent to one webhook only, outside the log
WEBHOOK_ONLY: tuple[EventType, ...] = (_TEST,)

#: every event type, by name: one entry per type
EVENT_TYPES: dict[str, EventType] = {t.type: t for t in (*LOGGED, *WEBHOOK_ONLY)}
