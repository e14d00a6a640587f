"""The service's own paths: health, metrics, and this contract (``/openapi.json``,
``/asyncapi.json``, ``/docs``). No key needed."""

from __future__ import annotations

from typing import Any

from app.contract.parts import PUBLIC, Schema, json_answer

_CHECKS: Schema = {
    "type": "object",
    "required": ["database", "schemas"],
    "additionalProperties": False,
    "properties": {
        "database": {"type": "string", "description": "`ok`, `no answer` or `unreachable`"},
        "schemas": {"type": "string", "enum": ["ok", "missing"]},
    },
}


def _readiness(status: str) -> Schema:
    return {
        "type": "object",
        "required": ["status", "checks"],
        "additionalProperties": False,
        "properties": {"status": {"type": "string", "const": status}, "checks": _CHECKS},
    }


def _get(operation_id: str, summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {
        "get": {
            "operationId": operation_id,
            "tags": ["service"],
            "summary": summary,
            "security": PUBLIC,
            "responses": responses,
        }
    }


def _document(description: str) -> dict[str, Any]:
    return json_answer(description, {"type": "object"})


def _text(description: str, media_type: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Request-ID": {"$ref": "#/components/headers/RequestId"}},
        "content": {media_type: {"schema": {"type": "string"}}},
    }


PATHS: dict[str, Any] = {
    "/healthz": _get(
        "healthz",
        "Alive: the process answers",
        {
            "200": json_answer(
                "Alive",
                {
                    "type": "object",
                    "required": ["status"],
                    "additionalProperties": False,
                    "properties": {"status": {"type": "string", "const": "ok"}},
                },
            )
        },
    ),
    "/readyz": _get(
        "readyz",
        "Ready: the database answers and the schemas are loaded",
        {
            "200": json_answer("Ready", _readiness("ready")),
            "503": json_answer("Not ready", _readiness("not ready")),
        },
    ),
    "/metrics": _get(
        "metrics", "Prometheus exposition", {"200": _text("The metrics", "text/plain")}
    ),
    "/openapi.json": _get(
        "getOpenApi", "This document (OpenAPI 3.1)", {"200": _document("OpenAPI 3.1")}
    ),
    "/asyncapi.json": _get(
        "getAsyncApi",
        "The event channels: webhooks, Server-Sent Events (AsyncAPI 3.0)",
        {"200": _document("AsyncAPI 3.0")},
    ),
    "/docs": _get("docs", "This document in Swagger UI", {"200": _text("HTML", "text/html")}),
}

SCHEMAS: dict[str, Schema] = {}
