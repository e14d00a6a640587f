"""Fixtures of the broker tests: the webhook tests' services and policy, the worker's own
senders and deliverer, and a fresh JetStream stream or RabbitMQ exchange per test."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace

import pytest

from app import Services
from app.delivery import Deliverer, Policy, build_senders
from app.delivery.transports import Transports
from tests.brokers.brokers import Exchange, JetStream
from tests.conftest import Clock
from tests.test_delivery import LOOPBACK, hook, policy, services  # noqa: F401 - fixtures
from tests.test_delivery_e2e import stack  # noqa: F401 - the end-to-end tests' fixture


@pytest.fixture
def transports(services: Services) -> Iterator[Transports]:  # noqa: F811
    senders = build_senders(replace(services.settings, delivery_allowed_networks=LOOPBACK,
                                    delivery_timeout_seconds=2.0))  # fmt: skip
    yield senders
    senders.close()


@pytest.fixture
def deliverer(
    services: Services, clock: Clock, policy: Policy, transports: Transports  # noqa: F811
) -> Iterator[Deliverer]:
    d = Deliverer(services.engine, policy, transports, services.metrics, clock=clock,
                  concurrency=4, rng=random.Random(7))  # fmt: skip
    yield d
    d.close()


@pytest.fixture
def stream() -> Iterator[JetStream]:
    with JetStream.make() as made:
        yield made


@pytest.fixture
def exchange() -> Iterator[Exchange]:
    with Exchange.make() as made:
        yield made
