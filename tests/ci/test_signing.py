"""q-sign signatures: ours equal what Tencent's Python SDK computes, and the verifier accepts
them and refuses every kind of tampering with CI's codes.

The oracle is ``qcloud_cos.cos_auth.CosS3Auth`` run unchanged on a ``requests`` prepared
request, its clock fixed by replacing the ``time`` module it reads.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from qcloud_cos import CosConfig, cos_auth

from app.ci.signing import (
    SignatureError,
    is_signed_header,
    parse_authorization,
    sign_request,
    verify_request,
)

SECRET_ID = "AKIDexampleSecretId0123456789"
SECRET_KEY = "exampleSecretKey0123456789abcd"
TOKEN = "temporary-token-abc/def+ghi=="
HOST = "media-1300000000.ci.ap-guangzhou.myqcloud.com"
NOW = 1_709_600_000
EXPIRE = 600
START, END = NOW - 60, NOW + EXPIRE  # the SDK's window for a clock at NOW
BODY = b'<?xml version="1.0" encoding="utf-8"?>\n<Request><Tag>VoiceSeparate</Tag></Request>'


@contextmanager
def sdk_clock(now: int) -> Iterator[None]:
    """The SDK reads ``time.time()`` through its module's ``time`` name: replace that."""
    with mock.patch.object(cos_auth, "time", SimpleNamespace(time=lambda: now)):
        yield


def sdk_sign(
    method: str,
    path: str,
    params: dict[str, str],
    headers: dict[str, str],
    body: bytes | None = None,
    *,
    token: str | None = None,
) -> tuple[str, requests.PreparedRequest]:
    """The Authorization value the SDK puts on this request, and the request it signed."""
    config = CosConfig(Region="ap-guangzhou", SecretId=SECRET_ID, SecretKey=SECRET_KEY, Token=token)
    prepared = requests.Request(
        method, f"https://{HOST}{path}", params=params, headers=headers, data=body
    ).prepare()
    with sdk_clock(NOW):
        cos_auth.CosS3Auth(config, path, params=params, expire=EXPIRE)(prepared)
    return prepared.headers["Authorization"], prepared


def ours(method: str, path: str, params: dict[str, str], prepared: requests.PreparedRequest) -> str:
    headers = {k: v for k, v in prepared.headers.items() if k != "Authorization"}
    return sign_request(method, path, params, headers, SECRET_ID, SECRET_KEY, start=START, end=END)


def verify(
    method: str,
    path: str,
    params: dict[str, str],
    headers: dict[str, Any],
    authorization: str | None,
    *,
    now: int = NOW,
    secrets: dict[str, str] | None = None,
) -> None:
    table = {SECRET_ID: SECRET_KEY} if secrets is None else secrets
    verify_request(method, path, params, headers, authorization, secret_lookup=table.get, now=now)


