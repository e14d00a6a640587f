"""The AsyncAPI 3.0 document: the channels events reach consumers by (a subscriber's webhook,
cirelay's Server-Sent Events stream, a NATS JetStream subject, a RabbitMQ exchange), one
message per event type of the catalogue. A new channel is one entry in :func:`channels`
and its operation in :func:`asyncapi_document`."""

from __future__ import annotations

from typing import Any

from app.contract.catalogue import EVENT_TYPES, LOGGED, EventType
from app.contract.events import CLOUDEVENT, UNLOGGED_REQUIRED
from app.subscriptions import DEFAULT_TOPIC_PREFIX

#: the Standard Webhooks headers of every delivery (``app.delivery.sender``): HTTP headers of
#: a webhook POST, NATS headers, AMQP message headers
_HEADERS = {
    "type": "object",
    "required": ["webhook-id", "webhook-timestamp", "webhook-signature"],
    "properties": {
        "webhook-id": {"type": "string", "description": "the event's id: drop repeats by it"},
        "webhook-timestamp": {"type": "string", "pattern": "^[0-9]+$"},
        "webhook-signature": {
            "type": "string",
            "description": "`v1,<base64 HMAC-SHA256>`, space-separated during a rotation",
        },
        "content-type": {"type": "string", "const": "application/cloudevents+json"},
        "Nats-Msg-Id": {"type": "string", "description": "NATS: the event's id (dedup window)"},
        "Nats-Expected-Stream": {"type": "string", "description": "NATS: the URL's stream"},
    },
}
#: what a subject or routing key names: the event type without ``com.cirelay.``
_TYPE_PREFIX = "com.cirelay."


def _message_name(event_type: str) -> str:
    return event_type.replace(".", "_")


def _message(event: EventType) -> dict[str, Any]:
    return {
        "name": event.type,
        "title": event.type,
        "summary": event.description,
        "contentType": "application/cloudevents+json",
        "headers": {
            **_HEADERS,
            "description": (
                "On a delivery (webhook, NATS, AMQP): the Standard Webhooks headers, signed "
                "with the subscription's secret. The stream's events carry none."
            ),
        },
        "payload": {
            **CLOUDEVENT,
            "required": CLOUDEVENT["required"] if event.logged else UNLOGGED_REQUIRED,
            "properties": {
                **CLOUDEVENT["properties"],
                "type": {"type": "string", "const": event.type},
                "data": event.schema,
            },
        },
        "examples": [{"name": "example", "payload": event.example()}],
        "bindings": {
            "http": {"headers": _HEADERS, "bindingVersion": "0.3.0"},
            "amqp": {"messageType": event.type, "bindingVersion": "0.3.0"},
        },
    }


def _messages(events: tuple[EventType, ...]) -> dict[str, Any]:
    return {
        _message_name(e.type): {"$ref": f"#/components/messages/{_message_name(e.type)}"}
        for e in events
    }


#: the channels and the event types each carries: every channel the log's types, the webhook
#: also the test event (sent to it alone)
CARRIES: dict[str, tuple[EventType, ...]] = {
    "webhook": tuple(EVENT_TYPES.values()),
    "eventStream": LOGGED,
    "natsSubject": LOGGED,
    "amqpRoutingKey": LOGGED,
}


def _topic_parameters(prefix_name: str, where: str) -> dict[str, Any]:
    return {
        "prefix": {
            "description": f"the URL's `{prefix_name}` ({where})",
            "default": DEFAULT_TOPIC_PREFIX,
        },
        "event": {
            "description": "the event type without `com.cirelay.`",
            "enum": [e.type.removeprefix(_TYPE_PREFIX) for e in LOGGED],
        },
    }


