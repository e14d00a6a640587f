"""The only code that talks to Tencent CI: create, describe and list VoiceSeparate jobs.

Every request is signed (:mod:`app.ci.signing`) over the real CI host
``<bucket>.ci.<region>.myqcloud.com``, also when ``settings.ci_endpoint`` sends it elsewhere
(the emulator, a proxy): the Host header still names CI, so the signature is the one CI
would check. Bodies are built and answers parsed by :mod:`app.ci.wire`; every failure
becomes one of :mod:`app.ci.errors`' classes, chained to its cause.

Choices, and why:

* **Key window** ``now - 60 s`` to ``now + 600 s``: the SDK's ``- 60 s`` start tolerates our
  clock running a little ahead of CI's; a 10-minute end (the SDK uses 10 000 s) bounds the
  use of a leaked Authorization value, and no exchange lasts longer than the read timeout.
* **Timeouts** connect 3 s, read 10 s by default.
* **Endpoint**: ``ci_endpoint`` must be an origin (``http://127.0.0.1:9000``), no path.
* **No retry of POST /jobs**, ever: a lost answer does not mean a lost job, and a retry could
  create a second CI job silently. A create that timed out says so; the caller decides.
  GETs are retried once, on connection errors only (refused/reset), with a fresh signature.
* **Temporary credentials**: ``security_token`` goes into ``x-ci-security-token`` (CI's
  header, spec §6.5), which is signed like every ``x-ci-*`` header.
* **Metrics**: one ``cirelay_ci_requests_total{operation,outcome}`` sample and one
  ``cirelay_ci_request_duration_seconds{operation}`` observation per HTTP request (a
  retried GET counts twice).
* **Secrets** (SecretKey, token, Authorization) never reach a message, an error or a metric:
  every text taken from an exception or from CI passes :meth:`CIClient._redact`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, urlsplit

import requests
from requests.auth import AuthBase

from app import tracing
from app.ci import wire
from app.ci.errors import (
    CIDocumentError,
    CIError,
    CIProtocolError,
    CIRejectedError,
    CITimeoutError,
    CIUnavailableError,
    error_class,
)
from app.ci.signing import sign_request
from app.metrics import Metrics
from app.models import JobReport
from app.notifications import CI_TIME_FORMAT
from app.schemas import SchemaSet

__all__ = ["CIClient", "CISettings", "CreateResult"]

T = TypeVar("T")

CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0
#: The signature's window around "now", in seconds (see the module docstring).
KEY_TIME_BEFORE = 60
KEY_TIME_AFTER = 600
MAX_DESCRIBE_IDS = 10
MAX_LIST_SIZE = 100
#: The largest answer read from CI; a describe of 10 finished jobs is about 30 KB.
MAX_ANSWER_BYTES = 4 << 20
_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_AUTHORIZATION = re.compile(r"q-sign-algorithm=\S*")


class CISettings(Protocol):
    """The part of :class:`app.config.Settings` the client reads."""

    @property
    def ci_endpoint(self) -> str | None: ...
    @property
    def ci_secret_id(self) -> str: ...
    @property
    def ci_secret_key(self) -> str: ...
    @property
    def ci_bucket(self) -> str: ...
    @property
    def ci_region(self) -> str: ...


@dataclass(frozen=True)
class CreateResult:
    """What ``POST /jobs`` created: one report per operation, and CI's request id."""

    reports: list[JobReport]
    request_id: str | None


@dataclass(frozen=True)
class _Answer:
    status: int
    content_type: str
    body: bytes
    request_id: str | None


