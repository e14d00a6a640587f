"""``/v1/subscriptions``: webhook subscriptions, their secrets, replays and deliveries."""

from __future__ import annotations

from typing import Any

from app.contract.parts import (
    ADMIN_SCOPE,
    READ,
    READ_SCOPE,
    WRITE,
    Schema,
    errors,
    json_answer,
    json_body,
    path_parameter,
    query,
    ref,
)
from app.models import AttemptResult, DeliveryState
from app.subscriptions import MAX_EVENT_TYPES

_STATES: Schema = {
    "type": "array",
    "items": {"type": "string", "enum": [s.value for s in DeliveryState]},
}
#: which deliveries: the list's query parameters and a retry's body, with the same names
_FILTER: dict[str, Schema] = {
    "state": _STATES,
    "job_id": {"type": "string", "maxLength": 40, "description": "the events of one job"},
    "created_after": {"type": "string", "format": "date-time"},
    "created_before": {"type": "string", "format": "date-time"},
}

_TIMESTAMP: Schema = {"type": ["string", "null"], "format": "date-time"}
_EVENT_TYPES: Schema = {
    "type": "array",
    "minItems": 1,
    "maxItems": MAX_EVENT_TYPES,
    "items": {
        "type": "string",
        "pattern": r"^(\*|[a-z0-9]+(\.[a-z0-9_]+)*(\.\*)?)$",
        "description": "a type, a prefix ending in `.*`, or `*`",
    },
}
_URL: Schema = {
    "type": "string",
    "format": "uri",
    "description": (
        "Where its events go: an http(s) URL (a webhook), "
        "`nats://[user:password@|token@]host[:4222]/<stream>[?subject_prefix=<p>]` (a "
        "JetStream stream) or `amqp[s]://[user:password@]host[:port]/<vhost>?exchange=<x>"
        "[&routing_key_prefix=<p>]` (a RabbitMQ exchange); a broker's credentials may be "
        "named instead (`credentials=<name>`, from `CIRELAY_BROKER_CREDENTIALS`). The host "
        "must resolve to a public address (or one inside `CIRELAY_DELIVERY_ALLOWED_NETWORKS`). "
        "Answers mask a URL's credentials as `***`; a URL sent back with the mask is a 422."
    ),
    "example": "https://hooks.example.com/cirelay",
}
_FIELDS: dict[str, Schema] = {
    "url": _URL,
    "event_types": _EVENT_TYPES,
    "description": {"type": "string", "maxLength": 1024},
    "enabled": {"type": "boolean"},
}

SUBSCRIPTION: Schema = {
    "type": "object",
    "required": [
        "id",
        "url",
        "event_types",
        "description",
        "enabled",
        "disabled_reason",
        "failing_since",
        "paused_until",
        "previous_secret_expires_at",
        "created_at",
        "updated_at",
    ],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "string"},
        "url": {"type": "string", "description": "credentials masked as `***`"},
        "event_types": {"type": "array", "items": {"type": "string"}},
        "description": {"type": "string"},
        "enabled": {"type": "boolean"},
        "disabled_reason": {"type": ["string", "null"]},
        "failing_since": _TIMESTAMP,
        "paused_until": {
            **_TIMESTAMP,
            "description": "its endpoint cannot be reached (connections refused or timing "
            "out): no delivery is attempted before this time (the next probe, the first "
            "retry's delay after the last refusal), then one at a time until one succeeds",
        },
        "previous_secret_expires_at": _TIMESTAMP,
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
}

_WITH_SECRET: Schema = {
    **SUBSCRIPTION,
    "required": [*SUBSCRIPTION["required"], "secret"],
    "properties": {
        **SUBSCRIPTION["properties"],
        "secret": {
            "type": "string",
            "pattern": "^whsec_",
            "description": "the Standard Webhooks signing secret, shown this once",
        },
    },
}

_ATTEMPT: Schema = {
    "type": "object",
    "required": ["attempt", "started_at", "duration_ms", "result", "status_code", "error"],
    "additionalProperties": False,
    "properties": {
        "attempt": {"type": "integer", "minimum": 1},
        "started_at": {"type": "string", "format": "date-time"},
        "duration_ms": {"type": "number"},
        "result": {"type": "string", "enum": [r.value for r in AttemptResult]},
        "status_code": {"type": ["integer", "null"]},
        "error": {"type": ["string", "null"]},
    },
}

DELIVERY: Schema = {
    "type": "object",
    "required": [
        "id",
        "subscription_id",
        "event_id",
        "event_type",
        "sequence",
        "state",
        "attempts",
        "next_attempt_at",
        "origin",
        "created_at",
        "completed_at",
        "last_status_code",
        "last_error",
        "history",
    ],
    "additionalProperties": False,
    "properties": {
        "id": {"type": "integer"},
        "subscription_id": {"type": "string"},
        "event_id": {"type": "string"},
        "event_type": {"type": "string"},
        "sequence": {"type": "integer"},
        "state": {"type": "string", "enum": [s.value for s in DeliveryState]},
        "attempts": {"type": "integer", "minimum": 0},
        "next_attempt_at": _TIMESTAMP,
        "origin": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "completed_at": _TIMESTAMP,
        "last_status_code": {"type": ["integer", "null"]},
        "last_error": {"type": ["string", "null"]},
        "history": {"type": "array", "items": _ATTEMPT},
    },
}

