"""COS XML "q-sign" v5 request signatures, which CI uses unchanged (spec §7).

One implementation for both ends: :func:`sign_request` for cirelay's CI client and
:func:`verify_request` for the CI emulator. Signing computes exactly what Tencent's Python SDK
(``qcloud_cos.cos_auth.CosS3Auth``) computes for the same request; the tests use that SDK as
the oracle. Its details, mirrored here on purpose:

* signed headers: a fixed whitelist (``SIGNED_HEADERS``) plus every ``x-cos-*`` and ``x-ci-*``
  header; ``host`` is on the whitelist, so the Host header is always signed when present;
* every query parameter is signed;
* keys and values are UTF-8 percent-encoded with ``quote(safe='-_.~')`` (space is ``%20``,
  ``/`` is ``%2F``), keys then lower-cased (escapes too, as the SDK does), pairs sorted;
* the path is signed as given (decoded, ``/``-prefixed), not re-encoded;
* q-sign-time and q-key-time carry the same window.

The clock is never read here: the signer gets ``start``/``end``, the verifier ``now``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from app.ci.errors import SignatureError

__all__ = [
    "SIGNED_HEADERS",
    "ParsedAuthorization",
    "SignatureError",
    "is_signed_header",
    "parse_authorization",
    "sign_request",
    "verify_request",
]

#: The SDK's whitelist (``cos_auth.filter_headers``); ``x-cos-*``/``x-ci-*`` are added by prefix.
SIGNED_HEADERS = frozenset(
    {
        "cache-control",
        "content-disposition",
        "content-encoding",
        "content-type",
        "content-md5",
        "content-length",
        "expect",
        "expires",
        "host",
        "if-match",
        "if-modified-since",
        "if-none-match",
        "if-unmodified-since",
        "origin",
        "range",
        "transfer-encoding",
        "pic-operations",
    }
)
_SIGNED_PREFIXES = ("x-cos-", "x-ci-")
_SAFE = "-_.~"
#: the fields of an Authorization value (also the query parameters of a signed URL)
AUTH_FIELDS = (
    "q-sign-algorithm",
    "q-ak",
    "q-sign-time",
    "q-key-time",
    "q-header-list",
    "q-url-param-list",
    "q-signature",
)
_WINDOW = re.compile(r"([0-9]{1,12});([0-9]{1,12})")
_HEX_SHA1 = re.compile(r"[0-9a-f]{40}")

# A signature that does not match. CI's own code list (spec §6.2) has no such code and lists
# AccessDenied under both 401 and 403; COS answers 403 SignatureDoesNotMatch, and the COS 403
# guide shows the same failure as <Code>AccessDenied</Code><Message>SignatureDoesNotMatch...
# (spec §6.3 "Disagreement"). We answer what a CI host most plausibly sends: AccessDenied,
# 403, with SignatureDoesNotMatch in the message, so a client keyed on either word sees it.
MISMATCH_CODE = "AccessDenied"
MISMATCH_STATUS = 403


def is_signed_header(name: str) -> bool:
    """Whether the SDK puts header ``name`` into the signature."""
    lower = name.lower()
    return lower in SIGNED_HEADERS or lower.startswith(_SIGNED_PREFIXES)


def sign_request(
    method: str,
    path: str,
    params: Mapping[str, str | None],
    headers: Mapping[str, str],
    secret_id: str,
    secret_key: str,
    *,
    start: int,
    end: int,
) -> str:
    """The ``Authorization`` value for a request, valid from ``start`` to ``end`` (Unix s).

    ``path`` is the decoded URI path (``/jobs``); ``params`` every query parameter sent (a
    ``None`` value signs as empty, like ``?cancel``); ``headers`` the headers sent, of which
    the signable ones are signed. Include ``Host``: it is what binds the signature to the
    bucket.
    """
    if end < start:
        raise ValueError("signature window ends before it starts")
    window = f"{start};{end}"
    signed_headers = {k: v for k, v in headers.items() if is_signed_header(k)}
    param_list, param_string = _canonical(params.items())
    header_list, header_string = _canonical(signed_headers.items())
    signature = _signature(
        secret_key, window, window, _http_string(method, path, param_string, header_string)
    )
    return (
        f"q-sign-algorithm=sha1&q-ak={secret_id}&q-sign-time={window}&q-key-time={window}"
        f"&q-header-list={header_list}&q-url-param-list={param_list}&q-signature={signature}"
    )


@dataclass(frozen=True)
class ParsedAuthorization:
    """The fields of a well-formed q-sign ``Authorization`` value."""

    secret_id: str
    sign_time: tuple[int, int]
    key_time: tuple[int, int]
    header_list: tuple[str, ...]
    param_list: tuple[str, ...]
    signature: str

    @property
    def sign_time_text(self) -> str:
        return f"{self.sign_time[0]};{self.sign_time[1]}"

    @property
    def key_time_text(self) -> str:
        return f"{self.key_time[0]};{self.key_time[1]}"


def parse_authorization(authorization: str) -> ParsedAuthorization:
    """Split an ``Authorization`` value; ``SignatureError(InvalidAuthorization)`` if malformed."""
    fields: dict[str, str] = {}
    for part in authorization.strip().split("&"):
        key, sep, value = part.partition("=")
        if not sep or key in fields:
            raise _invalid("malformed Authorization: every field once, as key=value")
        fields[key] = value
    missing = [name for name in AUTH_FIELDS if name not in fields]
    if missing:
        raise _invalid(f"Authorization lacks {', '.join(missing)}")
    if fields["q-sign-algorithm"] != "sha1":
        raise _invalid("q-sign-algorithm must be sha1")
    if not fields["q-ak"]:
        raise _invalid("q-ak is empty")
    if not _HEX_SHA1.fullmatch(fields["q-signature"]):
        raise _invalid("q-signature is not 40 lowercase hex digits")
    return ParsedAuthorization(
        secret_id=fields["q-ak"],
        sign_time=_window(fields["q-sign-time"], "q-sign-time"),
        key_time=_window(fields["q-key-time"], "q-key-time"),
        header_list=_name_list(fields["q-header-list"]),
        param_list=_name_list(fields["q-url-param-list"]),
        signature=fields["q-signature"],
    )


def verify_request(
    method: str,
    path: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    authorization: str | None,
    *,
    secret_lookup: Callable[[str], str | None],
    now: int,
) -> None:
    """Check a received request's signature, or raise :class:`SignatureError`.

    ``path`` is the decoded request path, ``params`` the decoded query parameters and
    ``headers`` the headers as received (any case), Host included: the signature is
    rebuilt over exactly the names the client listed in q-header-list / q-url-param-list,
    whatever else the request carries. Checks run cheapest first; the last one compares
    in constant time. Codes per spec §6.2 (CI) and §7 "server-side verification".
    """
    if not authorization or not authorization.strip():
        raise SignatureError("MissingAuthorization", "the request carries no Authorization", 401)
    parsed = parse_authorization(authorization)
    secret_key = secret_lookup(parsed.secret_id)
    if secret_key is None:
        raise SignatureError("SecretidNotExist", "the SecretId does not exist", 401)
    _require_current(parsed, now)
    header_string = _listed(parsed.header_list, headers, "header")
    param_string = _listed(parsed.param_list, params, "query parameter")
    expected = _signature(
        secret_key,
        parsed.key_time_text,
        parsed.sign_time_text,
        _http_string(method, path, param_string, header_string),
    )
    if not hmac.compare_digest(expected, parsed.signature):
        raise _mismatch("the signature you specified is invalid")


# --- the algorithm ------------------------------------------------------------------------


def _encode(text: str) -> str:
    return quote(text.encode("utf-8"), safe=_SAFE)


def _canonical(items: Iterable[tuple[str, str | None]]) -> tuple[str, str]:
    """``(k1;k2, k1=v1&k2=v2)`` over encoded, lower-cased keys and encoded values, sorted.

    Built as a dict first, like the SDK: two keys that lower-case alike keep the last value.
    """
    encoded = {_encode(k).lower(): _encode(v or "") for k, v in items}
    pairs = sorted(encoded.items())
    return ";".join(k for k, _ in pairs), "&".join(f"{k}={v}" for k, v in pairs)


def _http_string(method: str, path: str, params: str, headers: str) -> str:
    return f"{method.lower()}\n{path}\n{params}\n{headers}\n"


def _hmac_sha1(key: str, message: str) -> str:
    return hmac.new(key.encode("utf-8"), message.encode("utf-8"), hashlib.sha1).hexdigest()


def _signature(secret_key: str, key_time: str, sign_time: str, http_string: str) -> str:
    """Spec §7 steps 2, 6, 7: SignKey over q-key-time, StringToSign over q-sign-time."""
    sign_key = _hmac_sha1(secret_key, key_time)
    digest = hashlib.sha1(http_string.encode("utf-8")).hexdigest()  # noqa: S324 (protocol's)
    return _hmac_sha1(sign_key, f"sha1\n{sign_time}\n{digest}\n")


# --- verification helpers -----------------------------------------------------------------


def _window(text: str, name: str) -> tuple[int, int]:
    match = _WINDOW.fullmatch(text)
    if not match:
        raise _invalid(f"{name} must be <start>;<end> in Unix seconds")
    start, end = int(match.group(1)), int(match.group(2))
    if end < start:
        raise _invalid(f"{name} ends before it starts")
    return start, end


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(name for name in text.split(";") if name)


def _require_current(parsed: ParsedAuthorization, now: int) -> None:
    """Both windows must contain ``now``. CI's list has no "not yet valid" code; a window
    that starts in the future is answered like an expired one (COS would say
    RequestTimeTooSkewed, spec §7 step 4)."""
    for name, (start, end) in (("q-sign-time", parsed.sign_time), ("q-key-time", parsed.key_time)):
        if now > end:
            raise SignatureError("SignatureExpired", f"the signature expired ({name})", 401)
        if now < start:
            raise SignatureError(
                "SignatureExpired", f"the signature is not yet valid ({name})", 401
            )


def _listed(names: tuple[str, ...], received: Mapping[str, str], kind: str) -> str:
    """The canonical string over exactly ``names``, looked up case-insensitively."""
    by_name = {_encode(k).lower(): v for k, v in received.items()}
    wanted = sorted({name.lower() for name in names})
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise _mismatch(f"a signed {kind} is missing from the request: {', '.join(missing)}")
    return "&".join(f"{name}={_encode(by_name[name])}" for name in wanted)


def _invalid(message: str) -> SignatureError:
    return SignatureError("InvalidAuthorization", message, 401)


def _mismatch(detail: str) -> SignatureError:
    return SignatureError(MISMATCH_CODE, f"SignatureDoesNotMatch: {detail}", MISMATCH_STATUS)
