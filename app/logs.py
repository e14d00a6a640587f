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
from contextvars import ContextVar
from typing import Any

from gunicorn import glogging
from pythonjsonlogger.json import JsonFormatter

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: callback URLs carry a per-job token or the queue secret as their last segment
_SECRET_PATH = re.compile(r"^(/callbacks/ci/(?:queue|[^/]+))/[^/?]+")
FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"


def bind_request_id(given: str | None) -> str:
    """The request's id: ``given`` (a proxy's X-Request-ID) when sane, else a new one."""
    request_id = given if given and _SANE_ID.fullmatch(given) else secrets.token_hex(12)
    REQUEST_ID.set(request_id)
    return request_id


def redact_path(path: str) -> str:
    """``/callbacks/ci/job_1/<token>`` -> ``/callbacks/ci/job_1/***``."""
    return _SECRET_PATH.sub(r"\1/***", path)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
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
        configure(cfg.loglevel, fmt)

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        try:  # also called for requests gunicorn itself refused: half-parsed, no status code
            headers = {name.lower(): value for name, value in resp.headers or ()}
            status = resp.status_code or int(str(resp.status).split()[0])
            path = redact_path(getattr(req, "path", None) or "")
            method = getattr(req, "method", None) or "-"
            duration_ms = request_time.total_seconds() * 1000
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
                    "bytes": getattr(resp, "sent", None),
                    "duration_ms": round(duration_ms, 3),
                    "remote": environ.get("REMOTE_ADDR"),
                    "user_agent": environ.get("HTTP_USER_AGENT"),
                },
            )
        except Exception:  # a log line must never cost the answer
            self.error_log.exception("access log failed")
