"""Failures at the CI boundary, as :class:`app.errors.ServiceError` subclasses.

Two directions meet here. The **client** (``app.ci.client``) turns what CI (or the transport)
answered into one of the ``CIError`` classes; the **server side** (signature verification and
document parsing, used by the CI emulator) raises :class:`SignatureError` and
:class:`CIDocumentError`, each carrying the CI error code the emulator answers with.

    ServiceError
    ├── CIError                      502 ci_error          base: ci_code, ci_message, request_id
    │   ├── CIRejectedError          422 ci_rejected       CI refused the job as asked
    │   │   ├── CIAuthError          502 ci_auth_failed    CI refused OUR credentials
    │   │   ├── CIBusyError          503 ci_busy           queue full/paused, rate limited
    │   │   └── CIRefusedError       502 ci_refused        any other 3xx/4xx: our request is wrong
    │   ├── CIUnavailableError       502 ci_unavailable    5xx, connection refused/reset
    │   ├── CITimeoutError           504 ci_timeout        connect or read timeout
    │   └── CIProtocolError          502 ci_bad_response   a 2xx whose body is not the document
    ├── SignatureError               401/403 <CI code>     server side: a request's q-sign is bad
    └── CIDocumentError              400 invalid_ci_document  a CI document is malformed/invalid

How a CI answer maps (:func:`error_class`), and why:

    =====================================================  ==================  ====  ==========
    CI status / <Code>                                     class               HTTP  outcome
    =====================================================  ==================  ====  ==========
    400 InvalidArgument, MissingContent, InvalidContent,   CIRejectedError     422   rejected
        MalformedXML, BadRequest, ResourceNotFound,
        ResourceDownloadFailed; 413 InvalidContent
        (the job's own content is wrong: the caller can
        fix it, retrying unchanged is pointless)
    401 any code; 403 AccessDenied, SignatureDoesNotMatch, CIAuthError         502   rejected
        InvalidAccessKeyId, RequestTimeTooSkewed,
        ExpiredToken; 400 ExpiredToken,
        ResourceAccessDenied, InvalidHost
        (OUR SecretId/Key, token, clock or CI role is
        wrong: an operator's problem, not the caller's)
    403 QueueSaturated, QueuePaused; 429 SlowDown          CIBusyError         503   rejected
        (try again later)
    any other 3xx/4xx, or a 4xx without an XML error body  CIRefusedError      502   rejected
        (CI refused something we built: our fault)
    5xx (with or without an XML body); connection          CIUnavailableError  502   unavailable
        refused/reset
    connect/read timeout                                   CITimeoutError      504   timeout
    2xx whose body is not a valid response document        CIProtocolError     502   error
    =====================================================  ==================  ====  ==========

A 4xx without an XML error body is mapped by status alone: 401/403 → CIAuthError, 429 →
CIBusyError, anything else → CIRefusedError (without CI's code we cannot blame the caller).

No message built here ever contains a SecretKey, a token or an Authorization value: the client
passes every text through its redactor before it reaches an error.
"""

from __future__ import annotations

from typing import Any

from app.errors import ServiceError


class CIError(ServiceError):
    """CI (or the way to it) failed us. ``ci_status`` is CI's HTTP status, when there was one."""

    status_code = 502
    code = "ci_error"

    def __init__(
        self,
        message: str,
        *,
        ci_code: str | None = None,
        ci_message: str | None = None,
        request_id: str | None = None,
        ci_status: int | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message, details)
        self.ci_code = ci_code
        self.ci_message = ci_message
        self.request_id = request_id
        self.ci_status = ci_status

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["ci"] = {
            "code": self.ci_code,
            "message": self.ci_message,
            "request_id": self.request_id,
            "status": self.ci_status,
        }
        return body


class CIRejectedError(CIError):
    """CI answered 3xx/4xx. This class itself: the job as asked is invalid (InvalidArgument
    family), which the caller can fix."""

    status_code = 422
    code = "ci_rejected"


class CIAuthError(CIRejectedError):
    """CI refused our credentials (signature, SecretId, token, clock skew, CI role)."""

    status_code = 502
    code = "ci_auth_failed"


class CIBusyError(CIRejectedError):
    """CI's queue is full or paused, or CI rate-limits us: worth trying again later."""

    status_code = 503
    code = "ci_busy"


class CIRefusedError(CIRejectedError):
    """CI refused a request for a reason that is not the caller's (redirect, bad host, an
    unknown 4xx code, a 4xx without an XML error body)."""

    status_code = 502
    code = "ci_refused"


class CIUnavailableError(CIError):
    """CI answered 5xx, or could not be reached (connection refused or reset)."""

    status_code = 502
    code = "ci_unavailable"


class CITimeoutError(CIError):
    """CI did not connect or answer in time. For a create, the job may exist anyway."""

    status_code = 504
    code = "ci_timeout"


class CIProtocolError(CIError):
    """CI answered 2xx with a body that is not the expected, schema-valid document."""

    status_code = 502
    code = "ci_bad_response"


class SignatureError(ServiceError):
    """A request's COS/CI signature is missing, malformed or wrong (server side).

    ``ci_code`` and ``status_code`` are what CI answers (spec §6.2): the emulator renders
    them with :func:`app.ci.wire.build_error`.
    """

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.ci_code = code
        self.code = code
        self.status_code = status


class CIDocumentError(ServiceError):
    """A CI document (request, response or error body) is not well-formed or not valid.

    ``ci_code`` is what CI answers for such a request body: ``MissingContent`` (empty),
    ``InvalidContent`` (not UTF-8 / not well-formed / DTD / too deep / too large),
    ``InvalidArgument`` (schema violations, listed in ``details``).
    """

    status_code = 400
    code = "invalid_ci_document"

    def __init__(
        self,
        message: str,
        *,
        ci_code: str = "InvalidArgument",
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message, details)
        self.ci_code = ci_code


#: The job's own content is wrong: the caller can fix it (spec §6.2, §6.3).
REJECTED_CODES = frozenset(
    {
        "InvalidArgument",
        "MissingContent",
        "InvalidContent",
        "MalformedXML",
        "BadRequest",
        "ResourceNotFound",
        "ResourceDownloadFailed",
    }
)
#: Our credentials, token, clock or CI role are wrong (CI's 401 list, COS's 403 list).
AUTH_CODES = frozenset(
    {
        "MissingAuthorization",
        "InvalidAuthorization",
        "SecretidNotExist",
        "SignatureExpired",
        "AccessDenied",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "RequestTimeTooSkewed",
        "ExpiredToken",
        "ResourceAccessDenied",
        "InvalidHost",
    }
)
#: Try again later.
BUSY_CODES = frozenset({"QueueSaturated", "QueuePaused", "SlowDown"})


def error_class(status: int, ci_code: str | None) -> type[CIError]:
    """The class for a non-2xx answer of CI: the table in this module's docstring."""
    if status >= 500:
        return CIUnavailableError
    if ci_code in BUSY_CODES or status == 429:
        return CIBusyError
    if status == 401 or ci_code in AUTH_CODES or (ci_code is None and status == 403):
        return CIAuthError
    if ci_code in REJECTED_CODES and status in (400, 413):
        return CIRejectedError
    return CIRefusedError
