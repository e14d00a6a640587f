"""The benchmarks' WSGI apps (bare, floors) for gunicorn's event-loop worker, which runs ASGI:
each behind :class:`app.web.asgi.WholeRequests`, as cirelay runs its own (the body read whole,
then the app in ``CIRELAY_THREADS`` threads). gunicorn loads
``bench.asgi_apps:wrap('bench.bare_app:application')``."""

from __future__ import annotations

import importlib
import os
from typing import Any

from app.config import Settings
from app.web.asgi import WholeRequests


def wrap(target: str) -> Any:
    module, _, name = target.partition(":")
    application = getattr(importlib.import_module(module), name)
    return WholeRequests(
        application,
        threads=int(os.environ.get("CIRELAY_THREADS", str(Settings.threads))),
        max_body_bytes=Settings.max_body_bytes,
        body_timeout_seconds=Settings.body_timeout_seconds,
        header_timeout_seconds=Settings.header_timeout_seconds,
    )
