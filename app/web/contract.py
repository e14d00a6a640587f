"""The published contract: ``GET /openapi.json``, ``GET /asyncapi.json``, ``GET /docs`` (Swagger
UI, served from the package: no CDN), and the event catalogue ``GET /v1/event-types[/<type>]``.
The documents themselves are :mod:`app.contract`'s."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from flask import Blueprint, Response, jsonify
from flask.typing import ResponseReturnValue

from app import contract
from app.errors import NotFoundError
from app.web import require_api_key

bp = Blueprint("contract", __name__)

VIEWER = Path(contract.__file__).parent / "viewer"
#: the viewer's files a browser may fetch (nothing else under the folder is served)
ASSETS = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "init.js"})
#: the page loads only what this server serves; Swagger UI styles some elements inline
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self' data:"
)


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    return jsonify(contract.openapi_document())


@bp.get("/asyncapi.json")
def asyncapi() -> ResponseReturnValue:
    return jsonify(contract.asyncapi())


_MEDIA_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


@cache
def _viewer_file(name: str) -> bytes:
    return (VIEWER / name).read_bytes()


def _viewer_response(name: str, max_age: int) -> Response:
    response = Response(_viewer_file(name), mimetype=_MEDIA_TYPES[Path(name).suffix])
    response.headers["Cache-Control"] = f"public, max-age={max_age}"
    return response


@bp.get("/docs")
def docs() -> ResponseReturnValue:
    response = _viewer_response("index.html", 0)
    response.headers["Content-Security-Policy"] = _CSP
    return response


@bp.get("/docs/assets/<name>")
def docs_asset(name: str) -> ResponseReturnValue:
    if name not in ASSETS:
        raise NotFoundError(f"no asset {name!r}")
    return _viewer_response(name, 3600)


@bp.get("/v1/event-types")
@require_api_key
def event_types() -> ResponseReturnValue:
    return jsonify({"event_types": [t.view() for t in contract.EVENT_TYPES.values()]})


@bp.get("/v1/event-types/<event_type>")
@require_api_key
def get_event_type(event_type: str) -> ResponseReturnValue:
    found = contract.EVENT_TYPES.get(event_type)
    if found is None:
        raise NotFoundError(f"no event type {event_type!r}; GET /v1/event-types lists them")
    return jsonify(found.view())