_IDENT = path_parameter("ident", "the subscription's id")
_DELIVERY_ID: Schema = {"type": "integer", "minimum": 0, "maximum": (1 << 63) - 1}
_RETRIED: Schema = {
    "type": "object",
    "required": ["retried"],
    "additionalProperties": False,
    "properties": {"retried": {"type": "integer", "minimum": 0}},
}
_BY_ID = {"ident": "$response.body#/id"}
_LINKS = {
    "GetSubscription": {"operationId": "getSubscription", "parameters": _BY_ID},
    "UpdateSubscription": {"operationId": "updateSubscription", "parameters": _BY_ID},
    "RotateSecret": {"operationId": "rotateSubscriptionSecret", "parameters": _BY_ID},
    "ListDeliveries": {"operationId": "listDeliveries", "parameters": _BY_ID},
    "Replay": {"operationId": "replaySubscription", "parameters": _BY_ID},
    "DeleteSubscription": {"operationId": "deleteSubscription", "parameters": _BY_ID},
    "SendTestEvent": {"operationId": "sendTestEvent", "parameters": _BY_ID},
    "RetryDeliveries": {"operationId": "retryDeliveries", "parameters": _BY_ID},
}


def _operation(operation_id: str, summary: str, **rest: Any) -> dict[str, Any]:
    return {"operationId": operation_id, "tags": ["subscriptions"], "summary": summary, **rest}