CASES = {
    "post-jobs-with-body": (
        "POST",
        "/jobs",
        {},
        {"Host": HOST, "Content-Type": "application/xml"},
        BODY,
        None,
    ),
    "post-jobs-with-token": (
        "POST",
        "/jobs",
        {},
        {"Host": HOST, "Content-Type": "application/xml", "x-ci-security-token": TOKEN},
        BODY,
        TOKEN,
    ),
    "get-jobs-by-ids": (
        "GET",
        "/jobs/j7d3e1c22a0b111efa9c8525400b1c2d3,j00000000000000000000000000000001",
        {},
        {"Host": HOST},
        None,
        None,
    ),
    "list-jobs-params": (
        "GET",
        "/jobs",
        {"tag": "VoiceSeparate", "size": "10", "nextToken": "tok/en+1=", "states": "All"},
        {"Host": HOST},
        None,
        None,
    ),
    "list-jobs-unicode-and-space": (
        "GET",
        "/jobs",
        {"tag": "VoiceSeparate", "inputObject": "歌曲/my song~1.wav", "queueId": ""},
        {"Host": HOST, "x-cos-meta-Name": "a b/c"},
        None,
        None,
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_signature_equals_the_sdks(case: tuple[Any, ...]) -> None:
    method, path, params, headers, body, token = case
    expected, prepared = sdk_sign(method, path, params, headers, body, token=token)
    assert ours(method, path, params, prepared) == expected


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_verifier_accepts_what_the_sdk_signed(case: tuple[Any, ...]) -> None:
    method, path, params, headers, body, token = case
    authorization, prepared = sdk_sign(method, path, params, headers, body, token=token)
    verify(method, path, params, dict(prepared.headers), authorization)


def test_signed_headers_are_the_sdks_whitelist_plus_cos_and_ci_prefixes() -> None:
    assert [is_signed_header(h) for h in ("Host", "Content-Type", "Content-Length")] == [True] * 3
    assert is_signed_header("X-CI-Security-Token") and is_signed_header("x-cos-meta-a")
    assert not any(is_signed_header(h) for h in ("User-Agent", "Accept", "Date", "Connection"))


def test_authorization_lists_lowercase_sorted_names_and_the_same_window() -> None:
    authorization = sign_request(
        "GET",
        "/jobs",
        {"nextToken": "x", "Tag": "VoiceSeparate"},
        {"Host": HOST, "User-Agent": "u", "X-CI-Security-Token": TOKEN},
        SECRET_ID,
        SECRET_KEY,
        start=START,
        end=END,
    )
    parsed = parse_authorization(authorization)
    assert parsed.header_list == ("host", "x-ci-security-token")
    assert parsed.param_list == ("nexttoken", "tag")
    assert parsed.sign_time == parsed.key_time == (START, END)
    assert parsed.secret_id == SECRET_ID


def test_signing_refuses_a_window_that_ends_before_it_starts() -> None:
    with pytest.raises(ValueError, match="window"):
        sign_request(
            "GET", "/jobs", {}, {"Host": HOST}, SECRET_ID, SECRET_KEY, start=END, end=START
        )


# --- verification failures ----------------------------------------------------------------

PATH = "/jobs"
PARAMS = {"tag": "VoiceSeparate", "nextToken": "abc"}
HEADERS = {"Host": HOST, "x-ci-security-token": TOKEN}


def signed(**overrides: Any) -> str:
    fields: dict[str, Any] = {
        "method": "GET",
        "path": PATH,
        "params": PARAMS,
        "headers": HEADERS,
        "secret_key": SECRET_KEY,
    }
    fields.update(overrides)
    return sign_request(
        fields["method"],
        fields["path"],
        fields["params"],
        fields["headers"],
        SECRET_ID,
        fields["secret_key"],
        start=START,
        end=END,
    )


def refusal(authorization: str | None, **changes: Any) -> SignatureError:
    request: dict[str, Any] = {"method": "GET", "path": PATH, "params": PARAMS, "headers": HEADERS}
    request.update(changes)
    with pytest.raises(SignatureError) as caught:
        verify(
            request["method"],
            request["path"],
            request["params"],
            request["headers"],
            authorization,
            now=request.get("now", NOW),
            secrets=request.get("secrets"),
        )
    return caught.value


def test_verifier_accepts_an_untampered_request() -> None:
    verify("GET", PATH, PARAMS, HEADERS, signed())


def test_header_lookup_is_case_insensitive() -> None:
    verify("GET", PATH, PARAMS, {"HOST": HOST, "X-Ci-Security-Token": TOKEN}, signed())


def test_unsigned_extra_headers_and_params_do_not_matter() -> None:
    headers = {**HEADERS, "User-Agent": "curl/8", "Accept": "*/*"}
    verify("GET", PATH, PARAMS, headers, signed())


OTHER_HOST = "x.cos.ap-beijing.myqcloud.com"
REFUSALS = [
    pytest.param(None, {}, "MissingAuthorization", 401, id="missing"),
    pytest.param("  ", {}, "MissingAuthorization", 401, id="empty"),
    pytest.param(signed(secret_key="another-key"), {}, "AccessDenied", 403, id="wrong-secret"),
    pytest.param(signed(), {"secrets": {}}, "SecretidNotExist", 401, id="unknown-secret-id"),
    pytest.param(signed(), {"now": END + 1}, "SignatureExpired", 401, id="expired"),
    pytest.param(signed(), {"now": START - 1}, "SignatureExpired", 401, id="not-yet-valid"),
    pytest.param(signed(), {"path": "/jobs/j1"}, "AccessDenied", 403, id="tampered-path"),
    pytest.param(signed(), {"method": "POST"}, "AccessDenied", 403, id="tampered-method"),
    pytest.param(
        signed(), {"params": {**PARAMS, "tag": "X"}}, "AccessDenied", 403, id="tampered-param"
    ),
    pytest.param(
        signed(), {"params": {"tag": "VoiceSeparate"}}, "AccessDenied", 403, id="removed-param"
    ),
    pytest.param(
        signed(), {"headers": {**HEADERS, "Host": OTHER_HOST}}, "AccessDenied", 403, id="host"
    ),
    pytest.param(
        signed(),
        {"headers": {**HEADERS, "x-ci-security-token": "other"}},
        "AccessDenied",
        403,
        id="tampered-token",
    ),
    pytest.param(
        signed(), {"headers": {"Host": HOST}}, "AccessDenied", 403, id="removed-signed-header"
    ),
]


@pytest.mark.parametrize(("authorization", "changes", "code", "status"), REFUSALS)
def test_verifier_refuses(
    authorization: str | None, changes: dict[str, Any], code: str, status: int
) -> None:
    error = refusal(authorization, **changes)
    assert (error.ci_code, error.status_code) == (code, status)


def test_the_boundaries_of_the_window_are_valid() -> None:
    verify("GET", PATH, PARAMS, HEADERS, signed(), now=START)
    verify("GET", PATH, PARAMS, HEADERS, signed(), now=END)


def test_a_mismatch_says_signaturedoesnotmatch_in_the_message() -> None:
    error = refusal(signed(secret_key="another-secret-key"))
    assert error.message.startswith("SignatureDoesNotMatch")


GOOD = signed()


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(
            GOOD.replace("q-sign-algorithm=sha1", "q-sign-algorithm=sha256"), id="not-sha1"
        ),
        pytest.param(GOOD.replace("&q-signature=", "&q-nosignature="), id="missing-signature"),
        pytest.param(GOOD.replace("q-ak=" + SECRET_ID, "q-ak="), id="empty-ak"),
        pytest.param(
            GOOD.replace(f"q-sign-time={START};{END}", "q-sign-time=yesterday"), id="bad-time"
        ),
        pytest.param(
            GOOD.replace(f"q-key-time={START};{END}", f"q-key-time={END};{START}"),
            id="inverted-window",
        ),
        pytest.param(GOOD[:-1], id="short-signature"),
        pytest.param(GOOD.upper().replace("Q-", "q-"), id="uppercase-hex"),
        pytest.param(GOOD + "&q-ak=other", id="repeated-field"),
        pytest.param("Bearer abc", id="not-q-sign"),
        pytest.param(GOOD.replace("&q-header-list=", "&q-header-list"), id="field-without-equals"),
    ],
)
def test_malformed_authorization_is_invalidauthorization(authorization: str) -> None:
    error = refusal(authorization)
    assert (error.ci_code, error.status_code) == ("InvalidAuthorization", 401)


