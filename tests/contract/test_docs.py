"""``GET /docs``: Swagger UI from the package itself (pinned files, no CDN)."""

from __future__ import annotations

import hashlib
import re

from flask.testing import FlaskClient

from app.web.contract import VIEWER


def test_docs_page_loads_only_what_cirelay_serves(client: FlaskClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    html = page.get_data(as_text=True)
    referenced = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert referenced and all(not re.match(r"\w+:|//", ref) for ref in referenced), referenced
    init = client.get("/docs/assets/init.js").get_data(as_text=True)
    assert "validatorUrl: null" in init  # Swagger UI's default calls validator.swagger.io
    for ref in referenced:
        assert client.get(f"/{ref}").status_code == 200, ref


def test_the_vendored_viewer_is_the_pinned_one(client: FlaskClient) -> None:
    pins = dict(reversed(line.split()) for line in (VIEWER / "SHA256SUMS").read_text().splitlines())
    assert set(pins) == {"swagger-ui-bundle.js", "swagger-ui.css"}
    for name, digest in pins.items():
        served = client.get(f"/docs/assets/{name}")
        assert served.status_code == 200
        assert hashlib.sha256(served.get_data()).hexdigest() == digest


def test_nothing_else_under_the_viewer_is_served(client: FlaskClient) -> None:
    for name in ("SHA256SUMS", "README.md", "..%2F__init__.py", "index.html"):
        answer = client.get(f"/docs/assets/{name}")
        assert answer.status_code == 404
        assert answer.get_json()["error"] == "not_found"