class CIClient:
    """A signed HTTP client for CI's job API. Thread-safe as far as the Session is."""

    def __init__(
        self,
        settings: CISettings,
        *,
        clock: Callable[[], datetime],
        session: requests.Session | None = None,
        metrics: Metrics | None = None,
        security_token: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        schemas: SchemaSet | None = None,
    ) -> None:
        _require_settings(settings)
        self.host = f"{settings.ci_bucket}.ci.{settings.ci_region}.myqcloud.com"
        self.base_url = (settings.ci_endpoint or f"https://{self.host}").rstrip("/")
        self._secret_id = settings.ci_secret_id
        self._secret_key = settings.ci_secret_key
        self._token = security_token or None
        self._clock = clock
        self._session = session if session is not None else requests.Session()
        self._metrics = metrics
        self._timeout = (connect_timeout, read_timeout)
        self._schemas = schemas

    def __repr__(self) -> str:  # never print secrets
        return f"CIClient(base_url={self.base_url!r}, host={self.host!r})"

    # --- the three operations -------------------------------------------------------------

    def create_job(self, request: Mapping[str, Any]) -> CreateResult:
        """Submit one CreateMediaJobs request (dict form, see :mod:`app.ci.wire`).

        The body is checked against the XSD before it is sent (:class:`CIDocumentError`
        otherwise); the business rules (:func:`app.ci.rules.check_request`) are the
        caller's to run first, so it can answer its own caller with every problem.
        Never retried: see the module docstring.
        """
        body = wire.build_create_request(request, schemas=self._schemas)
        reports, request_id = self._call(
            "create",
            "POST",
            "/jobs",
            body=body,
            parse=lambda b: wire.parse_create_response(b, schemas=self._schemas),
            retry=False,
        )
        return CreateResult(reports, request_id)

    def describe_jobs(self, job_ids: Sequence[str]) -> tuple[list[JobReport], list[str]]:
        """``GET /jobs/<id,id,...>``: ``(reports, ids CI does not know)``. 1 to 10 ids."""
        ids = list(job_ids)
        if not 1 <= len(ids) <= MAX_DESCRIBE_IDS:
            raise ValueError(f"describe takes 1 to {MAX_DESCRIBE_IDS} job ids (got {len(ids)})")
        if any(not i or "," in i or "/" in i for i in ids):
            raise ValueError("a job id must be non-empty and contain neither ',' nor '/'")
        result, _ = self._call(
            "describe",
            "GET",
            "/jobs/" + ",".join(ids),
            parse=lambda b: wire.parse_describe_response(b, schemas=self._schemas),
            retry=True,
        )
        return result

    def list_jobs(
        self,
        *,
        tag: str = "VoiceSeparate",
        queue_id: str | None = None,
        states: Sequence[str] | None = None,
        size: int | None = None,
        next_token: str | None = None,
        order_by_time: str | None = None,
        start_creation_time: datetime | None = None,
        end_creation_time: datetime | None = None,
        input_object: str | None = None,
    ) -> tuple[list[JobReport], str | None]:
        """``GET /jobs?tag=...``: one page of jobs and the token of the next (or ``None``).

        Only the parameters given are sent (spec §4.2: CI defaults ``states=All``,
        ``size=10``, ``orderByTime=Desc``). Creation times go out in CI's format.
        """
        params = _list_params(
            tag=tag,
            queue_id=queue_id,
            states=states,
            size=size,
            next_token=next_token,
            order_by_time=order_by_time,
            start_creation_time=start_creation_time,
            end_creation_time=end_creation_time,
            input_object=input_object,
        )
        result, _ = self._call(
            "list",
            "GET",
            "/jobs",
            params=params,
            parse=lambda b: wire.parse_list_response(b, schemas=self._schemas),
            retry=True,
        )
        return result

    # --- one exchange ---------------------------------------------------------------------

    def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        parse: Callable[[bytes], T],
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        retry: bool,
    ) -> tuple[T, str | None]:
        """Send, check, parse; record each attempt; retry a GET once after a connection
        error. Returns the parsed answer and CI's request id."""
        attempts = 2 if retry else 1
        for attempt in range(1, attempts + 1):
            started = time.perf_counter()
            with tracing.span(f"CI {operation}", kind="client", attributes={
                "ci.operation": operation, "server.address": self.host,
            }):  # fmt: skip
                try:
                    answer = self._exchange(method, path, params or {}, body)
                    result = self._interpret(answer, parse)
                except CIError as exc:
                    tracing.set_attributes({"ci.request_id": exc.request_id})
                    self._observe(operation, _outcome(exc), started)
                    if attempt < attempts and _is_connection_failure(exc):
                        continue
                    raise
                tracing.set_attributes({"ci.request_id": answer.request_id})
                self._observe(operation, "ok", started)
                return result, answer.request_id
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _exchange(
        self, method: str, path: str, params: Mapping[str, str], body: bytes | None
    ) -> _Answer:
        """One signed HTTP request; transport failures become CI errors."""
        headers = {"Host": self.host, **tracing.inject_headers()}  # traceparent: not signed
        if body is not None:
            headers["Content-Type"] = "application/xml"
        if self._token:
            headers["x-ci-security-token"] = self._token
        now = int(self._clock().timestamp())
        auth = _Signer(
            path,
            params,
            self._secret_id,
            self._secret_key,
            start=now - KEY_TIME_BEFORE,
            end=now + KEY_TIME_AFTER,
        )
        where = f"{method} {path}"
        try:
            response = self._session.request(
                method,
                self.base_url + quote(path, safe="/"),
                params=dict(params),
                data=body,
                headers=headers,
                auth=auth,
                timeout=self._timeout,
                allow_redirects=False,
                stream=True,
            )
            with response:
                content = _read_capped(response, MAX_ANSWER_BYTES)
        except requests.Timeout as exc:
            hint = " (the job may have been created: look it up before resubmitting)"
            message = f"CI did not answer {where} in time"
            raise CITimeoutError(message + (hint if method == "POST" else "")) from exc
        except requests.ConnectionError as exc:
            raise CIUnavailableError(
                self._redact(f"cannot reach CI for {where}: {_reason(exc)}")
            ) from exc
        except requests.RequestException as exc:
            raise CIError(self._redact(f"{where} to CI failed: {_reason(exc)}")) from exc
        return _Answer(
            status=response.status_code,
            content_type=response.headers.get("Content-Type", ""),
            body=content,
            request_id=response.headers.get("x-ci-request-id")
            or response.headers.get("x-cos-request-id"),
        )

    def _interpret(self, answer: _Answer, parse: Callable[[bytes], T]) -> T:
        if not 200 <= answer.status < 300:
            raise self._error_for(answer)
        try:
            return parse(answer.body)
        except CIDocumentError as exc:
            raise CIProtocolError(
                self._redact(f"CI answered {answer.status} with an unexpected body: {exc.message}"),
                request_id=answer.request_id,
                ci_status=answer.status,
                details=exc.details,
            ) from exc

    def _error_for(self, answer: _Answer) -> CIError:
        """A non-2xx answer as an error: by CI's code when the body is an ``<Error>``
        document, by status alone otherwise (table in :mod:`app.ci.errors`)."""
        try:
            error = wire.parse_error(answer.body, schemas=self._schemas)
        except CIDocumentError:
            kind = answer.content_type or "no content type"
            return error_class(answer.status, None)(
                f"CI answered {answer.status} without an XML error body "
                f"({kind}, {len(answer.body)} bytes)",
                request_id=answer.request_id,
                ci_status=answer.status,
            )
        ci_message = self._redact(error.message)
        return error_class(answer.status, error.code)(
            f"CI answered {answer.status} {error.code}: {ci_message}",
            ci_code=error.code,
            ci_message=ci_message,
            request_id=error.request_id or answer.request_id,
            ci_status=answer.status,
        )

    def _observe(self, operation: str, outcome: str, started: float) -> None:
        if self._metrics is None:
            return
        self._metrics.ci_requests.labels(operation, outcome).inc()
        self._metrics.ci_request_seconds.labels(operation).observe(
            time.perf_counter() - started, exemplar=tracing.exemplar()
        )

    def _redact(self, text: str) -> str:
        """``text`` without our SecretKey, token or any Authorization value."""
        for secret in (self._secret_key, self._token):
            if secret:
                text = text.replace(secret, "***")
        return _AUTHORIZATION.sub("q-sign-***", text)


