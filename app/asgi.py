"""The ASGI entry point gunicorn's event-loop worker (the default, see
:mod:`app.serving.gunicorn_conf`) loads in each worker: settings from the environment."""

from __future__ import annotations

from app import create_asgi_app
from app.config import Settings

application = create_asgi_app(Settings.from_env())
