"""Liveness, readiness and the Prometheus exposition."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from app import store, tracing
from app.metrics import exposition
from app.schemas import DOCUMENTS
from app.web import services

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Alive: the process answers. Nothing else is checked, so a slow database does not get
    healthy replicas restarted."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Ready: the database answers (within :data:`app.store.READY_TIMEOUT_SECONDS`) and the
    schemas are loaded."""
    svc = services()
    loaded = all(svc.schemas.lxml_for(name) is not None for name in DOCUMENTS)
    checks = {
        "database": store.check_database(svc.engine),
        "schemas": "ok" if loaded else "missing",
    }
    ready = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ready" if ready else "not ready", "checks": checks}), (
        200 if ready else 503
    )


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    svc = services()
    # OpenMetrics (with exemplars) when the scraper asks for it and tracing is on
    accept = request.headers.get("Accept") if tracing.is_enabled() else None
    body, content_type = exposition(svc.metrics.registry, svc.database_collector, accept)
    return Response(body, content_type=content_type)
