"""The HTTP layer: the only package that imports Flask. One blueprint per module."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from app import Services, store
from app.errors import ServiceError, UnauthorizedError
from app.web import errors

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def services() -> Services:
    return cast(Services, current_app.extensions["cirelay"])


def require_api_key(view: F) -> F:
    """Bearer authentication against ``CIRELAY_API_KEYS``, compared in constant time."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        keys = services().settings.api_keys
        ok = False
        for key in keys:
            ok |= hmac.compare_digest(given.strip().encode(), key.encode())
        if scheme.lower() != "bearer" or not ok:
            raise UnauthorizedError("a valid bearer token is required")
        return view(*args, **kwargs)

    return cast(F, wrapper)


def _render_service_error(exc: ServiceError) -> ResponseReturnValue:
    status, document, headers = errors.service_error(exc)
    return jsonify(document), status, headers


def _render_http_error(exc: HTTPException) -> ResponseReturnValue:
    status, document, headers = errors.http_error(exc)
    return jsonify(document), status, headers


def _render_database_error(exc: SQLAlchemyError) -> ResponseReturnValue:
    """The database is down or unreachable: 503 (CI and clients retry; nothing was
    committed). Any other database error is the service's own fault: 500."""
    unavailable = store.unavailable_error(exc)
    if unavailable is None:
        raise exc
    log.warning("database unavailable: %s", type(exc).__name__)
    return _render_service_error(unavailable)


def init_app(app: Flask) -> None:
    """The blueprints and error handlers. CI's callbacks are served in front of Flask
    (:class:`app.web.callbacks.CallbackLane`) and every request's id is bound around both
    (:class:`app.web.request_ids.RequestIds`): :func:`app.create_app` installs them."""
    from app.web import callbacks, events, health, jobs, subscriptions

    app.register_error_handler(SQLAlchemyError, _render_database_error)
    app.register_error_handler(ServiceError, _render_service_error)
    app.register_error_handler(HTTPException, _render_http_error)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(events.bp)
    app.register_blueprint(subscriptions.bp)
    app.register_blueprint(health.bp)
    callbacks.register_routes(app)