class _Signer(AuthBase):
    """Signs a prepared request the way the SDK's ``CosS3Auth`` does: after the body is
    prepared, so Content-Length is among the headers signed."""

    def __init__(
        self,
        path: str,
        params: Mapping[str, str],
        secret_id: str,
        secret_key: str,
        *,
        start: int,
        end: int,
    ) -> None:
        self._path = path
        self._params = params
        self._secret_id = secret_id
        self._secret_key = secret_key
        self._start = start
        self._end = end

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = sign_request(
            request.method or "GET",
            self._path,
            self._params,
            dict(request.headers),
            self._secret_id,
            self._secret_key,
            start=self._start,
            end=self._end,
        )
        return request


def _require_settings(settings: CISettings) -> None:
    """Fail at construction, naming (never showing) what is missing or malformed."""
    problems = [
        name
        for name in ("ci_secret_id", "ci_secret_key", "ci_bucket", "ci_region")
        if not getattr(settings, name)
    ]
    problems += [
        f"{name} (lowercase letters, digits, '-')"
        for name in ("ci_bucket", "ci_region")
        if getattr(settings, name) and not _NAME.fullmatch(getattr(settings, name))
    ]
    if settings.ci_endpoint and not _is_origin(settings.ci_endpoint):
        problems.append("ci_endpoint (an http(s) origin: the signed path is CI's own)")
    if problems:
        raise ValueError(f"the CI client needs valid settings: {', '.join(problems)}")


