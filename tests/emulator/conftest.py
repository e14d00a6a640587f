"""Fixtures of the emulator tests: the session's emulator process and callback receiver."""

from __future__ import annotations

import pytest

from tests.emulator import EmulatorProcess, Receiver, shared_emulator, shared_receiver


@pytest.fixture
def emulator(request: pytest.FixtureRequest) -> EmulatorProcess:
    """The session's emulator, its faults reset."""
    process = shared_emulator(request.config)
    process.set_faults()
    return process


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Receiver:
    return shared_receiver(request.config)
