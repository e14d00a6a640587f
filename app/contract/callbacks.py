"""The endpoints CI calls (``app.web.callbacks``): a job's CallBack URL and the queue's.
Authenticated by the URL itself (the job's token, the queue secret): an unknown job and a
wrong token are the same 404."""

from __future__ import annotations

from typing import Any

from app.contract.parts import PUBLIC, Schema, errors, json_answer, path_parameter, ref
from app.models import WORKFLOW_STATES, JobState, Outcome

#: what became of one report: recorded (accepted, duplicate, stale) or not stored (ignored:
#: a tag ``CIRELAY_ACCEPT_TAGS`` excludes)
_OUTCOME: Schema = {
    "type": "string",
    "enum": [
        o.value for o in (Outcome.ACCEPTED, Outcome.DUPLICATE, Outcome.STALE, Outcome.IGNORED)
    ],
}
_STATE: Schema = {"type": "string", "enum": [s.value for s in JobState]}

_RESULT: Schema = {
    "oneOf": [
        {
            "type": "object",
            "description": "A job's report (`job_id` is null when ignored)",
            "required": ["outcome", "job_id", "ci_job_id", "state"],
            "additionalProperties": False,
            "properties": {
                "outcome": _OUTCOME,
                "job_id": {"type": ["string", "null"]},
                "ci_job_id": {"type": "string"},
                "state": _STATE,
            },
        },
        {
            "type": "object",
            "description": "A workflow instance's report (WorkflowFinish)",
            "required": ["outcome", "workflow_execution_id", "run_id", "state"],
            "additionalProperties": False,
            "properties": {
                "outcome": _OUTCOME,
                "workflow_execution_id": {"type": ["string", "null"]},
                "run_id": {"type": "string"},
                "state": {"type": "string", "enum": list(WORKFLOW_STATES)},
            },
        },
    ]
}

_BODY = {
    "required": True,
    "description": "CI's notification: `<Response><JobsDetail>…` as XML, or its JSON form",
    "content": {
        "application/xml": {"schema": {"type": "string"}},
        "text/xml": {"schema": {"type": "string"}},
        "application/json": {"schema": {"type": "object"}},
    },
}


def _callback(
    operation_id: str, summary: str, description: str, parameters: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "post": {
            "operationId": operation_id,
            "tags": ["callbacks"],
            "summary": summary,
            "description": description
            + (
                " Answered only once durably recorded: 200 with one result per job in the "
                "notification. A malformed or invalid body is quarantined (400: CI does not "
                "retry it); 503 while the database is down (CI retries)."
            ),
            "security": PUBLIC,
            "parameters": parameters,
            "requestBody": _BODY,
            "responses": {
                "200": json_answer(
                    "Recorded",
                    {
                        "type": "object",
                        "required": ["results"],
                        "additionalProperties": False,
                        "properties": {
                            "results": {"type": "array", "items": ref("CallbackResult")}
                        },
                    },
                ),
                **errors(400, 404, 413, 415, 503),
            },
        }
    }


PATHS: dict[str, Any] = {
    "/callbacks/ci/{job_id}/{token}": _callback(
        "notifyJob",
        "CI's notification about a job cirelay submitted (its CallBack URL)",
        "The URL cirelay put in the job's CallBack: the job id and its HMAC token.",
        [
            path_parameter("job_id", "cirelay's job id"),
            path_parameter("token", "the job's callback token (secret)"),
        ],
    ),
    "/callbacks/ci/queue/{secret}": _callback(
        "notifyQueue",
        "CI's notification about a job cirelay did not submit (queue or workflow)",
        "The queue's callback URL, with `CIRELAY_QUEUE_CALLBACK_SECRET`: job notifications of "
        "every tag, and workflow instances (WorkflowFinish).",
        [path_parameter("secret", "the queue callback secret")],
    ),
}

SCHEMAS: dict[str, Schema] = {"CallbackResult": _RESULT}
