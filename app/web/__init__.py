"""The HTTP layer: the only package that imports Flask. One blueprint per module."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar, cast

from flask import Flask, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from app import Services, logs, store
from app.errors import ServiceError, UnauthorizedError, UnavailableError
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
    if not store.is_unavailable(exc):
        raise exc
    log.warning("database unavailable: %s", type(exc).__name__)
    return _render_service_error(UnavailableError("the database is not reachable; try again"))


def init_app(app: Flask) -> None:
    """The blueprints and hooks; CI's callbacks are served in front of Flask
    (:class:`app.web.callbacks.CallbackLane`, installed by :func:`app.create_app`)."""
    from app.web import events, health, jobs, subscriptions

    @app.before_request
    def _bind_request_id() -> None:
        g.request_id = logs.bind_request_id(request.headers.get("X-Request-ID"))

    @app.after_request
    def _send_request_id(response: Response) -> Response:
        response.headers["X-Request-ID"] = g.get("request_id") or ""
        return response

    @app.teardown_request
    def _unbind_request_id(exc: BaseException | None) -> None:
        logs.REQUEST_ID.set(None)  # the thread serves other requests next

    app.register_error_handler(SQLAlchemyError, _render_database_error)
    app.register_error_handler(ServiceError, _render_service_error)
    app.register_error_handler(HTTPException, _render_http_error)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(events.bp)
    app.register_blueprint(subscriptions.bp)
    app.register_blueprint(health.bp)
