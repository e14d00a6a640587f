"""The baseline of ``bench/ingest.py``: a bare Flask app that reads the body and answers 200.

It accepts POST on the URL shapes of cirelay's callbacks (``/callbacks/ci/<job id>/<token>``
and ``/callbacks/ci/queue/<secret>``) and does nothing else: no parsing, no validation, no
database. ``bench/ingest.py`` runs it under gunicorn with cirelay's own config module
(``app.serving.gunicorn_conf``) and the same settings, so the ratio of the two measures what
cirelay's work costs on top of gunicorn + Flask.
"""

from __future__ import annotations

from flask import Flask, request

application = Flask(__name__)


@application.post("/callbacks/ci/<first>/<second>")
def notification(first: str, second: str) -> tuple[bytes, int]:
    request.get_data()  # the whole body, as cirelay reads it
    return b"", 200
