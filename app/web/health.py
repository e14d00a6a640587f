"""Liveness, readiness and the Prometheus exposition."""

from __future__ import annotations

import threading
import weakref
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from app import store, tracing
from app.metrics import exposition
from app.schemas import DOCUMENTS
from app.web import services

bp = Blueprint("health", __name__)

#: /readyz answers within this long whatever the database does (a probe's own timeout is
#: commonly 1 s to a few seconds; the answer must come before it)
READY_TIMEOUT_SECONDS = 1.5


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    """Alive: the process answers. Nothing else is checked, so a slow database does not get
    healthy replicas restarted."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    """Ready: the database answers (within :data:`READY_TIMEOUT_SECONDS`) and the schemas are
    loaded."""
    svc = services()
    loaded = all(svc.schemas.lxml_for(name) is not None for name in DOCUMENTS)
    checks = {"database": _PROBE.check(svc.engine), "schemas": "ok" if loaded else "missing"}
    ready = all(v == "ok" for v in checks.values())
    return jsonify({"status": "ready" if ready else "not ready", "checks": checks}), (
        200 if ready else 503
    )


class _DatabaseProbe:
    """``store.ping`` on a thread of its own, waited for at most
    :data:`READY_TIMEOUT_SECONDS`: the engine bounds each wait, but a checkout, a ping and a
    new connection add up. One ping at a time: probes that come while one runs wait for it,
    so a database that does not answer never piles up threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: weakref.WeakKeyDictionary[Engine, Future[None]] = weakref.WeakKeyDictionary()

    def check(self, engine: Engine) -> str:
        with self._lock:
            running = self._running.get(engine)
            if running is None or running.done():
                running = self._running[engine] = Future()
                threading.Thread(
                    target=self._ping, args=(engine, running), name="readyz", daemon=True
                ).start()
        try:
            running.result(timeout=READY_TIMEOUT_SECONDS)
        except FutureTimeout:
            return "no answer"
        except SQLAlchemyError:
            return "unreachable"
        return "ok"

    @staticmethod
    def _ping(engine: Engine, result: Future[None]) -> None:
        try:
            store.ping(engine)
        except BaseException as exc:  # handed to the waiting request
            result.set_exception(exc)
        else:
            result.set_result(None)


_PROBE = _DatabaseProbe()


@bp.get("/metrics")
def metrics() -> ResponseReturnValue:
    svc = services()
    # OpenMetrics (with exemplars) when the scraper asks for it and tracing is on
    accept = request.headers.get("Accept") if tracing.is_enabled() else None
    body, content_type = exposition(svc.metrics.registry, svc.database_collector, accept)
    return Response(body, content_type=content_type)