def _is_origin(url: str) -> bool:
    """``http(s)://host[:port]`` and nothing more: a path prefix would be sent but not
    signed, and CI (or the emulator) would refuse every signature."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.path in ("", "/")
        and not (parts.query or parts.fragment or parts.username)
    )


def _list_params(
    *,
    tag: str,
    queue_id: str | None,
    states: Sequence[str] | None,
    size: int | None,
    next_token: str | None,
    order_by_time: str | None,
    start_creation_time: datetime | None,
    end_creation_time: datetime | None,
    input_object: str | None = None,
) -> dict[str, str]:
    """The query of ``GET /jobs`` (spec §4.2 names), only the parameters given."""
    if size is not None and not 1 <= size <= MAX_LIST_SIZE:
        raise ValueError(f"size must be 1 to {MAX_LIST_SIZE} (got {size})")
    if order_by_time not in (None, "Desc", "Asc"):
        raise ValueError("order_by_time must be 'Desc' or 'Asc'")
    for moment in (start_creation_time, end_creation_time):
        if moment is not None and moment.tzinfo is None:
            raise ValueError("creation times must be timezone-aware")
    candidates = {
        "tag": tag,
        "queueId": queue_id,
        "states": ",".join(states) if states else None,
        "size": str(size) if size is not None else None,
        "nextToken": next_token,
        "orderByTime": order_by_time,
        "startCreationTime": _ci_time(start_creation_time),
        "endCreationTime": _ci_time(end_creation_time),
        "inputObject": input_object,
    }
    return {k: v for k, v in candidates.items() if v is not None}


def _ci_time(moment: datetime | None) -> str | None:
    return moment.strftime(CI_TIME_FORMAT) if moment is not None else None


def _read_capped(response: requests.Response, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=65536):
        size += len(chunk)
        if size > limit:
            raise CIProtocolError(
                f"CI's answer exceeds {limit} bytes", ci_status=response.status_code
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _outcome(exc: CIError) -> str:
    if isinstance(exc, CITimeoutError):
        return "timeout"
    if isinstance(exc, CIUnavailableError):
        return "unavailable"
    if isinstance(exc, CIRejectedError):
        return "rejected"
    return "error"


def _is_connection_failure(exc: CIError) -> bool:
    """Refused or reset before any answer: the request did not get through whole, so a
    GET may be sent again. (A 5xx is an answer: not retried here.)"""
    return isinstance(exc, CIUnavailableError) and exc.ci_status is None
