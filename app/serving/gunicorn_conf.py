"""gunicorn configuration used by ``cirelay serve``, ``cirelay up`` and the image.

Every value can be overridden on gunicorn's command line or with the ``CIRELAY_*`` variables
read below. The worker class is gunicorn's asyncio worker with a deadline on the headers
(:mod:`app.serving.asgi_worker`), running :func:`app.create_asgi_app` (``app.asgi``): each
worker multiplexes its connections on an event loop, and runs the application on whole
requests only, in ``CIRELAY_THREADS`` threads (16: a notification waits for its group commit,
an fsync, with the GIL released, so more requests in flight per process make larger batches);
event streams are written by the loop. Slow clients and open streams cost no thread
(``bench/slow_clients.py``, ``bench/stream.py``; figures in ``bench/RESULTS.md``).
``CIRELAY_WORKER_CLASS=gthread`` (or the balanced gthread, :mod:`app.serving.balanced_worker`)
runs the WSGI application (``app.wsgi``) a thread per connection, as before: the baseline of
the benchmarks. 2 workers because that served the most on the 2-core host the defaults are
tuned for; each is pinned to a CPU of its own when there are as many workers as CPUs (see
:func:`pre_fork`).
"""

from __future__ import annotations

import os
import signal
from typing import Any

from gunicorn.workers.gasgi import ASGIWorker
from prometheus_client import multiprocess

from app.serving.balanced_worker import TABLE as connection_table

bind = os.environ.get("CIRELAY_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("CIRELAY_WORKERS", "2"))
#: gunicorn's asyncio worker with a deadline on the headers (app.serving.asgi_worker)
EVENT_LOOP_WORKER = "app.serving.asgi_worker.Worker"
# gthread that spreads client connections evenly over the workers (app.serving.balanced_worker)
BALANCED_WORKER = "app.serving.balanced_worker.BalancedThreadWorker"
#: CIRELAY_WORKER_CLASS values that named the balanced worker before it moved to app.serving
FORMER_NAMES = {"app.workers.BalancedThreadWorker": BALANCED_WORKER}
_worker_class = os.environ.get("CIRELAY_WORKER_CLASS", EVENT_LOOP_WORKER)
worker_class = FORMER_NAMES.get(_worker_class, _worker_class)
#: the application gunicorn loads when its command line names none: ASGI for the event-loop
#: workers, WSGI for the thread-per-connection ones
_event_loop = worker_class in (EVENT_LOOP_WORKER, "asgi")
wsgi_app = "app.asgi:application" if _event_loop else "app.wsgi:application"
#: gthread's threads per worker; the event-loop worker runs the application in as many
#: threads of its own (Settings.threads reads the same CIRELAY_THREADS) and takes none here
threads = 1 if _event_loop else int(os.environ.get("CIRELAY_THREADS", "16"))
# Recycle workers now and then, staggered so they do not all restart at once.
max_requests = int(os.environ.get("CIRELAY_MAX_REQUESTS", "20000"))
max_requests_jitter = max_requests // 10
# In-flight notifications finish before a worker exits on SIGTERM.
graceful_timeout = 30
timeout = 60
# idle seconds a kept-alive connection is held open (and, on the event loop, the deadline for
# the headers of every request after its first)
keepalive = int(os.environ.get("CIRELAY_KEEPALIVE_SECONDS", "5"))
# JSON lines on stdout with the request id (app.logs); CIRELAY_ACCESS_LOG=off turns the
# access log off. Callback paths are logged with their token or secret cut out.
logger_class = "app.logs.GunicornLogger"
accesslog = None if os.environ.get("CIRELAY_ACCESS_LOG", "on") == "off" else "-"
errorlog = "-"
loglevel = os.environ.get("CIRELAY_LOG_LEVEL", "info")
proc_name = "cirelay"
# auto: pin each worker to a CPU of its own when the workers exactly cover the CPUs this
# process may run on (a dedicated host, or a pod with a static cpuset); on: always; off: never
cpu_affinity = os.environ.get("CIRELAY_CPU_AFFINITY", "auto")
# Several instances may run on one host (tests, the load-balancer set-up): no shared
# control socket in $HOME (gunicorn >= 25).
control_socket_disable = True


def post_worker_init(worker: Any) -> None:
    """Quit (SIGQUIT from the master's quick stop, SIGINT from a terminal's Ctrl-C) as
    gracefully as SIGTERM. gthread's own quit handler shuts its thread pool down *inside* the
    signal handler; when the signal lands while the main thread is in
    ``ThreadPoolExecutor.submit`` (holding the pool's lock, i.e. handing over a request), the
    worker deadlocks (CPython issue 121649) and the master waits out ``graceful_timeout``
    before killing it. Seen as ``cirelay up`` hanging on Ctrl-C under load. (The event-loop
    worker handles its signals on its loop: left as it is.)"""
    if isinstance(worker, ASGIWorker):
        return
    signal.signal(signal.SIGQUIT, worker.handle_exit)
    signal.signal(signal.SIGINT, worker.handle_exit)


def pre_fork(server: Any, worker: Any) -> None:
    """Give the next worker its slot in the table of connection counts
    (:mod:`app.serving.balanced_worker`) and choose the CPU it will be pinned to (in the
    master, before the fork).

    A process's threads otherwise wander between the CPUs each time the GIL changes hands,
    and every move lands on a cold cache, which costs cirelay's many short requests far more
    than a bare app's (``bench/RESULTS.md``). The CPU is remembered on the worker object,
    which the master keeps while the worker lives, so a replacement takes the CPU its
    predecessor freed, whichever worker died."""
    others = list(server.WORKERS.values())
    slots = [getattr(w, "cirelay_slot", None) for w in others]
    worker.cirelay_slot = connection_table.free_slot(slots)
    cpus = sorted(os.sched_getaffinity(0))
    if not pins(cpu_affinity, server.num_workers, len(cpus)):
        return
    taken = [getattr(w, "cirelay_cpu", None) for w in others]
    worker.cirelay_cpu = least_used(cpus, taken)


def post_fork(server: Any, worker: Any) -> None:
    """Pin the new worker (in the worker) to the CPU :func:`pre_fork` chose."""
    cpu = getattr(worker, "cirelay_cpu", None)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def pins(mode: str, workers: int, cpus: int) -> bool:
    """Whether workers are pinned: ``CIRELAY_CPU_AFFINITY`` and the counts."""
    if mode == "on":
        return True
    if mode == "auto":
        return 1 < cpus == workers
    return False


def least_used(cpus: list[int], taken: list[int | None]) -> int:
    """The first CPU with the fewest live workers on it."""
    return min(cpus, key=lambda cpu: (taken.count(cpu), cpu))


def child_exit(server: Any, worker: Any) -> None:
    """A dead worker's live gauges must not be summed into /metrics any more, nor its
    connections into the balance of the others."""
    slot = getattr(worker, "cirelay_slot", None)
    if slot is not None:
        connection_table.clear(slot)
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]
