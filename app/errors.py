"""The service's expected failures, each mapped to one HTTP answer.

    ServiceError                      500 internal_error
    ├── BadRequestError               400 bad_request
    │   ├── MalformedNotificationError    400 malformed_notification  (not XML/JSON, DTD, depth…)
    │   ├── InvalidNotificationError      400 invalid_notification    (schema violations)
    │   └── WrongEndpointError            400 wrong_endpoint          (queue URL, API job)
    ├── UnauthorizedError             401 unauthorized
    ├── ForbiddenError                403 insufficient_scope           (a read key writing)
    ├── NotFoundError                 404 not_found
    ├── ConflictError                 409 conflict                     (Idempotency-Key reused)
    ├── PayloadTooLargeError          413 payload_too_large
    ├── UnsupportedMediaTypeError     415 unsupported_media_type
    ├── UnprocessableError            422 invalid_job                  (job rules, every field)
    ├── UnavailableError              503 unavailable                  (database down: retry)
    └── CIError (app.ci.errors)       502/504 ci_*                     (CI refused or is down)

One Flask handler (``app.web``) renders any of them as
``{"error": code, "message": ..., "details": [...]}``. Only our own faults are 5xx, because
senders retry those.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """An expected failure that maps to an HTTP response."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, "details": self.details}


class BadRequestError(ServiceError):
    status_code = 400
    code = "bad_request"


class MalformedNotificationError(BadRequestError):
    code = "malformed_notification"


class InvalidNotificationError(BadRequestError):
    code = "invalid_notification"


class WrongEndpointError(BadRequestError):
    """A queue notification about a job that has its own CallBack URL: CI sends that job's
    notifications there, never to the queue's URL, so this one is not CI's."""

    code = "wrong_endpoint"


class UnauthorizedError(ServiceError):
    status_code = 401
    code = "unauthorized"


class ForbiddenError(ServiceError):
    status_code = 403
    code = "insufficient_scope"


class NotFoundError(ServiceError):
    status_code = 404
    code = "not_found"


class PayloadTooLargeError(ServiceError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaTypeError(ServiceError):
    status_code = 415
    code = "unsupported_media_type"


class UnavailableError(ServiceError):
    status_code = 503
    code = "unavailable"


class UnprocessableError(ServiceError):
    """The request is well-formed but breaks the rules of a VoiceSeparate job."""

    status_code = 422
    code = "invalid_job"


class ConflictError(ServiceError):
    status_code = 409
    code = "conflict"
