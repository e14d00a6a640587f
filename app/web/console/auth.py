"""Sign in with an API key, sign out."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from flask import redirect, render_template, request, session, url_for
from flask.typing import ResponseReturnValue

from app.web import authenticate, services
from app.web.console import bp, signed_in_key, start_session

log = logging.getLogger(__name__)


def _next_page() -> str:
    """Where to go after signing in: a console path of this site, else the overview."""
    target = request.values.get("next", "")
    parts = urlsplit(target)
    console = url_for("console.overview")
    if parts.scheme or parts.netloc or not parts.path.startswith(console.rstrip("/")):
        return console
    return target


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in() -> ResponseReturnValue:
    if request.method == "GET":
        if signed_in_key() is not None:
            return redirect(_next_page())
        return render_template("console/sign_in.html", next=_next_page(), error=None)
    given = request.form.get("api_key", "")
    key = authenticate(f"Bearer {given}", services().settings.api_credentials)
    if key is None:
        log.warning("console: sign-in refused (no such API key)")
        page = render_template(
            "console/sign_in.html", next=_next_page(), error="That is not an API key here."
        )
        return page, 401
    start_session(key)
    log.info("console: signed in", extra={"api_key": key.name})
    return redirect(_next_page(), code=303)


@bp.post("/sign-out")
def sign_out() -> ResponseReturnValue:
    session.clear()
    return redirect(url_for("console.sign_in"), code=303)
