"""``/v1/events``: the event log for consumers who pull, as pages and as Server-Sent Events;
``/v1/event-types``: the catalogue (:mod:`app.contract.catalogue`)."""

from __future__ import annotations

from typing import Any

from app.contract.parts import READ, READ_SCOPE, Schema, errors, json_answer, path_parameter, query
from app.contract.parts import ref as _ref

#: the CloudEvents 1.0 envelope (JSON structured mode) of every event, as ``to_cloudevent``
#: builds it; ``data`` is the event type's (``GET /v1/event-types/{event_type}``)
CLOUDEVENT: Schema = {
    "type": "object",
    "required": [
        "specversion",
        "id",
        "type",
        "source",
        "time",
        "datacontenttype",
        "sequence",
        "data",
    ],
    "additionalProperties": False,
    "properties": {
        "specversion": {"type": "string", "const": "1.0"},
        "id": {"type": "string", "description": "unique; the webhook-id of its deliveries"},
        "type": {"type": "string", "description": "one of `GET /v1/event-types`"},
        "source": {"type": "string"},
        "subject": {"type": "string", "description": "a job event's CI JobId"},
        "time": {"type": "string", "format": "date-time"},
        "datacontenttype": {"type": "string", "const": "application/json"},
        "sequence": {
            "type": "string",
            "pattern": "^[0-9]+$",
            "description": (
                "the event's position in the log: the cursor (absent only from the test "
                "event, which is sent outside the log)"
            ),
        },
        "data": {"type": "object"},
    },
}

#: the envelope of an event sent outside the log (``catalogue.EventType.logged``)
UNLOGGED_REQUIRED = [name for name in CLOUDEVENT["required"] if name != "sequence"]

_TYPES = query(
    "type",
    "event types, repeat or comma-separate; `com.cirelay.job.*` for a prefix, `*` for all",
    {"type": "array", "items": {"type": "string"}},
    style="form",
    explode=True,
)
_LIMIT = query(
    "limit", "page size", {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}
)
_AFTER_SCHEMA: Schema = {"type": "integer", "minimum": 0, "maximum": (1 << 63) - 1}

PATHS: dict[str, Any] = {
    "/v1/events": {
        "get": {
            "operationId": "listEvents",
            "tags": ["events"],
            "summary": "Events after a sequence number, oldest first",
            "security": READ_SCOPE,
            "parameters": [
                query("after", "a sequence number (0: from the start)", _AFTER_SCHEMA),
                _LIMIT,
                _TYPES,
            ],
            "responses": {
                "200": json_answer(
                    "One page; `next_after` is the cursor for the next call",
                    {
                        "type": "object",
                        "required": ["events", "next_after"],
                        "additionalProperties": False,
                        "properties": {
                            "events": {"type": "array", "items": _ref("CloudEvent")},
                            "next_after": {"type": "integer", "minimum": 0},
                        },
                    },
                ),
                **errors(400, *READ),
            },
        }
    },
    "/v1/events/stream": {
        "get": {
            "operationId": "streamEvents",
            "tags": ["events"],
            "summary": "The same events as Server-Sent Events",
            "description": (
                "Each event once, in order: `id:` its sequence, `event:` its type, `data:` the "
                "CloudEvent. Resume with `Last-Event-ID` (or `?after=`); a comment line keeps "
                "an idle connection open. At most `CIRELAY_MAX_STREAMS` per process: 503 "
                "above it. The channel is described in `GET /asyncapi.json`."
            ),
            "security": READ_SCOPE,
            "parameters": [
                query("after", "a sequence number", _AFTER_SCHEMA),
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "description": "the last sequence seen; wins over `after`",
                    "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                },
                _LIMIT,
                _TYPES,
            ],
            "responses": {
                "200": {
                    "description": "The stream (never ends by itself)",
                    "headers": {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}},
                    "content": {"text/event-stream": {"schema": {"type": "string"}}},
                },
                **errors(400, *READ),
            },
        }
    },
    "/v1/event-types": {
        "get": {
            "operationId": "listEventTypes",
            "tags": ["events"],
            "summary": "The event catalogue: every type cirelay emits, with its schema",
            "security": READ_SCOPE,
            "responses": {
                "200": json_answer(
                    "Every event type",
                    {
                        "type": "object",
                        "required": ["event_types"],
                        "additionalProperties": False,
                        "properties": {
                            "event_types": {"type": "array", "items": _ref("EventType")}
                        },
                    },
                ),
                **errors(*READ),
            },
        }
    },
    "/v1/event-types/{event_type}": {
        "get": {
            "operationId": "getEventType",
            "tags": ["events"],
            "summary": "One event type: its description, the JSON Schema of its data, an example",
            "security": READ_SCOPE,
            "parameters": [path_parameter("event_type", "e.g. `com.cirelay.job.succeeded`")],
            "responses": {
                "200": json_answer("The event type", _ref("EventType")),
                **errors(404, *READ),
            },
        }
    },
}

SCHEMAS: dict[str, Schema] = {
    "CloudEvent": CLOUDEVENT,
    "EventType": {
        "type": "object",
        "required": ["type", "description", "schema", "example"],
        "additionalProperties": False,
        "properties": {
            "type": {"type": "string"},
            "description": {"type": "string"},
            "schema": {"type": "object", "description": "JSON Schema (2020-12) of `data`"},
            "example": {
                **CLOUDEVENT,
                "description": "A whole CloudEvent of the type (`sequence`: if it is logged)",
                "required": UNLOGGED_REQUIRED,
            },
        },
    },
}
