"""``/v1/workflow-executions``: the workflow instances CI reported (WorkflowFinish), listed
and read; their view is also the ``com.cirelay.workflow.finished`` event's ``data``."""

from __future__ import annotations

from typing import Any

from app.contract.jobs import TIMESTAMP
from app.contract.parts import (
    READ,
    READ_SCOPE,
    Schema,
    cursor_page,
    cursor_paging,
    errors,
    json_answer,
    path_parameter,
    query,
    ref,
)
from app.models import WORKFLOW_STATES, Source

_TEXT: Schema = {"type": ["string", "null"]}

#: one node of the instance, linked to cirelay's job by its CI JobId (``job_id``)
_TASK: Schema = {
    "type": "object",
    "required": [
        "type",
        "state",
        "ci_job_id",
        "name",
        "template_id",
        "template_name",
        "ci_created_at",
        "ci_ended_at",
        "job_id",
    ],
    "additionalProperties": False,
    "properties": {
        "type": {**_TEXT, "description": "the node's Type, e.g. `VoiceSeparate`"},
        "state": _TEXT,
        "ci_job_id": _TEXT,
        "name": _TEXT,
        "template_id": _TEXT,
        "template_name": _TEXT,
        "ci_created_at": TIMESTAMP,
        "ci_ended_at": TIMESTAMP,
        "job_id": {**_TEXT, "description": "cirelay's job of this node, when it knows one"},
    },
}

#: ``models.WorkflowExecution.view``
WORKFLOW_EXECUTION: Schema = {
    "type": "object",
    "required": [
        "id",
        "run_id",
        "workflow_id",
        "workflow_name",
        "bucket",
        "object",
        "cos_headers",
        "state",
        "tasks",
        "timings",
        "source",
        "wire_format",
    ],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string", "description": "cirelay's id (`wfx_…`)"},
        "run_id": {"type": "string", "description": "CI's RunId"},
        "workflow_id": {"type": "string"},
        "workflow_name": _TEXT,
        "bucket": _TEXT,
        "object": _TEXT,
        "cos_headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "state": {"type": "string", "enum": list(WORKFLOW_STATES)},
        "tasks": {"type": "array", "items": _TASK},
        "timings": {
            "type": "object",
            "required": ["ci_created_at", "ci_ended_at", "created_at"],
            "additionalProperties": False,
            "properties": {
                "ci_created_at": TIMESTAMP,
                "ci_ended_at": TIMESTAMP,
                "created_at": {"type": "string", "format": "date-time"},
            },
        },
        "source": {"type": "string", "enum": [s.value for s in Source]},
        "wire_format": {"type": "string", "enum": ["xml", "json"]},
    },
}

_OPERATION = {"tags": ["workflows"], "security": READ_SCOPE}

PATHS: dict[str, Any] = {
    "/v1/workflow-executions": {
        "get": {
            "operationId": "listWorkflowExecutions",
            "summary": "Workflow instances CI reported, newest first",
            **_OPERATION,
            "parameters": [
                query(
                    "state",
                    "repeat or comma-separate",
                    {"type": "array", "items": {"type": "string", "enum": list(WORKFLOW_STATES)}},
                    style="form",
                    explode=True,
                ),
                query("workflow_id", "CI's WorkflowId", {"type": "string"}),
                query("bucket", "the instance's bucket", {"type": "string"}),
                query("object", "the object that started it", {"type": "string"}),
                query("job", "a task's CI JobId or cirelay job id", {"type": "string"}),
                query("task_type", "a task's Type", {"type": "string"}),
                *cursor_paging(),
            ],
            "responses": {
                "200": json_answer(
                    "One page", cursor_page("workflow_executions", ref("WorkflowExecution"))
                ),
                **errors(400, *READ),
            },
        }
    },
    "/v1/workflow-executions/{ident}": {
        "get": {
            "operationId": "getWorkflowExecution",
            "summary": "One workflow instance, by cirelay id or CI RunId",
            **_OPERATION,
            "parameters": [path_parameter("ident", "cirelay's id (`wfx_…`) or CI's RunId")],
            "responses": {
                "200": json_answer("The instance", ref("WorkflowExecution")),
                **errors(404, *READ),
            },
        }
    },
}

SCHEMAS: dict[str, Schema] = {"WorkflowExecution": WORKFLOW_EXECUTION}
