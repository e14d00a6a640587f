"""The gunicorn configuration module (used by ``cirelay serve`` and the image)."""

from __future__ import annotations

import importlib
import signal
from collections.abc import Iterator
from types import ModuleType

import pytest

import app.gunicorn_conf


@pytest.fixture
def conf(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    for name in ("CIRELAY_WORKERS", "CIRELAY_THREADS", "CIRELAY_MAX_REQUESTS",
                 "CIRELAY_WORKER_CLASS", "CIRELAY_ACCESS_LOG"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    yield importlib.reload(app.gunicorn_conf)
    importlib.reload(app.gunicorn_conf)


def test_defaults_chosen_by_benchmark_with_recycling_staggered(conf: ModuleType) -> None:
    assert (conf.worker_class, conf.workers, conf.threads) == ("gthread", 2, 16)
    assert conf.max_requests == 20000 and conf.max_requests_jitter == 2000
    assert conf.graceful_timeout == 30
    assert conf.logger_class == "app.logs.GunicornLogger" and conf.accesslog == "-"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, conf: ModuleType) -> None:
    monkeypatch.setenv("CIRELAY_MAX_REQUESTS", "1000")
    monkeypatch.setenv("CIRELAY_ACCESS_LOG", "off")
    monkeypatch.setenv("CIRELAY_THREADS", "4")
    reloaded = importlib.reload(app.gunicorn_conf)
    assert (reloaded.max_requests, reloaded.max_requests_jitter) == (1000, 100)
    assert reloaded.accesslog is None and reloaded.threads == 4


def test_a_worker_quits_like_it_exits(conf: ModuleType) -> None:
    """SIGQUIT and SIGINT go to the graceful exit handler, not gthread's quit (which can
    deadlock inside its thread pool)."""

    class Worker:
        def handle_exit(self, sig: int, frame: object) -> None:
            pass

    worker = Worker()
    saved = {s: signal.getsignal(s) for s in (signal.SIGQUIT, signal.SIGINT)}
    try:
        conf.post_worker_init(worker)
        assert signal.getsignal(signal.SIGQUIT) == worker.handle_exit
        assert signal.getsignal(signal.SIGINT) == worker.handle_exit
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
