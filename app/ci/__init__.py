"""Tencent Cloud CI (数据万象): the client cirelay uses, and the pieces the emulator shares.

* :mod:`app.ci.signing` — COS/CI "q-sign" signatures: sign (client) and verify (emulator);
* :mod:`app.ci.rules` — the business rules of a VoiceSeparate request (submit API, emulator);
* :mod:`app.ci.wire` — the XML documents in and out, each checked against its XSD;
* :mod:`app.ci.client` — :class:`CIClient`, the only code that talks to CI;
* :mod:`app.ci.errors` — the failures at this boundary, as ``ServiceError`` subclasses.
"""

from __future__ import annotations

from app.ci.client import CIClient, CISettings, CreateResult
from app.ci.errors import (
    CIAuthError,
    CIBusyError,
    CIDocumentError,
    CIError,
    CIProtocolError,
    CIRefusedError,
    CIRejectedError,
    CITimeoutError,
    CIUnavailableError,
    SignatureError,
)
from app.ci.rules import RuleViolation, check_request
from app.ci.signing import sign_request, verify_request
from app.ci.wire import CIErrorBody

__all__ = [
    "CIAuthError",
    "CIBusyError",
    "CIClient",
    "CIDocumentError",
    "CIError",
    "CIErrorBody",
    "CIProtocolError",
    "CIRefusedError",
    "CIRejectedError",
    "CISettings",
    "CITimeoutError",
    "CIUnavailableError",
    "CreateResult",
    "RuleViolation",
    "SignatureError",
    "check_request",
    "sign_request",
    "verify_request",
]
