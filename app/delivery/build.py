"""Wiring: the deliverer and the senders ``cirelay worker`` runs, configured from the
settings."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sqlalchemy.engine import Engine

from app.config import Settings
from app.delivery.deliverer import Deliverer
from app.delivery.policy import Policy
from app.delivery.sender import Sender
from app.delivery.transports import Transports, build_transports
from app.metrics import Metrics


def build_deliverer(
    settings: Settings, engine: Engine, metrics: Metrics, clock: Callable[[], datetime],
    transports: Transports,
) -> Deliverer:  # fmt: skip
    """The deliverer ``cirelay worker`` runs, configured from the settings, sending through
    ``transports`` (:func:`build_senders`: the worker owns them, and closes them)."""
    policy = Policy.from_settings(settings)
    return Deliverer(
        engine, policy, transports, metrics, clock=clock, concurrency=settings.delivery_concurrency,
        per_subscription=settings.delivery_per_subscription or None,
        recovery_rate=settings.delivery_recovery_rate,
    )  # fmt: skip


def build_senders(settings: Settings) -> Transports:
    """The HTTP sender and the broker senders, configured from the settings."""
    timeout = Policy.from_settings(settings).timeout
    http = Sender(
        allowed_networks=settings.delivery_allowed_networks,
        timeout=timeout,
        pool_size=settings.delivery_concurrency,
    )
    return build_transports(
        http, allowed_networks=settings.delivery_allowed_networks, timeout=timeout,
        logins=settings.broker_logins,
    )  # fmt: skip
