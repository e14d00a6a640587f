"""The WSGI entry point gunicorn loads in each worker: settings from the environment."""

from __future__ import annotations

from app import create_app
from app.config import Settings

application = create_app(Settings.from_env())
