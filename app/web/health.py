"""Liveness, readiness and the Prometheus exposition."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import SQLAlchemyError

from app import store
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
    """Ready: the database answers and the schemas are loaded."""
    svc = services()
    loaded = all(svc.schemas.lxml_for(name) is not None for name in DOCUMENTS)
    checks = {"database": "ok", "schemas": "ok" if loaded else "missing"}
    try:
        store.ping(svc.engine)
    except SQLAlchemyError:
        checks["database"] = "unreachable"
    ready = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ready" if ready else "not ready", "checks": checks}), (
        200 if ready else 503
    )


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    svc = services()
    body, content_type = exposition(svc.metrics.registry, svc.database_collector)
    return Response(body, content_type=content_type)
