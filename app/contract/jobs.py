"""``/v1/jobs``: submit a VoiceSeparate job, read one, list them."""

from __future__ import annotations

from typing import Any

from app.ci.rules import (
    AUDIO_MODES,
    BITRATE_RANGE,
    CALLBACK_FORMATS,
    CHANNELS,
    DEFAULT_CODEC,
    DEFAULT_SAMPLERATE,
    JOB_LEVELS,
    MATRIX,
    MAX_USER_DATA,
    MUSIC_MODE,
    MUSIC_MODE_CODECS,
    SAMPLERATES,
)
from app.contract.parts import (
    ADMIN_SCOPE,
    READ,
    READ_SCOPE,
    TRACEPARENT,
    WRITE,
    Schema,
    cursor_page,
    cursor_paging,
    errors,
    json_answer,
    path_parameter,
    query,
    ref,
)
from app.models import JobState, Source

TIMESTAMP: Schema = {"type": ["string", "null"], "format": "date-time"}
STATE: Schema = {"type": "string", "enum": [s.value for s in JobState]}
ORIGINS = ["api", "queue"]

#: the public view of a job (``models.Job.view``): the API's answer and job events' ``data``
JOB: Schema = {
    "type": "object",
    "required": [
        "id",
        "ci_job_id",
        "origin",
        "state",
        "tag",
        "queue_id",
        "input",
        "output",
        "result_files",
        "media_info",
        "error",
        "submit_error",
        "user_data",
        "workflow",
        "template",
        "operation",
        "timings",
    ],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "description": "cirelay's id"},
        "ci_job_id": {"type": ["string", "null"], "description": "CI's JobId, once known"},
        "origin": {"type": "string", "enum": ORIGINS},
        "state": STATE,
        "tag": {"type": "string"},
        "queue_id": {"type": ["string", "null"]},
        "input": {"type": "object"},
        "output": {"type": "object"},
        "result_files": {"type": "array", "items": {"type": "object"}},
        "media_info": {"type": "object"},
        "error": {"type": ["object", "null"], "description": "CI's code and message (Failed)"},
        "submit_error": {"type": ["object", "null"]},
        "user_data": {"type": ["string", "null"]},
        "workflow": {"type": ["object", "null"]},
        "template": {"type": ["object", "null"]},
        "operation": {
            "type": ["object", "null"],
            "description": "the tag's own Operation containers as CI reported them (any tag)",
        },
        "timings": {
            "type": "object",
            "required": [
                "ci_created_at",
                "ci_started_at",
                "ci_ended_at",
                "ci_duration_seconds",
                "created_at",
                "updated_at",
                "last_notified_at",
            ],
            "additionalProperties": False,
            "properties": {
                "ci_created_at": TIMESTAMP,
                "ci_started_at": TIMESTAMP,
                "ci_ended_at": TIMESTAMP,
                "ci_duration_seconds": {"type": ["number", "null"]},
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "last_notified_at": TIMESTAMP,
            },
        },
        "callback_url": {
            "type": "string",
            "description": "the job's CallBack URL (it holds the job's token): admin keys only",
        },
    },
}

_NOTIFICATION: Schema = {
    "type": "object",
    "required": ["id", "state", "source", "outcome", "wire_format", "received_at"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "integer"},
        "state": {"type": "string"},
        "source": {"type": "string", "enum": [s.value for s in Source]},
        "outcome": {"type": "string"},
        "wire_format": {"type": "string", "enum": ["xml", "json"]},
        "received_at": {"type": "string", "format": "date-time"},
    },
}

_TEXT: Schema = {"type": "string", "minLength": 1, "maxLength": 1024}
#: one label each of CI's host name: at most 63 characters
_BUCKET: Schema = {
    "type": "string",
    "maxLength": 63,
    "pattern": "^[a-z0-9][a-z0-9-]{0,48}-[0-9]{1,20}$",
}
_REGION: Schema = {"type": "string", "maxLength": 63, "pattern": "^[a-z]{2,}(-[a-z0-9]+)+$"}

_BITRATE: Schema = {"type": "integer", "minimum": BITRATE_RANGE[0], "maximum": BITRATE_RANGE[1]}


def _audio_config(codecs: Any, rates: Any, channels: Any, *, codec_required: bool) -> Schema:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["codec"] if codec_required else [],
        "properties": {
            "codec": {"type": "string", "enum": list(codecs)},
            "samplerate": {"type": "integer", "enum": [int(r) for r in rates]},
            "bitrate": _BITRATE,
            "channels": {"type": "integer", "enum": [int(c) for c in channels]},
        },
    }


def _matrix_entry(codec: str, rates: tuple[str, ...], channels: tuple[str, ...]) -> Schema:
    """One codec's row of the matrix (spec §2.4); a codec whose rates lack the default needs
    an explicit samplerate."""
    entry = _audio_config([codec], rates, channels, codec_required=codec != DEFAULT_CODEC)
    if DEFAULT_SAMPLERATE not in rates:
        entry["required"] = [*entry["required"], "samplerate"]
    return entry


#: the inline parameters, with the codec x samplerate x channels matrix (app.ci.rules.MATRIX):
#: MusicMode takes its own codecs and ignores the rest
_VOICE_SEPARATE: Schema = {
    "anyOf": [
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["audio_mode"],
            "properties": {
                "audio_mode": {"type": "string", "const": MUSIC_MODE},
                "audio_config": _audio_config(
                    MUSIC_MODE_CODECS, SAMPLERATES, CHANNELS, codec_required=False
                ),
            },
        },
        {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "audio_mode": {
                    "type": "string",
                    "enum": [m for m in AUDIO_MODES if m != MUSIC_MODE],
                },
                "audio_config": {
                    "anyOf": [
                        _matrix_entry(codec, rates, channels)
                        for codec, (rates, channels) in MATRIX.items()
                    ]
                },
            },
        },
    ]
}