PATHS: dict[str, Any] = {
    "/v1/subscriptions": {
        "post": _operation(
            "createSubscription",
            "Subscribe a URL to event types",
            description="201 with the subscription and, this once, its signing `secret`.",
            security=ADMIN_SCOPE,
            requestBody=json_body(ref("SubscriptionCreate")),
            responses={
                "201": json_answer(
                    "Created",
                    ref("SubscriptionWithSecret"),
                    headers={"Location": {"$ref": "#/components/headers/Location"}},
                    links=_LINKS,
                ),
                **errors(400, *WRITE, 413, 422),
            },
        ),
        "get": _operation(
            "listSubscriptions",
            "Every subscription",
            security=READ_SCOPE,
            responses={
                "200": json_answer(
                    "Every subscription",
                    {
                        "type": "object",
                        "required": ["subscriptions"],
                        "additionalProperties": False,
                        "properties": {
                            "subscriptions": {"type": "array", "items": ref("Subscription")}
                        },
                    },
                ),
                **errors(*READ),
            },
        ),
    },
    "/v1/subscriptions/{ident}": {
        "parameters": [_IDENT],
        "get": _operation(
            "getSubscription",
            "One subscription",
            security=READ_SCOPE,
            responses={
                "200": json_answer("The subscription", ref("Subscription"), links=_LINKS),
                **errors(404, *READ),
            },
        ),
        "patch": _operation(
            "updateSubscription",
            "Change a subscription's fields (re-enabling resumes its deliveries)",
            security=ADMIN_SCOPE,
            requestBody=json_body(ref("SubscriptionUpdate")),
            responses={
                "200": json_answer(
                    "The subscription as changed", ref("Subscription"), links=_LINKS
                ),
                **errors(400, *WRITE, 404, 413, 422),
            },
        ),
        "delete": _operation(
            "deleteSubscription",
            "Delete a subscription and its deliveries",
            security=ADMIN_SCOPE,
            responses={
                "204": {
                    "description": "Deleted",
                    "headers": {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}},
                },
                **errors(*WRITE, 404),
            },
        ),
    },
    "/v1/subscriptions/{ident}/rotate-secret": {
        "parameters": [_IDENT],
        "post": _operation(
            "rotateSubscriptionSecret",
            "A new signing secret; the old one signs too during the grace period",
            security=ADMIN_SCOPE,
            requestBody=json_body(
                {
                    "type": "object",
                    "properties": {
                        "grace_seconds": {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": 7 * 24 * 3600,
                            "default": 24 * 3600,
                        }
                    },
                },
                required=False,
            ),
            responses={
                "200": json_answer(
                    "The new secret, this once", ref("SubscriptionWithSecret"), links=_LINKS
                ),
                **errors(400, *WRITE, 404, 413, 422),
            },
        ),
    },
    "/v1/subscriptions/{ident}/replay": {
        "parameters": [_IDENT],
        "post": _operation(
            "replaySubscription",
            "Deliver events again, with their original webhook-id",
            description=(
                '`{"event_id": "evt_…"}` for one event, or `{"since": "…Z"}` for every '
                "matching event since then."
            ),
            security=ADMIN_SCOPE,
            requestBody=json_body(
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "event_id": {"type": "string"},
                        "since": {"type": "string", "format": "date-time"},
                    },
                },
            ),
            responses={
                "202": json_answer(
                    "Started",
                    {
                        "type": "object",
                        "required": ["replay_id", "subscription_id", "deliveries"],
                        "additionalProperties": False,
                        "properties": {
                            "replay_id": {"type": "string"},
                            "subscription_id": {"type": "string"},
                            "deliveries": {"type": "integer", "minimum": 0},
                        },
                    },
                ),
                **errors(400, *WRITE, 404, 409, 413, 422),
            },
        ),
    },
    "/v1/subscriptions/{ident}/deliveries": {
        "parameters": [_IDENT],
        "get": _operation(
            "listDeliveries",
            "The subscription's deliveries, newest first, each with every attempt",
            security=READ_SCOPE,
            parameters=[
                query(
                    "state",
                    "repeat or comma-separate",
                    {
                        "type": "array",
                        "items": {"type": "string", "enum": [s.value for s in DeliveryState]},
                    },
                    style="form",
                    explode=True,
                ),
                *(
                    query(name, "filter", schema)
                    for name, schema in _FILTER.items()
                    if name != "state"
                ),
                query(
                    "limit",
                    "page size",
                    {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
                ),
                query(
                    "before",
                    "the previous page's `next_before`",
                    {"type": "integer", "minimum": 0, "maximum": (1 << 63) - 1},
                ),
            ],
            responses={
                "200": json_answer(
                    "One page",
                    {
                        "type": "object",
                        "required": ["deliveries", "next_before"],
                        "additionalProperties": False,
                        "properties": {
                            "deliveries": {"type": "array", "items": ref("Delivery")},
                            "next_before": {"type": ["integer", "null"]},
                        },
                    },
                ),
                **errors(400, *READ, 404),
            },
        ),
    },
    "/v1/subscriptions/{ident}/test": {
        "parameters": [_IDENT],
        "post": _operation(
            "sendTestEvent",
            "POST a signed `com.cirelay.subscription.test` event to the webhook now",
            description=(
                "Sent at once, outside the outbox (no other subscriber gets it, no delivery is "
                "recorded): 200 with what the subscriber answered. A broker subscription is a "
                "409 (replay an event to it instead)."
            ),
            security=ADMIN_SCOPE,
            responses={
                "200": json_answer(
                    "What the subscriber answered",
                    {
                        "type": "object",
                        "required": ["result", "status_code", "duration_ms", "error"],
                        "additionalProperties": False,
                        "properties": {
                            "result": _ATTEMPT["properties"]["result"],
                            "status_code": {"type": ["integer", "null"]},
                            "duration_ms": {"type": "number", "minimum": 0},
                            "error": {"type": ["string", "null"]},
                        },
                    },
                ),
                **errors(*WRITE, 404, 409),
            },
        ),
    },
    "/v1/subscriptions/{ident}/deliveries/{delivery_id}/retry": {
        "parameters": [
            _IDENT,
            {**path_parameter("delivery_id", "the delivery's id"), "schema": _DELIVERY_ID},
        ],
        "post": _operation(
            "retryDelivery",
            "Send one delivery again now (given up, or waiting on its backoff)",
            description="`retried` is 0 while a worker is attempting it; 409 if it succeeded.",
            security=ADMIN_SCOPE,
            responses={
                "202": json_answer("Queued again", _RETRIED),
                **errors(*WRITE, 404, 409),
            },
        ),
    },
    "/v1/subscriptions/{ident}/deliveries/retry": {
        "parameters": [_IDENT],
        "post": _operation(
            "retryDeliveries",
            "Send every delivery matching a filter again now (at most 1,000, oldest first)",
            description=(
                'E.g. `{"state": ["failed"]}`: every one given up. `"dry_run": true` counts '
                "them (200) and changes nothing. No body: every delivery of the subscription."
            ),
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
                "200": json_answer("A dry run: how many match", ref("Matching")),
                "202": json_answer(
                    "Queued again",
                    {
                        **_RETRIED,
                        "required": ["retried", "remaining"],
                        "properties": {
                            **_RETRIED["properties"],
                            "remaining": {"type": "integer", "minimum": 0},
                        },
                    },
                ),
                **errors(400, *WRITE, 404, 413, 422),
            },
        ),
    },
}

SCHEMAS: dict[str, Schema] = {
    "Subscription": SUBSCRIPTION,
    "SubscriptionWithSecret": _WITH_SECRET,
    "SubscriptionCreate": {
        "type": "object",
        "required": ["url"],
        "additionalProperties": False,
        "properties": {**_FIELDS, "event_types": {**_EVENT_TYPES, "default": ["*"]}},
    },
    "SubscriptionUpdate": {"type": "object", "additionalProperties": False, "properties": _FIELDS},
    "Delivery": DELIVERY,
}
