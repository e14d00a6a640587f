"""``/v1/quarantine`` (the refused notifications: list, show, replay one or every one matching
a filter) and ``/v1/audit`` (who did what, through the API, the console or the CLI)."""

from __future__ import annotations

from typing import Any

from app.contract.parts import (
    ADMIN_SCOPE,
    READ,
    READ_SCOPE,
    WRITE,
    Schema,
    cursor_page,
    errors,
    json_answer,
    json_body,
    path_parameter,
    query,
    ref,
)
from app.models import Outcome, Source

_TIMESTAMP: Schema = {"type": ["string", "null"], "format": "date-time"}
_ID: Schema = {"type": "integer", "minimum": 0, "maximum": (1 << 63) - 1}
#: what a quarantined notification's error can be (``app.web.filters.QUARANTINE_ERRORS``)
_ERRORS = [Outcome.SCHEMA_VIOLATION.value, Outcome.MALFORMED.value, Outcome.WRONG_ENDPOINT.value]
#: where a quarantined notification came from (a replay is never quarantined again)
_SOURCES = [Source.CALLBACK.value, Source.QUEUE.value]

_QUARANTINED_FIELDS: dict[str, Schema] = {
    "id": {"type": "integer"},
    "received_at": {"type": "string", "format": "date-time"},
    "source": {"type": "string", "enum": [s.value for s in Source]},
    "job_id": {"type": ["string", "null"]},
    "content_type": {"type": "string"},
    "error": {"type": "string"},
    "reasons": {"type": "array", "items": {"type": "object"}},
    "replayed_at": _TIMESTAMP,
    "replay_outcome": {
        "type": ["string", "null"],
        "description": "what its last replay came to (`accepted`, `duplicate`, …)",
    },
}
QUARANTINED: Schema = {
    "type": "object",
    "required": list(_QUARANTINED_FIELDS),
    "additionalProperties": False,
    "properties": _QUARANTINED_FIELDS,
}
_QUARANTINED_DETAIL: Schema = {
    "type": "object",
    "description": "With what arrived: `body` (UTF-8), or `body_base64` when it is not text.",
    "required": [*_QUARANTINED_FIELDS, "headers"],
    "additionalProperties": False,
    "properties": {
        **_QUARANTINED_FIELDS,
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "body": {"type": "string"},
        "body_base64": {"type": "string", "contentEncoding": "base64"},
    },
    "oneOf": [{"required": ["body"]}, {"required": ["body_base64"]}],
}

#: the filter of the list and of "replay every matching one", with the same names
_FILTER: dict[str, Schema] = {
    "error": {"type": "string", "enum": _ERRORS},
    "source": {"type": "string", "enum": _SOURCES},
    "job_id": {"type": "string", "maxLength": 40},
    "received_after": {"type": "string", "format": "date-time"},
    "received_before": {"type": "string", "format": "date-time"},
    "pending": {"type": "boolean", "description": "only those not replayed yet"},
}
_PAGING = [
    query("limit", "page size", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}),
    query("before", "the previous page's `next_before`", _ID),
]


def _page(name: str, item: Schema) -> Schema:
    return cursor_page(name, item, cursor="next_before")


_AUDIT_ENTRY: Schema = {
    "type": "object",
    "required": ["id", "at", "actor", "via", "action", "subject", "details"],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "integer"},
        "at": {"type": "string", "format": "date-time"},
        "actor": {"type": "string", "description": "the API key's name (never the key)"},
        "via": {"type": "string", "enum": ["api", "console", "cli"]},
        "action": {"type": "string", "description": "e.g. `subscription created`"},
        "subject": {"type": ["string", "null"]},
        "details": {"type": "object"},
    },
}

_IDENT = path_parameter("ident", "the quarantined notification's id")
_IDENT["schema"] = _ID


def _operation(tag: str, operation_id: str, summary: str, **rest: Any) -> dict[str, Any]:
    return {"operationId": operation_id, "tags": [tag], "summary": summary, **rest}


PATHS: dict[str, Any] = {
    "/v1/quarantine": {
        "get": _operation(
            "quarantine",
            "listQuarantined",
            "Refused notifications, newest first",
            security=READ_SCOPE,
            parameters=[
                *(query(name, "filter", schema) for name, schema in _FILTER.items()),
                *_PAGING,
            ],
            responses={
                "200": json_answer("One page", _page("quarantined", ref("Quarantined"))),
                **errors(400, *READ),
            },
        )
    },
    "/v1/quarantine/{ident}": {
        "parameters": [_IDENT],
        "get": _operation(
            "quarantine",
            "getQuarantined",
            "One refused notification, with its headers and body",
            security=READ_SCOPE,
            responses={
                "200": json_answer("The notification", _QUARANTINED_DETAIL),
                **errors(404, *READ),
            },
        ),
    },
    "/v1/quarantine/{ident}/replay": {
        "parameters": [_IDENT],
        "post": _operation(
            "quarantine",
            "replayQuarantined",
            "Send it through ingestion again (after a schema fix)",
            description="200 with what it came to; a replay that fails is not quarantined again.",
            security=ADMIN_SCOPE,
            responses={
                "200": json_answer(
                    "Replayed",
                    {
                        "type": "object",
                        "required": ["id", "outcome"],
                        "additionalProperties": False,
                        "properties": {
                            "id": {"type": "integer"},
                            "outcome": {"type": "string", "enum": [o.value for o in Outcome]},
                        },
                    },
                ),
                **errors(*WRITE, 404),
            },
        ),
    },
    "/v1/quarantine/replay": {
        "post": _operation(
            "quarantine",
            "replayQuarantinedMatching",
            "Replay every refused notification matching a filter (at most 1,000, oldest first)",
            description='`"dry_run": true` counts them and changes nothing. No body: all.',
            security=ADMIN_SCOPE,
            requestBody=json_body(
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {**_FILTER, "dry_run": {"type": "boolean"}},
                },
                required=False,
            ),
            responses={
                "200": json_answer(
                    "Replayed, or (dry run) counted",
                    {
                        "oneOf": [
                            {
                                "type": "object",
                                "required": ["replayed", "outcomes", "remaining"],
                                "additionalProperties": False,
                                "properties": {
                                    "replayed": {"type": "integer", "minimum": 0},
                                    "outcomes": {
                                        "type": "object",
                                        "description": "how many came to each outcome",
                                        "additionalProperties": {"type": "integer"},
                                    },
                                    "remaining": {"type": "integer", "minimum": 0},
                                },
                            },
                            ref("Matching"),
                        ]
                    },
                ),
                **errors(400, *WRITE, 413, 422),
            },
        )
    },
    "/v1/audit": {
        "get": _operation(
            "audit",
            "listAudit",
            "Who did what, through the API, the console or the CLI, newest first",
            security=READ_SCOPE,
            parameters=[
                query("actor", "a key's name", {"type": "string"}),
                query("action", "e.g. `subscription created`", {"type": "string"}),
                query("subject", "what it was done to (an id)", {"type": "string"}),
                *_PAGING,
            ],
            responses={
                "200": json_answer("One page", _page("audit", _AUDIT_ENTRY)),
                **errors(400, *READ),
            },
        )
    },
}

SCHEMAS: dict[str, Schema] = {
    "Quarantined": QUARANTINED,
    "Matching": {
        "type": "object",
        "description": "A dry run: how many match (nothing changed)",
        "required": ["matching"],
        "additionalProperties": False,
        "properties": {"matching": {"type": "integer", "minimum": 0}},
    },
}
