"""A live stack for the contract's tests against a real server: the CI emulator, ``cirelay
serve`` (gunicorn, SQLite) and ``cirelay worker`` as processes, and a webhook subscriber on
loopback (which ``CIRELAY_DELIVERY_ALLOWED_NETWORKS`` lets subscriptions name)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e_stack import Stack
from tests.subscriber import Subscriber


@pytest.fixture(scope="session")
def subscriber() -> Iterator[Subscriber]:
    with Subscriber() as hook:
        yield hook


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory, subscriber: Subscriber) -> Iterator[Stack]:
    # streams the fuzzer opened free their slot only at their next keep-alive: room for all
    env = {"CIRELAY_DELIVERY_ALLOWED_NETWORKS": "127.0.0.0/8", "CIRELAY_MAX_STREAMS": "64"}
    with Stack.start(tmp_path_factory.mktemp("contract"), env=env) as stack:
        yield stack
