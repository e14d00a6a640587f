"""Per-job callback tokens and the queue secret.

CI does not sign its callbacks, so each job's CallBack URL carries an unguessable token: an
HMAC-SHA256 of the cirelay job id under the first of ``CIRELAY_CALLBACK_KEYS``. Every key in
the list verifies, so keys rotate by putting a new one first and dropping the old one once
the jobs signed with it have finished.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence


def _token(key: str, job_id: str) -> str:
    digest = hmac.new(key.encode(), job_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign_job(job_id: str, keys: Sequence[str]) -> str:
    """The token for ``job_id`` under the current (first) key."""
    return _token(keys[0], job_id)


def is_valid_token(job_id: str, token: str, keys: Sequence[str]) -> bool:
    """Whether ``token`` was made by any of ``keys``; each comparison in constant time."""
    valid = False
    for key in keys:  # no early exit: the time taken does not tell which key matched
        # as bytes: compare_digest refuses text that is not ASCII, and a URL's token may be
        valid |= hmac.compare_digest(_token(key, job_id).encode(), token.encode())
    return valid


def is_valid_secret(given: str, expected: str | Sequence[str]) -> bool:
    """Whether ``given`` is one of the queue secrets (``CIRELAY_QUEUE_CALLBACK_SECRET``, a
    list so that it rotates like the callback keys): every one compared, as bytes, in
    constant time, so the time taken tells neither whether nor which one matched."""
    secrets = (expected,) if isinstance(expected, str) else expected
    given_bytes = given.encode("utf-8", "surrogateescape")
    valid = False
    for secret in secrets:  # no early exit
        valid |= hmac.compare_digest(given_bytes, secret.encode()) and bool(secret)
    return valid
