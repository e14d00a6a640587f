"""Logs: one JSON object per line on stdout (python-json-logger), each carrying the id of the
request it belongs to.

- :func:`configure` sets up the root logger (``cirelay worker``, the CLI); ``text`` gives
  plain lines for a person at a terminal (``cirelay up`` picks it).
- :class:`GunicornLogger` (``logger_class`` in :mod:`app.serving.gunicorn_conf`) does the
  same for gunicorn's own logs and writes the access log as JSON records with the request id,
  the status and the time taken, and the path with callback tokens and secrets cut out.
- :func:`bind_request_id` is called at the start of every request (``app.web``): the id comes
  from the ``X-Request-ID`` header when a proxy set a sane one, otherwise it is made here; it
  goes back in the response's ``X-Request-ID`` and onto every log line of the request.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import sys
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any
from urllib.parse import unquote

from gunicorn import glogging
from pythonjsonlogger.json import JsonFormatter

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
#: the name of the API key the request authenticated with (``CIRELAY_API_KEYS``), if any
API_KEY_NAME: ContextVar[str | None] = ContextVar("api_key_name", default=None)
#: where :func:`app.web.require_api_key` leaves the key's name for the access log
API_KEY_ENVIRON = "cirelay.api_key"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: the callback prefix, however a client spells it (repeated slashes, any case); what follows
#: it may hold a per-job token or the queue secret
_CALLBACK = re.compile(r"/+callbacks/+ci(?:/+|$)", re.IGNORECASE)
#: the one segment after the prefix that is shown: ``queue`` or a job id
_SHOWN_SEGMENT = re.compile(r"queue|job_[0-9A-Za-z]{1,64}")
#: a callback path inside free text (gunicorn's messages about requests it refused)
_CALLBACK_IN_TEXT = re.compile(r"/+callbacks/+ci(?:/+[^\s'\"]*|(?=[\s'\"]|$))", re.IGNORECASE)
FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"


def bind_request_id(given: str | None) -> str:
    """The request's id: ``given`` (a proxy's X-Request-ID) when sane, else a new one."""
    request_id = given if given and _SANE_ID.fullmatch(given) else secrets.token_hex(12)
    REQUEST_ID.set(request_id)
    API_KEY_NAME.set(None)  # a new request: no key yet
    return request_id


def bind_api_key(name: str) -> None:
    """The request authenticated with the API key called ``name``: on its log lines."""
    API_KEY_NAME.set(name)


def _decoded(text: str) -> str:
    """``text`` percent-decoded until nothing changes (a few rounds at most), as any layer
    in front of the service or inside it might decode it."""
    for _ in range(4):
        decoded = unquote(text, errors="replace")
        if decoded == text:
            break
        text = decoded
    return text


def redact_path(path: str) -> str:
    """``/callbacks/ci/job_1/<token>`` -> ``/callbacks/ci/job_1/***``, and every other
    spelling of a callback path too: decoded first (``queue%2F<secret>`` is the queue URL to
    the service), any number of slashes, anything after the job id or ``queue`` cut out, and
    a first segment that is neither (a token where the job id should be) cut out as well.
    Other paths are returned as they are."""
    decoded = _decoded(path)
    found = _CALLBACK.search(decoded)
    if found is None:
        return path
    segments = [s for s in decoded[found.end() :].split("/") if s]
    shown = "/callbacks/ci/"
    if segments and _SHOWN_SEGMENT.fullmatch(segments[0]):
        shown += segments[0] + ("/***" if segments[1:] else "")
    elif segments:
        shown += "***"
    return decoded[: found.start()] + shown


def redact_text(text: str) -> str:
    """Free text (a refused request line quoted by gunicorn) with every callback path in it
    passed through :func:`redact_path`."""
    decoded = _decoded(text)
    if not _CALLBACK.search(decoded):
        return text
    return _CALLBACK_IN_TEXT.sub(lambda m: redact_path(m.group(0)), decoded)


#: ``(trace_id, span_id)`` of the current span: set by :func:`app.tracing.configure` when
#: tracing is on (``None`` otherwise, so a line costs nothing more)
_trace_ids: Callable[[], tuple[str, str] | None] | None = None


def use_trace_ids(read: Callable[[], tuple[str, str] | None] | None) -> None:
    """Every log line carries ``trace_id`` and ``span_id`` as ``read()`` gives them."""
    global _trace_ids
    _trace_ids = read


class RequestIdFilter(logging.Filter):
    """Every line of a request carries its id, and the name of its API key when it has one,
    and with tracing on the ids of the trace and span it was written in."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _trace_ids is not None and not hasattr(record, "trace_id") and (ids := _trace_ids()):
            record.trace_id, record.span_id = ids
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        if not hasattr(record, "api_key") and (name := API_KEY_NAME.get()) is not None:
            record.api_key = name
        return True


class RedactFilter(logging.Filter):
    """gunicorn's own messages quote what it refused (a request line, a URI): callback
    tokens and the queue secret are cut out of them."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format: leave it to the handler to report
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def formatter(fmt: str) -> logging.Formatter:
    if fmt == "text":
        return logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    return JsonFormatter(
        FIELDS,
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        timestamp=False,
    )


def handler(fmt: str) -> logging.Handler:
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(formatter(fmt))
    out.addFilter(RequestIdFilter())
    return out


def configure(level: str = "info", fmt: str = "json") -> None:
    """The root logger: every line to stdout in ``fmt`` (``json`` or ``text``)."""
    root = logging.getLogger()
    root.handlers = [handler(fmt)]
    root.setLevel(level.upper())


class GunicornLogger(glogging.Logger):  # type: ignore[misc]
    """gunicorn's error and access logs, and the application's, as JSON lines on stdout."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        fmt = os.environ.get("CIRELAY_LOG_FORMAT", "json")  # gunicorn's config runs before ours
        for log in (self.error_log, self.access_log):
            log.handlers = [handler(fmt)]
            log.propagate = False
        self.error_log.handlers[0].addFilter(RedactFilter())
        configure(cfg.loglevel, fmt)

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        try:  # also called for requests gunicorn itself refused: half-parsed, no status code
            headers = {name.lower(): value for name, value in getattr(resp, "headers", ()) or ()}
            status = _status_code(resp)
            path = redact_path(getattr(req, "path", None) or "-")
            method = getattr(req, "method", None) or "-"
            # a timedelta (threaded workers) or gunicorn's ASGI stand-in: both have these two
            duration_ms = request_time.seconds * 1000 + request_time.microseconds / 1000
            api_key = environ.get(API_KEY_ENVIRON)
            self.access_log.info(
                "%s %s %s",
                method,
                path,
                status,
                extra={
                    "request_id": headers.get("x-request-id"),
                    "method": method,
                    "path": path,
                    "status": status,
                    **({"api_key": api_key} if api_key else {}),
                    "bytes": getattr(resp, "sent", None),
                    "duration_ms": round(duration_ms, 3),
                    "remote": environ.get("REMOTE_ADDR"),
                    "user_agent": environ.get("HTTP_USER_AGENT"),
                },
            )
        except Exception:  # a log line must never cost the answer
            self.error_log.exception("access log failed")


def _status_code(resp: Any) -> int | None:
    """The status of gunicorn's response: ``status_code`` once the application answered;
    for a request gunicorn refused itself only the ``status`` line (``"400 Bad Request"``)."""
    code = getattr(resp, "status_code", None)
    if isinstance(code, int):
        return code
    first = str(getattr(resp, "status", "") or "").split(" ", 1)[0]
    return int(first) if first.isascii() and first.isdigit() else None