def channels() -> dict[str, Any]:
    return {
        "webhook": {
            "address": None,
            "title": "A subscription's URL",
            "description": (
                "Each event a subscription's `event_types` match, POSTed to its URL as a "
                "CloudEvent (structured mode) with the Standard Webhooks headers; retried "
                "with backoff until a 2xx (410 disables the subscription). A test event "
                "(`POST /v1/subscriptions/{ident}/test`) is sent once, to this one URL."
            ),
            "servers": [{"$ref": "#/servers/subscriber"}],
            "messages": _messages(CARRIES["webhook"]),
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
            "messages": _messages(CARRIES["eventStream"]),
        },
        "natsSubject": {
            "address": "{prefix}.{event}",
            "title": "A NATS JetStream subject",
            "description": (
                "A subscription `nats://…/<stream>[?subject_prefix=<prefix>]`: each event "
                "its `event_types` match, published to `<prefix>.<type without "
                "com.cirelay.>` (e.g. `cirelay.events.job.succeeded`) in structured mode, "
                "the Standard Webhooks headers as NATS headers, `Nats-Msg-Id` = the event's "
                "id; acknowledged by the stream's PubAck, retried until then."
            ),
            "servers": [{"$ref": "#/servers/nats"}],
            "parameters": _topic_parameters("subject_prefix", "default `cirelay.events`"),
            "messages": _messages(CARRIES["natsSubject"]),
        },
        "amqpRoutingKey": {
            "address": "{prefix}.{event}",
            "title": "A RabbitMQ exchange, by routing key",
            "description": (
                "A subscription `amqp[s]://…/<vhost>?exchange=<x>[&routing_key_prefix=<p>]`: "
                "each event its `event_types` match, published to exchange `<x>` with "
                "routing key `<prefix>.<type without com.cirelay.>` in structured mode "
                "(`content_type` `application/cloudevents+json`), persistent, `message_id` "
                "= the event's id, the Standard Webhooks headers as message headers, "
                "`mandatory`: acknowledged by the publisher confirm; unroutable, nacked or "
                "no such exchange is a failed attempt (`rejected`), retried."
            ),
            "servers": [{"$ref": "#/servers/amqp"}],
            "parameters": _topic_parameters("routing_key_prefix", "default `cirelay.events`"),
            "messages": _messages(CARRIES["amqpRoutingKey"]),
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": "cirelay",
                        "type": "topic",
                        "durable": True,
                        "autoDelete": False,
                        "vhost": "/",
                    },
                    "bindingVersion": "0.3.0",
                }
            },
        },
    }


def _operation(channel: str, summary: str, **bindings: Any) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "action": "send",
        "summary": summary,
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [
            {"$ref": f"#/channels/{channel}/messages/{_message_name(e.type)}"}
            for e in CARRIES[channel]
        ],
    }
    if bindings:
        operation["bindings"] = bindings
    return operation


def asyncapi_document(version: str) -> dict[str, Any]:
    messages = {_message_name(name): _message(event) for name, event in EVENT_TYPES.items()}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "cirelay events",
            "version": version,
            "description": (
                "What cirelay sends: CloudEvents 1.0 about CI jobs, workflow instances, "
                "quarantined notifications and subscriptions, to webhooks, the event stream, "
                "NATS JetStream and RabbitMQ. The JSON Schema of each type's `data` is also "
                "served at `GET /v1/event-types/{event_type}`."
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
            "nats": {
                "host": "nats.example.com:4222",
                "protocol": "nats",
                "description": "the NATS server a `nats://` subscription names",
            },
            "amqp": {
                "host": "mq.example.com:5672",
                "protocol": "amqp",
                "protocolVersion": "0-9-1",
                "description": "the RabbitMQ broker an `amqp[s]://` subscription names",
            },
        },
        "channels": channels(),
        "operations": {
            "deliverWebhook": _operation("webhook", "cirelay POSTs each event to a subscriber"),
            "streamEvents": _operation("eventStream", "cirelay streams each event to a client"),
            "publishNats": _operation("natsSubject", "cirelay publishes each event to JetStream"),
            "publishAmqp": _operation(
                "amqpRoutingKey",
                "cirelay publishes each event to a RabbitMQ exchange",
                amqp={"deliveryMode": 2, "mandatory": True, "ack": True, "bindingVersion": "0.3.0"},
            ),
        },
        "components": {
            "messages": messages,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "an API key"}
            },
        },
    }
