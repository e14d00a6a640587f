"""The benchmarks' WSGI apps (bare, floors) for gunicorn's event-loop worker, which runs ASGI:
each behind ``a2wsgi`` in ``CIRELAY_THREADS`` threads, as cirelay runs its own
(``app.web.asgi``). gunicorn loads ``bench.asgi_apps:wrap('bench.bare_app:application')``."""

from __future__ import annotations

import importlib
import os
from typing import Any

from a2wsgi import WSGIMiddleware


def wrap(target: str) -> Any:
    module, _, name = target.partition(":")
    application = getattr(importlib.import_module(module), name)
    return WSGIMiddleware(application, workers=int(os.environ.get("CIRELAY_THREADS", "16")))
