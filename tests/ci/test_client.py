"""The CI client against a real HTTP server on loopback that records what it receives and
answers with canned documents; and Tencent's own SDK against the same server, to show the
verifier accepts what the official client sends."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import pytest
import requests
from lxml import etree
from prometheus_client import CollectorRegistry, generate_latest
from qcloud_cos import CosConfig, CosS3Client, cos_auth

from app.ci import wire
from app.ci.client import CIClient
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
)
from app.ci.signing import SignatureError, parse_authorization, verify_request
from app.config import Settings
from app.metrics import Metrics
from app.schemas import SchemaSet
from tests.ci.test_rules import valid_request
from tests.ci.test_signing import sdk_clock
from tests.ci.test_wire import FINISHED, SUBMITTED, detail

SECRET_ID = "AKIDclientSecretId0123456789"
SECRET_KEY = "clientSecretKey-do-not-leak-0123"
TOKEN = "session-token-do-not-leak-4567"
BUCKET = "media-1300000000"
REGION = "ap-guangzhou"
CI_HOST = f"{BUCKET}.ci.{REGION}.myqcloud.com"
MOMENT = datetime(2024, 3, 5, 1, 41, 7, tzinfo=UTC)
NOW = int(MOMENT.timestamp())
JOB_IDS = ["j6d67510d4c4f15952ca66bc47f5b1ea3", "j00000000000000000000000000000009"]


# --- a recording CI on loopback -----------------------------------------------------------


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False  # close the connection without answering


@dataclass
class Recorded:
    method: str
    raw_path: str
    path: str  # decoded, as a server verifies it
    params: dict[str, str]
    headers: dict[str, str]
    body: bytes
    client_port: int


class RecordingCI:
    """Records every request; answers with the queued replies in order, then ``default``."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.replies: list[Reply] = []
        self.default = Reply()
        self.stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.handle_error = lambda *args: None  # type: ignore[method-assign]
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )

    def start(self) -> RecordingCI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def reply(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def next_reply(self) -> Reply:
        return self.replies.pop(0) if self.replies else self.default

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        ci = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so connection reuse shows

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                parts = urlsplit(self.path)
                ci.requests.append(
                    Recorded(
                        method=self.command,
                        raw_path=parts.path,
                        path=unquote(parts.path),
                        params=dict(parse_qsl(parts.query, keep_blank_values=True)),
                        headers=dict(self.headers.items()),
                        body=self.rfile.read(length),
                        client_port=self.client_address[1],
                    )
                )
                reply = ci.next_reply()
                if reply.delay:
                    ci.stopping.wait(reply.delay)
                if reply.drop:
                    self.close_connection = True
                    return
                self.send_response(reply.status)
                headers = {
                    "Content-Type": "application/xml",
                    "x-ci-request-id": "req-from-header",
                    **reply.headers,
                }
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

        return Handler


@pytest.fixture
def ci() -> Iterator[RecordingCI]:
    server = RecordingCI().start()
    yield server
    server.stop()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(CollectorRegistry())


def make_client(
    endpoint: str | None,
    metrics: Metrics | None = None,
    schemas: SchemaSet | None = None,
    **options: Any,
) -> CIClient:
    settings = Settings(
        ci_endpoint=endpoint,
        ci_secret_id=SECRET_ID,
        ci_secret_key=SECRET_KEY,
        ci_bucket=BUCKET,
        ci_region=REGION,
    )
    return CIClient(settings, clock=lambda: MOMENT, metrics=metrics, schemas=schemas, **options)


@pytest.fixture
def client(ci: RecordingCI, metrics: Metrics, schemas: SchemaSet) -> CIClient:
    return make_client(ci.url, metrics, schemas)


def count(metrics: Metrics, operation: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "cirelay_ci_requests_total", {"operation": operation, "outcome": outcome}
    )
    return value or 0.0


def timings(metrics: Metrics, operation: str) -> float:
    value = metrics.registry.get_sample_value(
        "cirelay_ci_request_duration_seconds_count", {"operation": operation}
    )
    return value or 0.0


def created_body() -> bytes:
    return wire.build_create_response([detail(SUBMITTED)])


def error_body(code: str, message: str = "no", request_id: str = "req-in-body") -> bytes:
    return wire.build_error(code, message, request_id, "trace-1")


def verify(recorded: Recorded, now: int = NOW) -> None:
    """What a CI server does: check the signature over the request as received."""
    verify_request(
        recorded.method,
        recorded.path,
        recorded.params,
        recorded.headers,
        recorded.headers.get("Authorization"),
        secret_lookup={SECRET_ID: SECRET_KEY}.get,
        now=now,
    )


def sdk_authorization(recorded: Recorded, *, token: str | None = None) -> str:
    """The SDK's signature for the request as received: our signer's oracle."""
    headers = {k: v for k, v in recorded.headers.items() if k != "Authorization"}
    prepared = requests.Request(
        recorded.method,
        f"http://{recorded.headers['Host']}{quote(recorded.path)}",
        headers=headers,
        params=recorded.params,
        data=recorded.body or None,
    ).prepare()
    config = CosConfig(Region=REGION, SecretId=SECRET_ID, SecretKey=SECRET_KEY, Token=token)
    with sdk_clock(NOW):
        cos_auth.CosS3Auth(config, recorded.path, params=recorded.params, expire=600)(prepared)
    return str(prepared.headers["Authorization"])


def refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- create -------------------------------------------------------------------------------


def test_create_posts_a_signed_valid_request_to_the_ci_host(
    ci: RecordingCI, client: CIClient, schemas: SchemaSet
) -> None:
    ci.reply(Reply(body=created_body()))
    result = client.create_job(valid_request())
    [sent] = ci.requests
    assert (sent.method, sent.path) == ("POST", "/jobs")
    assert sent.headers["Host"] == CI_HOST  # the real CI host, not the endpoint's
    assert sent.headers["Content-Type"] == "application/xml"
    assert schemas.validate("create_request", etree.fromstring(sent.body)) == []
    verify(sent)
    assert sent.headers["Authorization"] == sdk_authorization(sent)
    assert [r.ci_job_id for r in result.reports] == ["j6d67510d4c4f15952ca66bc47f5b1ea3"]
    assert result.request_id == "req-from-header"


def test_create_signs_host_content_type_and_length_for_the_window(
    ci: RecordingCI, client: CIClient
) -> None:
    ci.reply(Reply(body=created_body()))
    client.create_job(valid_request())
    parsed = parse_authorization(ci.requests[0].headers["Authorization"])
    assert parsed.header_list == ("content-length", "content-type", "host")
    assert parsed.param_list == ()
    assert parsed.sign_time == parsed.key_time == (NOW - 60, NOW + 600)


def test_a_security_token_is_sent_and_signed(
    ci: RecordingCI, metrics: Metrics, schemas: SchemaSet
) -> None:
    client = make_client(ci.url, metrics, schemas, security_token=TOKEN)
    ci.reply(Reply(body=created_body()))
    client.create_job(valid_request())
    [sent] = ci.requests
    assert sent.headers["x-ci-security-token"] == TOKEN
    assert "x-ci-security-token" in parse_authorization(sent.headers["Authorization"]).header_list
    verify(sent)
    assert sent.headers["Authorization"] == sdk_authorization(sent, token=TOKEN)


def test_the_signature_expires_with_its_window(ci: RecordingCI, client: CIClient) -> None:
    ci.reply(Reply(body=created_body()))
    client.create_job(valid_request())
    verify(ci.requests[0], now=NOW + 600)
    with pytest.raises(SignatureError, match="expired"):
        verify(ci.requests[0], now=NOW + 601)


def test_an_invalid_request_is_refused_before_anything_is_sent(
    ci: RecordingCI, client: CIClient, metrics: Metrics
) -> None:
    with pytest.raises(CIDocumentError):
        client.create_job({**valid_request(), "QueueId": "not-a-queue"})
    assert ci.requests == [] and timings(metrics, "create") == 0


def test_create_success_is_counted_and_timed(
    ci: RecordingCI, client: CIClient, metrics: Metrics
) -> None:
    ci.reply(Reply(body=created_body()))
    client.create_job(valid_request())
    assert count(metrics, "create", "ok") == 1
    assert timings(metrics, "create") == 1


def test_the_session_reuses_its_connection(ci: RecordingCI, client: CIClient) -> None:
    ci.default = Reply(body=created_body())
    client.create_job(valid_request())
    client.create_job(valid_request())
    assert ci.requests[0].client_port == ci.requests[1].client_port


# --- describe -----------------------------------------------------------------------------


def test_describe_gets_the_ids_and_reports_missing_ones(
    ci: RecordingCI, client: CIClient, metrics: Metrics
) -> None:
    ci.reply(Reply(body=wire.build_describe_response([detail(FINISHED)], [JOB_IDS[1]])))
    reports, missing = client.describe_jobs(JOB_IDS)
    [sent] = ci.requests
    assert (sent.method, sent.path, sent.body) == ("GET", "/jobs/" + ",".join(JOB_IDS), b"")
    assert sent.raw_path == "/jobs/" + "%2C".join(JOB_IDS)  # encoded like the SDK's
    verify(sent)
    assert sent.headers["Authorization"] == sdk_authorization(sent)
    assert [r.state for r in reports] == ["Success"] and missing == [JOB_IDS[1]]
    assert count(metrics, "describe", "ok") == 1


@pytest.mark.parametrize("ids", [[], [f"j{i:032x}" for i in range(11)], ["a,b"], [""]])
def test_describe_refuses_bad_id_lists_without_sending(
    ci: RecordingCI, client: CIClient, ids: list[str]
) -> None:
    with pytest.raises(ValueError):
        client.describe_jobs(ids)
    assert ci.requests == []


def test_describe_takes_ten_ids(ci: RecordingCI, client: CIClient) -> None:
    ids = [f"j{i:032x}" for i in range(10)]
    ci.reply(Reply(body=wire.build_describe_response([], ids)))
    assert client.describe_jobs(ids) == ([], ids)


# --- list ---------------------------------------------------------------------------------


def test_list_sends_every_parameter_signed_and_returns_the_next_token(
    ci: RecordingCI, client: CIClient
) -> None:
    ci.reply(Reply(body=wire.build_list_response([detail(SUBMITTED)], "page-2")))
    east8 = timezone(timedelta(hours=8))
    reports, token = client.list_jobs(
        queue_id="p0f5e2a7b9c1d44e6a8b3c5d7e9f01234",
        states=["Running", "Success"],
        size=50,
        next_token="tok+/= 1",
        order_by_time="Asc",
        start_creation_time=datetime(2024, 3, 1, tzinfo=east8),
        end_creation_time=datetime(2024, 3, 5, 23, 59, 59, tzinfo=east8),
    )
    [sent] = ci.requests
    assert sent.path == "/jobs"
    assert sent.params == {
        "tag": "VoiceSeparate",
        "queueId": "p0f5e2a7b9c1d44e6a8b3c5d7e9f01234",
        "states": "Running,Success",
        "size": "50",
        "nextToken": "tok+/= 1",
        "orderByTime": "Asc",
        "startCreationTime": "2024-03-01T00:00:00+0800",
        "endCreationTime": "2024-03-05T23:59:59+0800",
    }
    signed = parse_authorization(sent.headers["Authorization"]).param_list
    assert signed == tuple(sorted(k.lower() for k in sent.params))
    verify(sent)
    assert sent.headers["Authorization"] == sdk_authorization(sent)
    assert [r.ci_job_id for r in reports] == ["j6d67510d4c4f15952ca66bc47f5b1ea3"]
    assert token == "page-2"


def test_list_sends_only_what_is_given_and_ends_without_a_token(
    ci: RecordingCI, client: CIClient
) -> None:
    ci.reply(Reply(body=wire.build_list_response([], "")))
    assert client.list_jobs() == ([], None)
    assert ci.requests[0].params == {"tag": "VoiceSeparate"}
    verify(ci.requests[0])


@pytest.mark.parametrize(
    "options",
    [
        {"size": 0},
        {"size": 101},
        {"order_by_time": "desc"},
        {"start_creation_time": datetime(2024, 1, 1)},
    ],
    ids=["size-0", "size-101", "order-lowercase", "naive-time"],
)
def test_list_refuses_bad_parameters(
    ci: RecordingCI, client: CIClient, options: dict[str, Any]
) -> None:
    with pytest.raises(ValueError):
        client.list_jobs(**options)
    assert ci.requests == []


# --- CI's errors --------------------------------------------------------------------------

HTML = {"Content-Type": "text/html"}
ERRORS = [
    pytest.param(
        400,
        error_body("InvalidArgument"),
        {},
        CIRejectedError,
        422,
        "ci_rejected",
        id="400-invalid-argument",
    ),
    pytest.param(
        400,
        error_body("ResourceNotFound"),
        {},
        CIRejectedError,
        422,
        "ci_rejected",
        id="400-resource-not-found",
    ),
    pytest.param(
        401,
        error_body("SignatureExpired"),
        {},
        CIAuthError,
        502,
        "ci_auth_failed",
        id="401-expired",
    ),
    pytest.param(
        403,
        error_body("AccessDenied"),
        {},
        CIAuthError,
        502,
        "ci_auth_failed",
        id="403-access-denied",
    ),
    pytest.param(
        403,
        error_body("SignatureDoesNotMatch"),
        {},
        CIAuthError,
        502,
        "ci_auth_failed",
        id="403-mismatch",
    ),
    pytest.param(
        403, error_body("QueueSaturated"), {}, CIBusyError, 503, "ci_busy", id="403-queue-full"
    ),
    pytest.param(429, error_body("SlowDown"), {}, CIBusyError, 503, "ci_busy", id="429-slow-down"),
    pytest.param(
        404, error_body("InvalidUrl"), {}, CIRefusedError, 502, "ci_refused", id="404-invalid-url"
    ),
    pytest.param(400, b"<html>bad</html>", HTML, CIRefusedError, 502, "ci_refused", id="400-html"),
    pytest.param(403, b"", {}, CIAuthError, 502, "ci_auth_failed", id="403-empty"),
    pytest.param(
        500,
        error_body("InternalErrror"),
        {},
        CIUnavailableError,
        502,
        "ci_unavailable",
        id="500-xml",
    ),
    pytest.param(
        503, b"<html>busy</html>", HTML, CIUnavailableError, 502, "ci_unavailable", id="503-html"
    ),
    pytest.param(
        307,
        error_body("TemporaryRedirect"),
        {"Location": "http://elsewhere/"},
        CIRefusedError,
        502,
        "ci_refused",
        id="307",
    ),
]


@pytest.mark.parametrize(("status", "body", "headers", "kind", "http", "code"), ERRORS)
def test_ci_errors_map_to_service_errors(
    ci: RecordingCI,
    client: CIClient,
    metrics: Metrics,
    status: int,
    body: bytes,
    headers: dict[str, str],
    kind: type[CIError],
    http: int,
    code: str,
) -> None:
    ci.reply(Reply(status=status, body=body, headers=headers))
    with pytest.raises(kind) as caught:
        client.create_job(valid_request())
    error = caught.value
    assert type(error) is kind and (error.status_code, error.code) == (http, code)
    assert error.ci_status == status
    outcome = "unavailable" if status >= 500 else "rejected"
    assert count(metrics, "create", outcome) == 1
    assert len(ci.requests) == 1  # a create is never retried


def test_an_xml_error_carries_cis_code_message_and_request_id(
    ci: RecordingCI, client: CIClient
) -> None:
    ci.reply(Reply(400, error_body("InvalidArgument", "Output is empty", "req-42")))
    with pytest.raises(CIRejectedError) as caught:
        client.create_job(valid_request())
    error = caught.value
    assert (error.ci_code, error.ci_message, error.request_id) == (
        "InvalidArgument",
        "Output is empty",
        "req-42",
    )
    assert error.to_dict()["ci"]["code"] == "InvalidArgument"
    assert "400 InvalidArgument: Output is empty" in error.message


def test_a_non_xml_error_body_still_says_what_happened(ci: RecordingCI, client: CIClient) -> None:
    ci.reply(Reply(502, b"<html>Bad Gateway</html>", HTML))
    with pytest.raises(CIUnavailableError) as caught:
        client.describe_jobs(JOB_IDS[:1])
    assert "502 without an XML error body (text/html, 24 bytes)" in caught.value.message
    assert caught.value.ci_code is None and caught.value.request_id == "req-from-header"
    assert len(ci.requests) == 1  # a 5xx is an answer: not retried


def test_a_2xx_with_a_wrong_body_is_a_protocol_error(
    ci: RecordingCI, client: CIClient, metrics: Metrics
) -> None:
    ci.reply(Reply(body=b"<Response/>"))
    with pytest.raises(CIProtocolError) as caught:
        client.create_job(valid_request())
    assert caught.value.status_code == 502 and caught.value.details
    assert isinstance(caught.value.__cause__, CIDocumentError)
    assert count(metrics, "create", "error") == 1


# --- transport failures -------------------------------------------------------------------


def test_a_slow_answer_is_a_timeout(ci: RecordingCI, metrics: Metrics, schemas: SchemaSet) -> None:
    client = make_client(ci.url, metrics, schemas, read_timeout=0.2)
    ci.reply(Reply(body=created_body(), delay=2.0))
    with pytest.raises(CITimeoutError) as caught:
        client.create_job(valid_request())
    assert caught.value.status_code == 504 and caught.value.code == "ci_timeout"
    assert "may have been created" in caught.value.message
    assert isinstance(caught.value.__cause__, requests.Timeout)
    assert count(metrics, "create", "timeout") == 1 and len(ci.requests) == 1


def test_a_slow_get_is_a_timeout_and_not_retried(
    ci: RecordingCI, metrics: Metrics, schemas: SchemaSet
) -> None:
    client = make_client(ci.url, metrics, schemas, read_timeout=0.2)
    ci.reply(Reply(delay=2.0))
    with pytest.raises(CITimeoutError):
        client.list_jobs()
    assert count(metrics, "list", "timeout") == 1 and len(ci.requests) == 1


def test_connection_refused_is_unavailable(metrics: Metrics, schemas: SchemaSet) -> None:
    client = make_client(f"http://127.0.0.1:{refused_port()}", metrics, schemas)
    with pytest.raises(CIUnavailableError) as caught:
        client.create_job(valid_request())
    assert caught.value.status_code == 502 and caught.value.ci_status is None
    assert isinstance(caught.value.__cause__, requests.ConnectionError)
    assert count(metrics, "create", "unavailable") == 1


def test_a_get_is_tried_twice_when_refused(metrics: Metrics, schemas: SchemaSet) -> None:
    client = make_client(f"http://127.0.0.1:{refused_port()}", metrics, schemas)
    with pytest.raises(CIUnavailableError):
        client.describe_jobs(JOB_IDS[:1])
    assert count(metrics, "describe", "unavailable") == 2


def test_a_get_is_retried_once_after_a_dropped_connection(
    ci: RecordingCI, client: CIClient, metrics: Metrics
) -> None:
    ci.reply(Reply(drop=True), Reply(body=wire.build_describe_response([detail(FINISHED)])))
    reports, _ = client.describe_jobs(JOB_IDS[:1])
    assert len(reports) == 1 and len(ci.requests) == 2
    verify(ci.requests[1])
    assert (count(metrics, "describe", "unavailable"), count(metrics, "describe", "ok")) == (1, 1)


def test_a_create_is_never_retried_after_a_dropped_connection(
    ci: RecordingCI, client: CIClient
) -> None:
    ci.reply(Reply(drop=True), Reply(body=created_body()))
    with pytest.raises(CIUnavailableError):
        client.create_job(valid_request())
    assert len(ci.requests) == 1


# --- secrets ------------------------------------------------------------------------------


def test_no_secret_reaches_an_error_or_a_metric(
    ci: RecordingCI, metrics: Metrics, schemas: SchemaSet
) -> None:
    """Even when CI echoes our Authorization, key and token back, nothing leaks."""
    client = make_client(ci.url, metrics, schemas, security_token=TOKEN)
    ci.reply(Reply(body=created_body()))
    client.create_job(valid_request())
    authorization = ci.requests[0].headers["Authorization"]
    echo = f"bad {authorization} key={SECRET_KEY} token={TOKEN}"
    ci.reply(
        Reply(403, error_body("AccessDenied", echo)),
        Reply(400, error_body("InvalidArgument", echo)),
        Reply(500, echo.encode(), HTML),
    )
    errors: list[CIError] = []
    for call in (client.create_job, client.create_job, client.create_job):
        with pytest.raises(CIError) as caught:
            call(valid_request())
        errors.append(caught.value)
    for error in errors:
        text = " ".join([str(error), repr(error), repr(error.to_dict()), error.ci_message or ""])
        for secret in (SECRET_KEY, TOKEN, authorization, "q-signature="):
            assert secret not in text
    exposition = generate_latest(metrics.registry).decode()
    assert SECRET_KEY not in exposition and TOKEN not in exposition


def test_the_client_never_shows_its_secret() -> None:
    client = make_client(None)
    assert SECRET_KEY not in repr(client) and SECRET_KEY not in str(vars(client).keys())
    assert client.base_url == f"https://{CI_HOST}" and client.host == CI_HOST


@pytest.mark.parametrize("missing", ["ci_secret_id", "ci_secret_key", "ci_bucket", "ci_region"])
def test_the_client_needs_its_settings(missing: str) -> None:
    settings = Settings(
        ci_secret_id=SECRET_ID, ci_secret_key=SECRET_KEY, ci_bucket=BUCKET, ci_region=REGION
    ).with_overrides(**{missing: ""})
    with pytest.raises(ValueError, match=missing) as caught:
        CIClient(settings, clock=lambda: MOMENT)
    assert SECRET_KEY not in str(caught.value)


@pytest.mark.parametrize(
    "endpoint", ["http://127.0.0.1:9000/ci", "ftp://127.0.0.1", "127.0.0.1:9000", "http://u:p@h"]
)
def test_the_endpoint_must_be_an_origin(endpoint: str) -> None:
    with pytest.raises(ValueError, match="ci_endpoint"):
        make_client(endpoint)


def test_the_client_refuses_a_bucket_that_would_change_the_host() -> None:
    settings = Settings(
        ci_secret_id=SECRET_ID, ci_secret_key=SECRET_KEY, ci_bucket="evil.com/x", ci_region=REGION
    )
    with pytest.raises(ValueError, match="ci_bucket"):
        CIClient(settings, clock=lambda: MOMENT)


# --- Tencent's SDK, unchanged, against the same server --------------------------------------


def sdk_client(ci: RecordingCI, token: str | None = None) -> CosS3Client:
    config = CosConfig(
        Region=REGION,
        SecretId=SECRET_ID,
        SecretKey=SECRET_KEY,
        Token=token,
        IP="127.0.0.1",
        Port=ci.port,
        Scheme="http",
    )
    return CosS3Client(config, retry=0)


def test_the_verifier_accepts_the_sdks_create_request(ci: RecordingCI, schemas: SchemaSet) -> None:
    ci.reply(Reply(body=created_body()))
    with sdk_clock(NOW):
        answer = sdk_client(ci).ci_create_media_jobs(
            Bucket=BUCKET, Jobs=valid_request(), ContentType="application/xml"
        )
    [sent] = ci.requests
    # In IP mode the SDK names its COS host (spec §7), and signs that.
    assert sent.headers["Host"] == f"{BUCKET}.cos.{REGION}.myqcloud.com"
    assert sent.body.startswith(b'<?xml version="1.0" encoding="utf-8"?>')
    verify(sent)
    assert wire.parse_request(sent.body, schemas=schemas) == valid_request()
    assert answer["JobsDetail"][0]["JobId"] == "j6d67510d4c4f15952ca66bc47f5b1ea3"


def test_the_verifier_accepts_the_sdks_token_and_describe(ci: RecordingCI) -> None:
    ci.reply(Reply(body=wire.build_describe_response([detail(FINISHED)])))
    with sdk_clock(NOW):
        sdk_client(ci, token=TOKEN).ci_get_media_jobs(Bucket=BUCKET, JobIDs=",".join(JOB_IDS))
    [sent] = ci.requests
    assert sent.headers["x-ci-security-token"] == TOKEN
    assert sent.path == "/jobs/" + ",".join(JOB_IDS)
    verify(sent)


def test_the_verifier_accepts_the_sdks_list(ci: RecordingCI) -> None:
    ci.reply(Reply(body=wire.build_list_response([], None)))
    with sdk_clock(NOW):
        sdk_client(ci).ci_list_media_jobs(Bucket=BUCKET, Tag="VoiceSeparate", Size=5)
    [sent] = ci.requests
    assert sent.params["nextToken"] == "" and sent.params["size"] == "5"
    verify(sent)


def test_the_verifier_refuses_the_sdks_request_with_another_key(ci: RecordingCI) -> None:
    ci.reply(Reply(body=created_body()))
    with sdk_clock(NOW):
        sdk_client(ci).ci_create_media_jobs(Bucket=BUCKET, Jobs=valid_request())
    with pytest.raises(SignatureError) as caught:
        verify_request(
            "POST",
            ci.requests[0].path,
            ci.requests[0].params,
            ci.requests[0].headers,
            ci.requests[0].headers["Authorization"],
            secret_lookup=lambda _: "another-key",
            now=NOW,
        )
    assert caught.value.status_code == 403
