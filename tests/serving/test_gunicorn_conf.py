"""The gunicorn configuration module (used by ``cirelay serve`` and the image)."""

from __future__ import annotations

import importlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import app.serving.gunicorn_conf
from tests.e2e_stack import CIRELAY, children_of, free_port, poll, spawn, stack_env, wait_http


@pytest.fixture
def conf(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    for name in ("CIRELAY_WORKERS", "CIRELAY_THREADS", "CIRELAY_MAX_REQUESTS",
                 "CIRELAY_WORKER_CLASS", "CIRELAY_ACCESS_LOG", "CIRELAY_CPU_AFFINITY"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    yield importlib.reload(app.serving.gunicorn_conf)
    importlib.reload(app.serving.gunicorn_conf)


def test_defaults_chosen_by_benchmark_with_recycling_staggered(conf: ModuleType) -> None:
    assert (conf.worker_class, conf.workers, conf.threads) == (
        "app.serving.asgi_worker.Worker",
        2,
        1,  # the application's 16 threads are the event-loop worker's own (CIRELAY_THREADS)
    )
    assert conf.wsgi_app == "app.asgi:application" and conf.keepalive == 5
    assert conf.max_requests == 20000 and conf.max_requests_jitter == 2000
    assert conf.graceful_timeout == 30
    assert conf.logger_class == "app.logs.GunicornLogger" and conf.accesslog == "-"
    assert conf.cpu_affinity == "auto"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, conf: ModuleType) -> None:
    monkeypatch.setenv("CIRELAY_MAX_REQUESTS", "1000")
    monkeypatch.setenv("CIRELAY_ACCESS_LOG", "off")
    monkeypatch.setenv("CIRELAY_THREADS", "4")
    monkeypatch.setenv("CIRELAY_WORKER_CLASS", "gthread")
    reloaded = importlib.reload(app.serving.gunicorn_conf)
    assert (reloaded.max_requests, reloaded.max_requests_jitter) == (1000, 100)
    assert reloaded.accesslog is None and reloaded.threads == 4


def test_the_balanced_workers_former_dotted_path_still_names_it(
    monkeypatch: pytest.MonkeyPatch, conf: ModuleType
) -> None:
    """``CIRELAY_WORKER_CLASS=app.workers.BalancedThreadWorker`` from before the move to
    ``app.serving``; plain gthread or any other class is passed on as given."""
    monkeypatch.setenv("CIRELAY_WORKER_CLASS", "app.workers.BalancedThreadWorker")
    assert importlib.reload(conf).worker_class == "app.serving.balanced_worker.BalancedThreadWorker"
    monkeypatch.setenv("CIRELAY_WORKER_CLASS", "gthread")
    assert importlib.reload(conf).worker_class == "gthread"
    assert conf.wsgi_app == "app.wsgi:application"  # a thread per connection: WSGI as before


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


def test_the_event_loop_worker_keeps_its_own_signal_handling(conf: ModuleType) -> None:
    """gunicorn's asyncio worker handles its signals on its loop: the hook leaves them."""
    from app.serving.asgi_worker import Worker

    worker = Worker.__new__(Worker)
    before = {s: signal.getsignal(s) for s in (signal.SIGQUIT, signal.SIGINT)}
    conf.post_worker_init(worker)
    assert {s: signal.getsignal(s) for s in (signal.SIGQUIT, signal.SIGINT)} == before


# --- CPU affinity -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "workers", "cpus", "pinned"),
    [
        ("auto", 2, 2, True),  # a dedicated 2-core host, the default settings
        ("auto", 4, 4, True),
        ("auto", 2, 16, False),  # a pod on a big node without a cpuset: leave it to the kernel
        ("auto", 3, 2, False),
        ("auto", 1, 1, False),
        ("on", 3, 2, True),
        ("on", 1, 1, True),
        ("off", 2, 2, False),
        ("anything else", 2, 2, False),
    ],
)
def test_when_workers_are_pinned(
    conf: ModuleType, mode: str, workers: int, cpus: int, pinned: bool
) -> None:
    assert conf.pins(mode, workers, cpus) is pinned


def test_a_new_worker_takes_the_least_used_cpu(conf: ModuleType) -> None:
    assert conf.least_used([0, 1], []) == 0
    assert conf.least_used([0, 1], [0]) == 1
    assert conf.least_used([0, 1], [1]) == 0  # the replacement of the worker that had CPU 0
    assert conf.least_used([2, 5], [2, 5, None]) == 2
    assert conf.least_used([0, 1, 2], [0, 1, 2, 0]) == 1


def _affinities(pids: set[int]) -> dict[int, frozenset[int]]:
    return {pid: frozenset(os.sched_getaffinity(pid)) for pid in pids}


def _pinned(pids: set[int]) -> dict[int, frozenset[int]] | None:
    """Each pid's CPUs once each runs on one (a worker pins itself in post_fork, a moment
    after it appears)."""
    found = _affinities(pids)
    return found if all(len(cpus) == 1 for cpus in found.values()) else None


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["on", "off"])
def test_real_workers_pinned_and_a_replacement_takes_the_freed_cpu(
    tmp_path: Path, mode: str
) -> None:
    """``cirelay serve --workers 2`` under gunicorn: with ``CIRELAY_CPU_AFFINITY=on`` each
    worker runs on one CPU, the two on different CPUs when there are two; SIGKILL the worker
    on the *last* CPU and its replacement takes that CPU again (counting spawned workers would
    give it the first CPU, which the survivor holds). ``off`` leaves every worker the
    master's CPUs."""
    cpus = sorted(os.sched_getaffinity(0))
    port = free_port()
    env = dict(stack_env(tmp_path, port, free_port()), CIRELAY_CPU_AFFINITY=mode)
    command = [*CIRELAY, "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    service = spawn("serve", command, env, tmp_path)
    try:
        wait_http("cirelay serve", f"http://127.0.0.1:{port}/healthz", service)
        workers = poll("2 workers", lambda: w if len(w := children_of(service.popen.pid)) == 2
                       else None)  # fmt: skip
        master = frozenset(os.sched_getaffinity(service.popen.pid))
        if mode == "off":
            assert set(_affinities(workers).values()) == {master}
            return
        pinned = poll("2 workers pinned", lambda: _pinned(workers))
        assert {cpu for (cpu,) in pinned.values()} == set(cpus[:2])
        last = max(pinned, key=lambda pid: min(pinned[pid]))
        os.kill(last, signal.SIGKILL)
        survivors = workers - {last}
        replaced = poll(
            "a replacement worker",
            lambda: w if len(w := children_of(service.popen.pid) - workers) == 1 else None,
        )
        (new,) = replaced
        poll("the replacement pinned", lambda: os.sched_getaffinity(new) == pinned[last])
        assert _affinities(survivors) == {pid: pinned[pid] for pid in survivors}
    finally:
        service.stop()
