"""``cirelay worker``: the background loop. Today it runs the reconciler; event delivery
joins it later. Stops cleanly on SIGTERM/SIGINT between two rounds."""

from __future__ import annotations

import logging
import signal
import threading
from datetime import timedelta
from types import FrameType

from app import Services, ci_clients
from app.reconciler import Reconciler

log = logging.getLogger(__name__)


def build_reconciler(services: Services) -> Reconciler:
    settings = services.settings
    return Reconciler(
        services.engine,
        services.receiver,
        ci_clients(settings, metrics=services.metrics, schemas=services.schemas,
                   clock=services.clock),
        silence=timedelta(seconds=settings.reconcile_after_seconds),
    )  # fmt: skip


def run(services: Services, stop: threading.Event | None = None) -> None:
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    reconciler = build_reconciler(services)
    interval = services.settings.reconcile_interval_seconds
    log.info(
        "worker: reconciling jobs silent for %ss, every %ss",
        services.settings.reconcile_after_seconds,
        interval,
    )
    while not stop.is_set():
        try:
            report = reconciler.run_once(services.clock())
        except Exception:  # a bad round must not end the worker; the next one retries
            log.exception("reconcile round failed")
        else:
            if report.asked:
                log.info(
                    "reconciled: asked %d, moved %d, unknown to CI %d, failed batches %d",
                    report.asked, report.moved, len(report.missing), report.failed_batches,
                )  # fmt: skip
        stop.wait(interval)
