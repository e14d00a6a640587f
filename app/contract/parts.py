"""Building blocks every area of the OpenAPI document uses: the one error shape and the
answers each status brings (with their headers), JSON bodies, the bearer security
requirements. Plain dicts: what is written here is what ``GET /openapi.json`` serves."""

from __future__ import annotations

from typing import Any

Schema = dict[str, Any]

#: every answer carries the request's id (``app.web.request_ids``)
REQUEST_ID = {"$ref": "#/components/headers/RequestId"}

#: W3C Trace Context: accepted on every operation (tracing on), documented where it matters
TRACEPARENT: dict[str, Any] = {
    "name": "traceparent",
    "in": "header",
    "required": False,
    "description": (
        "W3C Trace Context (`00-<trace id>-<span id>-<flags>`): with tracing on, the job's "
        "spans (submit, CI's callbacks, every delivery) continue this trace. Optional, and "
        "accepted on every operation; one that is not valid starts a new trace."
    ),
    "schema": {
        "type": "string",
        "example": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    },
}

ERROR: Schema = {
    "type": "object",
    "description": "The one error shape of every answer that is not a success.",
    "required": ["error", "message", "details"],
    "additionalProperties": False,
    "properties": {
        "error": {"type": "string", "description": "a stable code, e.g. `not_found`"},
        "message": {"type": "string", "description": "for a human; may change"},
        "details": {
            "type": "array",
            "description": "one entry per problem (e.g. `{field, message}`)",
            "items": {"type": "object"},
        },
        "ci": {
            "type": "object",
            "description": "when CI refused or failed: what CI answered",
            "required": ["code", "message", "request_id", "status"],
            "additionalProperties": False,
            "properties": {
                "code": {"type": ["string", "null"]},
                "message": {"type": ["string", "null"]},
                "request_id": {"type": ["string", "null"]},
                "status": {"type": ["integer", "null"]},
            },
        },
    },
}

#: what each error status means, for the operations that can answer it
_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("Bad request: a query parameter or a body outside its limits.", {}),
    401: (
        "No valid bearer key.",
        {"WWW-Authenticate": {"$ref": "#/components/headers/WwwAuthenticate"}},
    ),
    403: ("The key's scope does not allow this (`insufficient_scope`).", {}),
    404: ("Not found.", {}),
    405: ("Method not allowed.", {"Allow": {"$ref": "#/components/headers/Allow"}}),
    409: ("Conflict: the Idempotency-Key was used for another request.", {}),
    413: ("The body is larger than `CIRELAY_MAX_BODY_BYTES`.", {}),
    415: ("Unsupported Content-Type.", {}),
    422: ("The body is well-formed but not valid: every problem in `details`.", {}),
    502: ("CI refused the request, or answered what cirelay cannot read.", {}),
    503: (
        "Unavailable (the database is down, or too many streams): retry after Retry-After.",
        {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}},
    ),
    504: ("CI did not answer in time; the job is reconciled later.", {}),
}

#: the answers of every operation behind a bearer key
READ = (401, 503)
WRITE = (401, 403, 503)


def error_response(status: int) -> dict[str, Any]:
    description, headers = _ERRORS[status]
    return {
        "description": description,
        "headers": {"X-Request-ID": REQUEST_ID, **headers},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def errors(*statuses: int) -> dict[str, Any]:
    """The error answers, by status, for an operation's ``responses``."""
    return {str(status): {"$ref": f"#/components/responses/{_name(status)}"} for status in statuses}


def _name(status: int) -> str:
    return f"Error{status}"


def json_answer(
    description: str,
    schema: Schema,
    *,
    headers: dict[str, Any] | None = None,
    links: dict[str, Any] | None = None,
) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "headers": {"X-Request-ID": REQUEST_ID, **(headers or {})},
        "content": {"application/json": {"schema": schema}},
    }
    if links:
        answer["links"] = links
    return answer


def json_body(schema: Schema, *, required: bool = True, **extra: Any) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema, **extra}}}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """``schema`` or ``null`` (OpenAPI 3.1 is JSON Schema 2020-12: a type list)."""
    kind = schema.get("type")
    if isinstance(kind, str):
        return {**schema, "type": [kind, "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def path_parameter(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", **schema},
    }


def query(name: str, description: str, schema: Schema, **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": schema, **extra}


def cursor_paging() -> list[dict[str, Any]]:
    """The parameters every cursor-paged list takes (read by ``app.web.filters.Reader``)."""
    return [
        query("created_after", "ISO 8601", {"type": "string", "format": "date-time"}),
        query("created_before", "ISO 8601", {"type": "string", "format": "date-time"}),
        query(
            "limit", "page size", {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}
        ),
        query("cursor", "the previous page's `next_cursor`", {"type": "string"}),
    ]


def cursor_page(name: str, item: Schema, *, cursor: str = "next_cursor") -> Schema:
    """One page of a list: its items under ``name``, and the cursor of the next page (an id
    string as ``next_cursor``, or a row id as ``next_before``)."""
    kind = "integer" if cursor == "next_before" else "string"
    return {
        "type": "object",
        "required": [name, cursor],
        "additionalProperties": False,
        "properties": {
            name: {"type": "array", "items": item},
            cursor: {"type": [kind, "null"]},
        },
    }


def components() -> dict[str, Any]:
    """What every area shares: the error shape and answers, the headers, the security
    scheme."""
    return {
        "schemas": {"Error": ERROR},
        "responses": {_name(status): error_response(status) for status in _ERRORS},
        "headers": {
            "RequestId": {
                "description": "The request's id (the caller's sane X-Request-ID, or a new one)",
                "required": True,
                "schema": {"type": "string", "minLength": 1},
            },
            "WwwAuthenticate": {"required": True, "schema": {"type": "string"}},
            "RetryAfter": {
                "description": "seconds",
                "required": True,
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            },
            "Allow": {"required": True, "schema": {"type": "string"}},
            "Location": {
                "description": "the new resource's path",
                "required": True,
                "schema": {"type": "string"},
            },
        },
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": (
                    "An API key from `CIRELAY_API_KEYS` (`name:scope:key`). Scope `read` "
                    "may use every GET; `admin` may also change things (POST, PATCH, "
                    "DELETE): a `read` key gets 403 `insufficient_scope` there."
                ),
            }
        },
    }


#: an operation any key may call; one that needs an ``admin`` key
READ_SCOPE: list[dict[str, list[str]]] = [{"bearer": ["read"]}]
ADMIN_SCOPE: list[dict[str, list[str]]] = [{"bearer": ["admin"]}]
PUBLIC: list[dict[str, list[str]]] = []
