"""cirelay's published contract: the OpenAPI 3.1 document of its HTTP API, the event
catalogue and the AsyncAPI 3.0 document of its event channels.

Written by hand next to the code, one module per area of the API (:data:`AREAS`: each has
``PATHS`` and ``SCHEMAS``), and held to the code by tests: ``tests/contract`` fails when a
Flask route is missing from the document or documented but absent, when the document is not
valid OpenAPI, when an event reaching the outbox breaks its type's schema, and when the
server's answers break the document (schemathesis against a live ``cirelay serve``).
Adding an operation is one entry in its area's ``PATHS``; adding an area is one module and
one entry in :data:`AREAS`; adding an event type is one entry in
:data:`app.contract.catalogue.EVENT_TYPES`.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from app.contract import (
    admin,
    callbacks,
    events,
    jobs,
    parts,
    service,
    subscriptions,
    workflows,
)
from app.contract.asyncapi import asyncapi_document
from app.contract.catalogue import EVENT_TYPES, EventType

#: the areas of the API, in the order the document lists them
AREAS = (jobs, workflows, events, subscriptions, admin, callbacks, service)

_TAGS = [
    {"name": "jobs", "description": "VoiceSeparate jobs: submit, read, list"},
    {"name": "workflows", "description": "Workflow instances CI reported (WorkflowFinish)"},
    {"name": "events", "description": "The event log (pull, Server-Sent Events), the catalogue"},
    {
        "name": "subscriptions",
        "description": "Subscriptions (webhooks, NATS, RabbitMQ), their deliveries and retries",
    },
    {"name": "quarantine", "description": "Refused notifications: read them, replay them"},
    {"name": "audit", "description": "Who did what, through the API, the console or the CLI"},
    {"name": "callbacks", "description": "What CI calls: job notifications"},
    {"name": "service", "description": "Health, metrics, this contract"},
]


def api_version() -> str:
    try:
        return package_version("cirelay")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document, built once (treat it as read-only)."""
    paths: dict[str, Any] = {}
    components = parts.components()
    for area in AREAS:
        paths.update(area.PATHS)
        components["schemas"].update(area.SCHEMAS)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "cirelay",
            "version": api_version(),
            "summary": "Tencent Cloud CI VoiceSeparate jobs: submit, record, fan out",
            "description": (
                "Submits VoiceSeparate jobs to Tencent Cloud CI, receives CI's notifications, "
                "records every job's state durably and fans state changes out to "
                "subscribers. Errors are always `{error, message, details}`. The events and "
                "their channels: `GET /v1/event-types`, `GET /asyncapi.json`."
            ),
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": _TAGS,
        "security": parts.READ_SCOPE,
        "paths": paths,
        "components": components,
    }


@cache
def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 3.0 document, built once (treat it as read-only)."""
    return asyncapi_document(api_version())


__all__ = ["AREAS", "EVENT_TYPES", "EventType", "asyncapi", "openapi_document"]
