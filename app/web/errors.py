"""How an error is answered: status code, JSON document ``{"error", "message", "details"}``
and extra headers. One rendering for Flask's error handlers (:mod:`app.web`) and for the
callback lane in front of Flask (:mod:`app.web.callbacks`)."""

from __future__ import annotations

from typing import Any

from werkzeug.exceptions import HTTPException

from app.errors import ServiceError

#: status code, JSON document, extra headers
Answer = tuple[int, dict[str, Any], list[tuple[str, str]]]


def service_error(exc: ServiceError) -> Answer:
    """A :class:`ServiceError` as status code, JSON document and extra headers — the one
    rendering of errors, for the lane and for Flask."""
    headers = []
    if exc.status_code == 401:
        headers.append(("WWW-Authenticate", 'Bearer realm="cirelay"'))
    if exc.status_code == 503:
        headers.append(("Retry-After", "5"))
    return exc.status_code, exc.to_dict(), headers


def http_error(exc: HTTPException) -> Answer:
    """A werkzeug HTTP error (404, 405, 500, …) in the same JSON shape."""
    code = (exc.name or "error").lower().replace(" ", "_")
    document = {"error": code, "message": exc.description or exc.name, "details": []}
    headers = [(k, v) for k, v in exc.get_headers() if k.lower() == "allow"]
    return exc.code or 500, document, headers