JOB_REQUEST: Schema = {
    "type": "object",
    "description": (
        "A VoiceSeparate job in CI's own terms, snake_case: `template_id` or "
        "`voice_separate`; `input.bucket`/`region` default from the environment. Every "
        "problem is answered at once, 422 with `details`."
    ),
    "required": ["input", "output"],
    "additionalProperties": False,
    "properties": {
        "input": {
            "type": "object",
            "required": ["object"],
            "additionalProperties": False,
            "properties": {"bucket": _BUCKET, "region": _REGION, "object": _TEXT},
        },
        "template_id": {"type": "string", "pattern": "^t[0-9a-zA-Z]{1,64}$"},
        "voice_separate": _VOICE_SEPARATE,
        "output": {
            "type": "object",
            "required": ["region", "bucket"],
            "additionalProperties": False,
            "properties": {
                "region": _REGION,
                "bucket": _BUCKET,
                "object": _TEXT,
                "au_object": _TEXT,
            },
            "anyOf": [{"required": ["object"]}, {"required": ["au_object"]}],
        },
        "queue_id": {"type": "string", "pattern": "^p[0-9a-f]{32}$"},
        "user_data": {"type": "string", "maxLength": MAX_USER_DATA},
        "job_level": {"type": "integer", "enum": [int(level) for level in JOB_LEVELS]},
        "callback_format": {"type": "string", "enum": list(CALLBACK_FORMATS)},
    },
    "example": {
        "input": {"object": "songs/a.wav"},
        "voice_separate": {
            "audio_mode": "AudioAndBackground",
            "audio_config": {"codec": "mp3", "samplerate": 44100, "bitrate": 128, "channels": 2},
        },
        "output": {
            "region": "ap-guangzhou",
            "bucket": "media-1250000000",
            "object": "stems/${jobid}/bgm.${ext}",
            "au_object": "stems/${jobid}/vocal.${ext}",
        },
        "user_data": "order-1",
        "job_level": 1,
    },
}

_GET_JOB_LINK = {"operationId": "getJob", "parameters": {"ident": "$response.body#/id"}}

PATHS: dict[str, Any] = {
    "/v1/jobs": {
        "post": {
            "operationId": "submitJob",
            "tags": ["jobs"],
            "summary": "Submit a VoiceSeparate job to CI",
            "description": (
                "cirelay's JSON, or CI's own `<Request>` XML (its CallBack is replaced by "
                "cirelay's). The job is stored, then sent to CI; 201 once CI accepted it. "
                "With `Idempotency-Key`, a repeat of the same request answers the same job "
                "(`Idempotent-Replayed: true`); another request with that key is a 409."
            ),
            "security": ADMIN_SCOPE,
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                },
                TRACEPARENT,
                query(
                    "bucket",
                    "XML bodies: the CI bucket (default from the environment)",
                    {"type": "string"},
                ),
                query("region", "XML bodies: the CI region", {"type": "string"}),
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": ref("JobRequest")},
                    "application/xml": {"schema": {"type": "string"}},
                    "text/xml": {"schema": {"type": "string"}},
                },
            },
            "responses": {
                "201": json_answer(
                    "Accepted by CI",
                    ref("Job"),
                    headers={
                        "Location": {"$ref": "#/components/headers/Location"},
                        "Idempotent-Replayed": {
                            "description": "`true` when this answers an earlier request",
                            "schema": {"type": "string", "enum": ["true"]},
                        },
                    },
                    links={"GetJob": _GET_JOB_LINK},
                ),
                **errors(400, *WRITE, 409, 413, 415, 422, 502, 504),
            },
        },
        "get": {
            "operationId": "listJobs",
            "tags": ["jobs"],
            "summary": "List jobs, newest first",
            "security": READ_SCOPE,
            "parameters": [
                query(
                    "state",
                    "repeat or comma-separate",
                    {"type": "array", "items": STATE},
                    style="form",
                    explode=True,
                ),
                query("tag", "CI's job tag", {"type": "string", "maxLength": 32}),
                query("origin", "how cirelay learnt of it", {"type": "string", "enum": ORIGINS}),
                query("ci_job_id", "CI's JobId", {"type": "string", "maxLength": 64}),
                query("user_data", "contains", {"type": "string", "maxLength": 1024}),
                *cursor_paging(),
            ],
            "responses": {
                "200": json_answer("One page", cursor_page("jobs", ref("Job"))),
                **errors(400, *READ),
            },
        },
    },
    "/v1/jobs/{ident}": {
        "get": {
            "operationId": "getJob",
            "tags": ["jobs"],
            "summary": "One job, by cirelay id or CI JobId, with its notifications",
            "security": READ_SCOPE,
            "parameters": [path_parameter("ident", "cirelay's job id or CI's JobId")],
            "responses": {
                "200": json_answer("The job", ref("JobDetail")),
                **errors(404, *READ),
            },
        }
    },
}

SCHEMAS: dict[str, Schema] = {
    "Job": JOB,
    "JobDetail": {
        **JOB,
        "required": [*JOB["required"], "notifications"],
        "properties": {
            **JOB["properties"],
            "notifications": {"type": "array", "items": _NOTIFICATION},
        },
    },
    "JobRequest": JOB_REQUEST,
}
