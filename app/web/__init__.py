"""The HTTP layer: the only package that imports Flask. One blueprint per module."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any, TypeVar, cast

from flask import Flask, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from app import Services, logs, store
from app.config import ApiKey, Scope
from app.errors import BadRequestError, ForbiddenError, ServiceError, UnauthorizedError
from app.models import Actor
from app.web import errors

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])


def services() -> Services:
    return cast(Services, current_app.extensions["cirelay"])


#: what a ``read`` key may do
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def authenticate(header: str, keys: Sequence[ApiKey]) -> ApiKey | None:
    """The key an ``Authorization: Bearer <key>`` header names, or ``None``. Every key is
    compared, as bytes, in constant time: the time taken tells neither whether a key matched
    nor which one."""
    scheme, _, given = header.partition(" ")
    given_bytes = given.strip().encode("utf-8", "surrogateescape")
    found = None
    for key in keys:  # no early exit
        if hmac.compare_digest(given_bytes, key.secret):
            found = key
    return found if scheme.lower() == "bearer" else None


def require_api_key(view: F) -> F:
    """Bearer authentication against ``CIRELAY_API_KEYS``: any key may read (GET), only an
    ``admin`` key may change anything (403 ``insufficient_scope`` for a ``read`` key). The
    key's name, never the key, goes on the request's log lines and its access line."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = authenticate(
            request.headers.get("Authorization", ""), services().settings.api_credentials
        )
        if key is None:
            raise UnauthorizedError("a valid bearer token is required")
        g.api_key = key
        request.environ[logs.API_KEY_ENVIRON] = key.name
        logs.bind_api_key(key.name)
        if key.scope is not Scope.ADMIN and request.method not in READ_METHODS:
            raise ForbiddenError(
                f"the API key {key.name!r} may only read (scope {key.scope}); "
                f"{request.method} needs an admin key"
            )
        return view(*args, **kwargs)

    return cast(F, wrapper)


def is_admin() -> bool:
    """Whether the request's API key has the ``admin`` scope."""
    key: ApiKey | None = g.get("api_key")
    return key is not None and key.scope is Scope.ADMIN


def actor() -> Actor:
    """Who is acting through the API: the request's key's name (never the key), for the
    audit log (the console has its own, ``via`` ``console``)."""
    key: ApiKey | None = g.get("api_key")
    return Actor(key.name if key is not None else "-", "api")


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


def _refuse_nul() -> None:
    """A NUL in the path or the query string is no text a database stores (PostgreSQL refuses
    it in any text parameter): a 400 up front, not a 500 from whichever query meets it."""
    args = request.args.items(multi=True)
    if "\x00" in request.path or any("\x00" in k + v for k, v in args):
        raise BadRequestError("the URL contains a NUL character")


def init_app(app: Flask) -> None:
    """The blueprints and error handlers. CI's callbacks are served in front of Flask
    (:class:`app.web.callbacks.CallbackLane`) and every request's id is bound around both
    (:class:`app.web.request_ids.RequestIds`): :func:`app.create_app` installs them."""
    from app.web import (
        admin,
        callbacks,
        console,
        contract,
        events,
        health,
        jobs,
        subscriptions,
        workflows,
    )

    app.before_request(_refuse_nul)
    app.register_error_handler(SQLAlchemyError, _render_database_error)
    app.register_error_handler(ServiceError, _render_service_error)
    app.register_error_handler(HTTPException, _render_http_error)
    app.register_blueprint(jobs.bp)
    app.register_blueprint(events.bp)
    app.register_blueprint(subscriptions.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(workflows.bp)
    app.register_blueprint(admin.quarantine_bp)
    app.register_blueprint(admin.audit_bp)
    console.init_app(app)
    app.register_blueprint(contract.bp)
    callbacks.register_routes(app)
