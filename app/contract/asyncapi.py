"""The AsyncAPI 3.0 document: the channels events reach consumers by (a subscriber's webhook,
cirelay's Server-Sent Events stream), one message per event type of the catalogue. A new
channel (a broker) is one entry in :func:`channels` and its operation."""

from __future__ import annotations

from typing import Any

from app.contract.catalogue import EVENT_TYPES, EventType
from app.contract.events import CLOUDEVENT

#: the Standard Webhooks headers of every delivery (``app.delivery.sender``)
_WEBHOOK_HEADERS = {
    "type": "object",
    "required": ["webhook-id", "webhook-timestamp", "webhook-signature"],
    "properties": {
        "webhook-id": {"type": "string", "description": "the event's id: drop repeats by it"},
        "webhook-timestamp": {"type": "string", "pattern": "^[0-9]+$"},
        "webhook-signature": {
            "type": "string",
            "description": "`v1,<base64 HMAC-SHA256>`, space-separated during a rotation",
        },
    },
}


def _message_name(event_type: str) -> str:
    return event_type.replace(".", "_")


def _message(event: EventType) -> dict[str, Any]:
    return {
        "name": event.type,
        "title": event.type,
        "summary": event.description,
        "contentType": "application/cloudevents+json",
        "payload": {
            **CLOUDEVENT,
            "properties": {
                **CLOUDEVENT["properties"],
                "type": {"type": "string", "const": event.type},
                "data": event.schema,
            },
        },
        "examples": [{"name": "example", "payload": event.example()}],
        # a webhook delivery's headers (the stream has none of its own per event)
        "bindings": {"http": {"headers": _WEBHOOK_HEADERS, "bindingVersion": "0.3.0"}},
    }


def _messages() -> dict[str, Any]:
    return {
        _message_name(name): {"$ref": f"#/components/messages/{_message_name(name)}"}
        for name in EVENT_TYPES
    }


def channels() -> dict[str, Any]:
    return {
        "webhook": {
            "address": None,
            "title": "A subscription's URL",
            "description": (
                "Each event a subscription's `event_types` match, POSTed to its URL as a "
                "CloudEvent (structured mode) with the Standard Webhooks headers; retried "
                "with backoff until a 2xx (410 disables the subscription)."
            ),
            "servers": [{"$ref": "#/servers/subscriber"}],
            "messages": _messages(),
            "bindings": {"http": {"bindingVersion": "0.3.0"}},
        },
        "eventStream": {
            "address": "/v1/events/stream",
            "title": "Server-Sent Events",
            "description": (
                "`GET /v1/events/stream` with a bearer key: `id:` the sequence, `event:` the "
                "type, `data:` the CloudEvent; resume with `Last-Event-ID`."
            ),
            "servers": [{"$ref": "#/servers/cirelay"}],
            "messages": _messages(),
        },
    }


def _operation(channel: str, summary: str) -> dict[str, Any]:
    return {
        "action": "send",
        "summary": summary,
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [
            {"$ref": f"#/channels/{channel}/messages/{_message_name(name)}"} for name in EVENT_TYPES
        ],
    }


def asyncapi_document(version: str) -> dict[str, Any]:
    messages = {_message_name(name): _message(event) for name, event in EVENT_TYPES.items()}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "cirelay events",
            "version": version,
            "description": (
                "What cirelay sends: CloudEvents 1.0 about CI jobs, quarantined notifications "
                "and subscriptions. The JSON Schema of each type's `data` is also served at "
                "`GET /v1/event-types/{event_type}`."
            ),
        },
        "defaultContentType": "application/cloudevents+json",
        "servers": {
            "cirelay": {
                "host": "cirelay.example.com",
                "protocol": "https",
                "description": "cirelay itself (`CIRELAY_PUBLIC_URL`): the event stream",
                "security": [{"$ref": "#/components/securitySchemes/bearer"}],
            },
            "subscriber": {
                "host": "hooks.example.com",
                "protocol": "https",
                "description": "a subscriber: whatever host a subscription's URL names",
            },
        },
        "channels": channels(),
        "operations": {
            "deliverWebhook": _operation("webhook", "cirelay POSTs each event to a subscriber"),
            "streamEvents": _operation("eventStream", "cirelay streams each event to a client"),
        },
        "components": {
            "messages": messages,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "an API key"}
            },
        },
    }