def test_key_time_outside_now_is_expired_even_when_sign_time_is_not() -> None:
    authorization = GOOD.replace(f"q-key-time={START};{END}", f"q-key-time={START};{START + 1}")
    assert refusal(authorization).ci_code == "SignatureExpired"


def test_the_error_never_carries_the_secret_key() -> None:
    error = refusal(signed(secret_key="another-secret-key"))
    assert SECRET_KEY not in str(error) and SECRET_KEY not in repr(error.to_dict())


# --- property: any params and headers -----------------------------------------------------

_NAME_CHARS = string.ascii_letters + string.digits + "-_"
header_names = st.one_of(
    st.sampled_from(["Content-Type", "content-md5", "Range", "If-Match", "Origin", "Expires"]),
    st.text(_NAME_CHARS, min_size=1, max_size=12).map(lambda s: "x-cos-meta-" + s),
    st.text(_NAME_CHARS, min_size=1, max_size=12).map(lambda s: "X-CI-" + s),
    st.text(_NAME_CHARS, min_size=1, max_size=12).map(lambda s: "X-Other-" + s),
)
# Header values as requests accepts them: no CR/LF, no leading whitespace.
header_values = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20).map(
    str.strip
)
params = st.dictionaries(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=10),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
    max_size=5,
)


@settings(max_examples=100, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]),
    path=st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20).map(
        lambda s: "/" + s
    ),
    query=params,
    headers=st.dictionaries(header_names, header_values, max_size=5),
)
def test_any_request_signs_like_the_sdk_and_verifies(
    method: str, path: str, query: dict[str, str], headers: dict[str, str]
) -> None:
    headers = {**headers, "Host": HOST}
    config = CosConfig(Region="ap-guangzhou", SecretId=SECRET_ID, SecretKey=SECRET_KEY)
    prepared = requests.PreparedRequest()
    prepared.prepare_method(method)
    prepared.prepare_headers(headers)
    prepared.url = f"https://{HOST}/"
    with sdk_clock(NOW):
        cos_auth.CosS3Auth(config, path, params=query, expire=EXPIRE)(prepared)
    expected = prepared.headers["Authorization"]
    assert (
        sign_request(method, path, query, headers, SECRET_ID, SECRET_KEY, start=START, end=END)
        == expected
    )
    received_params = {k: v for k, v in query.items()}
    if len({k.lower() for k in query}) == len(query):  # names that fold alike are ambiguous
        verify(method, path, received_params, headers, expected)
