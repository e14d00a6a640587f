"""The operator console: server-rendered pages under ``/console/`` (Jinja2, htmx and Pico CSS
vendored under ``static/``), calling the same store and :mod:`app.operations` functions as
the JSON API.

Access: sign in with an API key (``CIRELAY_API_KEYS``); the session is a signed cookie
(HttpOnly, SameSite=Strict, Secure when the request came over https — through ``ProxyFix``
behind a proxy) holding the key's name and a keyed fingerprint of the key, never the key, so
a key removed from the settings ends its sessions. Sessions end after
``CIRELAY_CONSOLE_SESSION_MINUTES`` without a page opened (htmx's polling does not count)
and at sign-out. Every POST needs a CSRF token (Flask-WTF: a form field or htmx's
``X-CSRFToken`` header) and an ``admin`` key (a ``read`` key sees everything, no action
buttons, and its POSTs get 403). Answers carry a Content-Security-Policy that allows no
inline script or style.

The modules: :mod:`.auth` (sign in and out), :mod:`.pages` (overview, jobs, events, audit),
:mod:`.quarantine`, :mod:`.subscriptions`, :mod:`.charts` (server-drawn SVG).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from datetime import timedelta
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.sessions import SecureCookieSessionInterface
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError, CSRFProtect
from werkzeug.exceptions import HTTPException

from app import logs
from app.config import ApiKey, Scope, Settings
from app.errors import ServiceError
from app.models import Actor
from app.web import services

log = logging.getLogger(__name__)

bp = Blueprint(
    "console", __name__, url_prefix="/console", template_folder="templates",
    static_folder="static", static_url_path="/static",
)  # fmt: skip
csrf = CSRFProtect()

#: no inline script or style anywhere; htmx's requests and the event stream go to 'self'
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
#: a session ends this long after sign-in, however busy
MAX_SESSION = timedelta(hours=12)
#: pages anyone may open without a session
PUBLIC_ENDPOINTS = frozenset({"console.sign_in", "console.static"})


class _SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, Secure exactly when the request came over https."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return request.is_secure


def session_secret(settings: Settings) -> str:
    """What signs sessions and CSRF tokens: ``CIRELAY_CONSOLE_SECRET``, or one derived from
    the first callback key, which every replica shares; a process that has neither (only
    ``cirelay routes`` does) makes one of its own."""
    if settings.console_secret:
        return settings.console_secret
    if settings.callback_keys:
        key = settings.callback_keys[0].encode()
        return hmac.new(key, b"cirelay console sessions", hashlib.sha256).hexdigest()
    return secrets.token_hex(32)


def init_app(app: Flask) -> None:
    wired = app.extensions.get("cirelay")  # none for `cirelay routes`, which serves nothing
    settings: Settings = wired.settings if wired is not None else Settings()
    app.config.update(
        SECRET_KEY=session_secret(settings),
        SESSION_COOKIE_NAME="cirelay_console",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=settings.console_session_minutes),
        WTF_CSRF_CHECK_DEFAULT=False,  # the API's bearer requests need none: console only
        WTF_CSRF_TIME_LIMIT=None,  # as long as the session
    )
    app.session_interface = _SessionInterface()
    csrf.init_app(app)
    from app.web.console import auth, pages, quarantine, subscriptions  # noqa: F401

    app.register_blueprint(bp)


# --- who is signed in ----------------------------------------------------------------------


def fingerprint(key: ApiKey) -> str:
    """A key's fingerprint for the session: keyed with the session secret (the app's, set
    once by :func:`init_app`), so the cookie (signed, not encrypted) tells nothing about the
    key."""
    mac = hmac.new(str(current_app.secret_key).encode(), key.secret, hashlib.sha256)
    return f"{key.scope}:{mac.hexdigest()[:32]}"


def signed_in_key() -> ApiKey | None:
    """The key of the session, if it is still one of ``CIRELAY_API_KEYS`` with the same
    secret and scope, and the session has not timed out."""
    name, mark = session.get("key"), session.get("fingerprint")
    started, seen = session.get("started"), session.get("seen")
    if not (name and mark and isinstance(started, float) and isinstance(seen, float)):
        return None
    now = services().clock().timestamp()
    idle = services().settings.console_session_minutes * 60
    if now - seen > idle or now - started > MAX_SESSION.total_seconds():
        return None
    for key in services().settings.api_credentials:
        if key.name == name and hmac.compare_digest(fingerprint(key), mark):
            return key
    return None


def start_session(key: ApiKey) -> None:
    session.clear()
    session.permanent = True
    now = services().clock().timestamp()
    session.update(key=key.name, fingerprint=fingerprint(key), started=now, seen=now)


def is_admin() -> bool:
    key: ApiKey | None = g.get("console_key")
    return key is not None and key.scope is Scope.ADMIN


def actor() -> Actor:
    key: ApiKey | None = g.get("console_key")
    return Actor(key.name if key else "-", "console")


def is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


@bp.before_request
def _authenticate() -> ResponseReturnValue | None:
    if request.endpoint in PUBLIC_ENDPOINTS:
        if request.method == "POST":
            csrf.protect()
        return None
    key = signed_in_key()
    if key is None:
        session.clear()
        if is_htmx():  # a polling fragment: send the whole page to the sign-in form
            return Response(status=401, headers={"HX-Redirect": url_for("console.sign_in")})
        here = request.script_root + request.full_path.rstrip("?")
        return redirect(url_for("console.sign_in", next=here))
    g.console_key = key
    request.environ[logs.API_KEY_ENVIRON] = key.name
    logs.bind_api_key(key.name)
    if not is_htmx():
        session["seen"] = services().clock().timestamp()
    if request.method not in ("GET", "HEAD"):
        csrf.protect()  # before the scope: a forged request learns nothing
        if key.scope is not Scope.ADMIN:
            return page_error(403, f"the key {key.name!r} may only read (scope {key.scope})")
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


@bp.app_context_processor
def _template_globals() -> dict[str, Any]:
    return {"console_key": g.get("console_key"), "is_admin": is_admin()}


# --- errors as pages ------------------------------------------------------------------------


def page_error(status: int, message: str, details: list[Any] | None = None) -> Response:
    response = Response(
        render_template("console/error.html", status=status, message=message,
                        details=details or []),
        status=status,
    )  # fmt: skip
    return response


@bp.errorhandler(CSRFError)
def _csrf_error(exc: CSRFError) -> ResponseReturnValue:
    log.warning("console: refused a request without a valid CSRF token: %s", exc.description)
    return page_error(400, f"refused: {exc.description}")


@bp.errorhandler(ServiceError)
def _service_error(exc: ServiceError) -> ResponseReturnValue:
    return page_error(exc.status_code, exc.message, exc.details)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> ResponseReturnValue:
    return page_error(exc.code or 500, exc.description or exc.name)
