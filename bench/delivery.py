"""Delivery benchmark (not a test): how long from a job's state change to its subscriber's 2xx.

1. a fresh database with ``rate x (warm-up + duration)`` jobs in state Submitted;
2. ``cirelay serve`` and ``cirelay worker`` (the real processes, the service's own gunicorn
   config), and a webhook subscriber in a process of its own (``tests/subscriber.py``, HTTP/1.1
   keep-alive, answers 204) subscribed to every job event;
3. notifications at a fixed rate (open loop: request *i* is due at ``t0 + i / rate``, sent by a
   pool of connections, late ones counted): each is a different job's Success notification,
   so each makes exactly one ``com.cirelay.job.succeeded`` event;
4. for every event the subscriber received: latency = arrival at the subscriber minus the
   event's ``time`` (set in the transaction that records the state change). Prints p50, p95,
   p99 and max, beside the same figures for the notifications themselves and for a baseline:
   the load generator POSTing the same rate straight to the subscriber (the network floor).

Run with the project's venv: ``.venv/bin/python bench/delivery.py`` (``make bench-delivery``).
Exit status 0 when every event arrived exactly once per ``webhook-id``, 1 otherwise. The
latency target (p95 <= 50 ms at 200 events/s) is reported, never asserted.

``--broker nats`` or ``--broker amqp`` subscribes a JetStream stream or a RabbitMQ exchange
(the real brokers on 127.0.0.1:4222 and :5672, a stream / an exchange and queue made for the
run and removed after) instead of the webhook subscriber: latency = when the broker has it
(JetStream: the time the stream stored the message, which it acks right after; RabbitMQ: the
arrival at a consumer of the queue, an upper bound of the publisher confirm) minus the event's
``time``. Target p95 <= 20 ms at 200 events/s. Exit 0 when every event arrived exactly once.
With ``--floor bare`` or ``--floor commit`` (NATS on SQLite), ``bench/broker_floor.py`` relays
the outbox to the stream instead of ``cirelay worker``: the least any relay does here, without
(bare) or with (commit) a durable note of what it is about to publish.

``--faults`` runs seven phases against one service and worker instead (issue 14 §4), a fault
always between two phases without one, since this VM's speed drifts between phases:

1. **alone**: the fast subscriber only, as above;
2. **beside a slow one**: a second subscription whose subscriber drip-feeds its answers (a byte
   every 0.5 s, so each read is quick and only the attempt's deadline ends it);
3. **alone again**, the slow subscription deleted;
4. **beside a down one**: a subscription whose address refuses connections, so its
   deliveries fail at once and wait on their backoff;
5. **alone a third time**, the down subscription deleted. Each fault's p95 is printed against
   the mean of the two phases alone around it; and the control, phase 3 against 1 and 5, says
   how far p95 moves between phases alike: a fault's ratio means something only beyond it;
6. **beside a healthy one**, for reference: a second subscription to a second subscriber that
   answers 204, printed against phase 5. What a slow or down subscriber costs the fast one is
   at most what any second subscription costs (each event is fanned out to it), and a healthy
   one costs more (its deliveries go, on the same 2 cores);
7. **recovery**: the fast subscriber down for ``--outage``
   seconds while notifications go on, then up again on the same port: prints how long the
   backlog of retries took to drain once it answers (the failed deliveries wait on their
   backoff, 5 s, 30 s, 2 min…, unless brought forward).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import queue
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import ingest  # noqa: E402 - after the path is set

TARGET_P95_MS = 50.0
TARGET_BROKER_P95_MS = 20.0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.subscriber:
        if args.drip:
            return run_drip_subscriber()
        return run_subscriber(Path(args.subscriber), args.port)
    signal.signal(signal.SIGTERM, ingest._raise_interrupt)
    work = Path(tempfile.mkdtemp(prefix="cirelay-bench-delivery-"))
    try:
        if args.broker:
            return run_broker(args, work)
        return run_faults(args, work) if args.faults else run(args, work)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="notifications per second")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--connections", type=int, default=16, help="load generator's")
    parser.add_argument(
        "--database-url", help="default: SQLite in a temporary directory; PostgreSQL is emptied"
    )
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers of serve")
    parser.add_argument("--worker-class", default="gthread")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--faults", action="store_true", help="the three phases (see above)")
    parser.add_argument("--broker", choices=["nats", "amqp"], help="publish to a broker instead")
    parser.add_argument(
        "--floor", choices=["bare", "commit"],
        help="--broker nats on SQLite: bench/broker_floor.py relays instead of cirelay worker "
        "(commit: writing down each poll's events durably before publishing them)",
    )  # fmt: skip
    parser.add_argument("--outage", type=float, default=20.0, help="--faults: seconds down")
    parser.add_argument("--subscriber", help=argparse.SUPPRESS)  # internal: run the subscriber
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--drip", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- the subscriber, in a process of its own ------------------------------------------------


def run_subscriber(out: Path, port: int = 0) -> int:
    """Answer 204 to everything; on SIGTERM write one JSON line per request received."""
    from tests.subscriber import Subscriber

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    hook = Subscriber(port)
    print(hook.port, flush=True)
    stop.wait()
    hook.stop()
    with out.open("w") as lines:
        for r in hook.received():
            if "webhook-id" not in r.headers:
                continue  # the baseline's requests
            event = r.event()
            lines.write(json.dumps({"id": r.webhook_id, "time": event["time"],
                                    "arrived": r.arrived}) + "\n")  # fmt: skip
    return 0


def run_drip_subscriber() -> int:
    """A subscriber that reads each request, then drip-feeds a 200 answer (a byte every
    0.5 s) on every connection until SIGTERM."""

    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    print(listener.getsockname()[1], flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))

    def drip(conn: socket.socket) -> None:
        with conn:
            try:
                while conn.recv(65536):
                    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"
                    for byte in answer + b"x" * 100000:
                        conn.sendall(bytes([byte]))
                        time.sleep(0.5)
            except OSError:
                return

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=drip, args=(conn,), daemon=True).start()


# --- the run --------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> int:
    url, keys, jobs = prepare(args, work)
    template = ingest.notification_template()

    received_file = work / "received.jsonl"
    subscriber = subprocess.Popen(
        [sys.executable, __file__, "--subscriber", str(received_file)],
        stdout=subprocess.PIPE, cwd=REPO, text=True,
    )  # fmt: skip
    assert subscriber.stdout is not None
    hook_port = int(subscriber.stdout.readline())
    env = ingest.server_env(args, url, keys, secrets.token_hex(16))
    env["CIRELAY_DELIVERY_ALLOWED_NETWORKS"] = "127.0.0.0/8"
    worker: subprocess.Popen[bytes] | None = None
    try:
        with ingest.Server("cirelay", ingest.cirelay_command(args), env, work, 200) as server:
            api_key = env["CIRELAY_API_KEYS"]
            create_subscription(server.url, api_key, f"http://127.0.0.1:{hook_port}/hook")
            worker = start_worker(server, work)
            time.sleep(1.0)  # the worker's first round
            print(f"sending {len(jobs)} notifications at {args.rate:g}/s "
                  f"({args.warmup:g} s warm-up + {args.duration:g} s)", flush=True)  # fmt: skip
            with worker_cpu(worker, len(jobs)):
                sent = send_at_rate(server.url, jobs, template, args.rate, args.connections)
                wait_for_backlog(server.url, timeout=60)
            baseline = send_at_rate(
                f"http://127.0.0.1:{hook_port}",
                [["/baseline", f"b{i}"] for i in range(int(args.rate * 5))],
                template, args.rate, args.connections,
            )  # fmt: skip
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
        subscriber.send_signal(signal.SIGTERM)
        subscriber.wait(timeout=30)
    received = [json.loads(line) for line in received_file.read_text().splitlines()]
    return report(args, url, sent, baseline, received)


def prepare(
    args: argparse.Namespace, work: Path, total: int | None = None
) -> tuple[str, tuple[str, ...], list[list[str]]]:
    """The database, with ``total`` jobs (default ``rate x (warm-up + duration)``): its URL,
    the callback keys and the jobs (callback path, CI job id)."""
    total = total or int(args.rate * (args.warmup + args.duration))
    url = args.database_url or f"sqlite:///{work / 'cirelay.db'}"
    keys = (secrets.token_hex(20),)
    jobs_file = work / "jobs.txt"
    print(f"preparing {total} jobs in {ingest._redacted(url)}", flush=True)
    ingest.prepare_database(url, "job", total, keys, jobs_file)
    return url, keys, [line.split() for line in jobs_file.read_text().splitlines()]


# --- broker mode ----------------------------------------------------------------------------


def run_broker(args: argparse.Namespace, work: Path) -> int:
    """The same load, published to a JetStream stream or a RabbitMQ exchange."""
    from tests.brokers.brokers import Exchange, JetStream

    url, keys, jobs = prepare(args, work)
    env = ingest.server_env(args, url, keys, secrets.token_hex(16))
    env["CIRELAY_DELIVERY_ALLOWED_NETWORKS"] = "127.0.0.0/8"
    target_cm = JetStream.make() if args.broker == "nats" else Exchange.make()
    worker: subprocess.Popen[bytes] | None = None
    with target_cm as target:
        consumer = _AmqpConsumer(target) if isinstance(target, Exchange) else None
        try:
            with ingest.Server("cirelay", ingest.cirelay_command(args), env, work, 200) as server:
                if args.floor:
                    worker = start_floor(url, target.url(), work, args.floor == "commit")
                else:
                    create_subscription(server.url, env["CIRELAY_API_KEYS"], target.url())
                    worker = start_worker(server, work)
                time.sleep(1.0)
                print(f"sending {len(jobs)} notifications at {args.rate:g}/s to be published "
                      f"to {args.broker}", flush=True)  # fmt: skip
                with worker_cpu(worker, len(jobs)):
                    sent = send_at_rate(server.url, jobs, ingest.notification_template(),
                                        args.rate, args.connections)  # fmt: skip
                    wait_for_backlog(server.url, timeout=60)
        finally:
            if worker is not None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=30)
        if consumer is not None:
            received = consumer.stop()
        else:
            received = [
                {"id": m.headers["Nats-Msg-Id"], "time": m.event().get_time().isoformat(),
                 "arrived": m.stored}
                for m in target.messages()
            ]  # fmt: skip
    return report(args, url, sent, None, received)


@contextlib.contextmanager
def worker_cpu(worker: subprocess.Popen[bytes], events: int) -> Iterator[None]:
    """Print the CPU the worker (or the floor in its place) used while the block ran, per
    event: steadier from run to run than a latency percentile on this VM, whose speed drifts."""

    def used() -> float:
        fields = Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    before, started = used(), time.monotonic()
    yield
    seconds, wall = used() - before, time.monotonic() - started
    print(f"relay CPU: {seconds:.1f} s in {wall:.0f} s ({seconds / wall:.0%} of a core), "
          f"{seconds / events * 1000:.2f} ms per event", flush=True)


class _AmqpConsumer:
    """A consumer of the exchange's queue on a thread of its own: when each message arrived."""

    def __init__(self, exchange: Any) -> None:
        import asyncio

        self.received: list[dict[str, Any]] = []
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._ready = threading.Event()
        consume = self._consume(exchange.queue)
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(consume,),
                                        daemon=True)  # fmt: skip
        self._thread.start()
        self._ready.wait(10)

    async def _consume(self, queue_name: str) -> None:
        import aio_pika

        conn = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
        channel = await conn.channel()
        queue = await channel.get_queue(queue_name, ensure=False)

        async def on_message(message: Any) -> None:
            arrived = time.time()
            event = json.loads(message.body)
            self.received.append({"id": message.message_id, "time": event["time"],
                                  "arrived": arrived})  # fmt: skip

        await queue.consume(on_message, no_ack=True)
        self._ready.set()
        await self._stop.wait()
        await conn.close()

    def stop(self) -> list[dict[str, Any]]:
        time.sleep(1.0)  # the last ones in flight
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        return self.received


def create_subscription(base: str, api_key: str, hook: str) -> str:
    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
    body = json.dumps({"url": hook, "event_types": ["com.cirelay.job.*"]})
    conn.request("POST", "/v1/subscriptions", body, {
        "Authorization": f"Bearer {api_key}", "Content-Type": "application/json"
    })  # fmt: skip
    response = conn.getresponse()
    if response.status != 201:
        raise ingest.BenchError(f"subscription refused: {response.status} {response.read()!r}")
    ident: str = json.loads(response.read())["id"]
    conn.close()
    return ident


def delete_subscription(base: str, api_key: str, ident: str) -> None:
    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)
    conn.request("DELETE", f"/v1/subscriptions/{ident}", headers={
        "Authorization": f"Bearer {api_key}"})  # fmt: skip
    response = conn.getresponse()
    response.read()
    if response.status >= 300:
        raise ingest.BenchError(f"subscription not deleted: {response.status}")
    conn.close()


class Sent:
    def __init__(self) -> None:
        self.latencies: list[tuple[float, float]] = []  # (due, seconds)
        self.errors = 0
        self.late = 0
        self.started = 0.0
        self.lock = threading.Lock()


def send_at_rate(
    base: str, jobs: list[list[str]], template: str, rate: float, connections: int
) -> Sent:
    """Open loop: request i is due at t0 + i/rate, whatever the answers take."""
    sent = Sent()
    due: queue.SimpleQueue[tuple[float, list[str]] | None] = queue.SimpleQueue()
    host = base.removeprefix("http://")

    def sender() -> None:
        conn = http.client.HTTPConnection(host, timeout=30)
        while (item := due.get()) is not None:
            at, (path, ci_job_id) = item
            delay = at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.005:
                with sent.lock:
                    sent.late += 1
            body = template.replace("{{JOBID}}", ci_job_id).encode()
            started = time.monotonic()
            try:
                conn.request("POST", path, body, {"Content-Type": "application/xml"})
                response = conn.getresponse()
                response.read()
                ok = 200 <= response.status < 300
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(host, timeout=30)
                ok = False
            with sent.lock:
                sent.latencies.append((at, time.monotonic() - started))
                sent.errors += not ok
        conn.close()

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(connections)]
    for t in threads:
        t.start()
    sent.started = time.monotonic() + 0.2
    for i, job in enumerate(jobs):
        due.put((sent.started + i / rate, job))
    for _ in threads:
        due.put(None)
    for t in threads:
        t.join()
    return sent


def wait_for_backlog(base: str, timeout: float, interval: float = 0.2) -> None:
    """Until /metrics says nothing is pending for delivery."""
    host = base.removeprefix("http://")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        conn = http.client.HTTPConnection(host, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        for line in text.splitlines():
            if line.startswith("cirelay_delivery_backlog ") and float(line.split()[1]) == 0:
                return
        time.sleep(interval)
    print("warning: the delivery backlog did not empty in time", file=sys.stderr)


def start_worker(server: ingest.Server, work: Path) -> subprocess.Popen[bytes]:
    """``cirelay worker`` with the service's environment, its output in ``work/worker.log``."""
    with (work / "worker.log").open("wb") as log:
        return subprocess.Popen(
            [str(ingest._venv_bin() / "cirelay"), "worker"],
            env=dict(server.env), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


def start_floor(
    database_url: str, target: str, work: Path, commit: bool
) -> subprocess.Popen[bytes]:
    """``bench/broker_floor.py`` (the least a relay to JetStream can do) in place of the
    worker, reading the same SQLite database."""
    if not database_url.startswith("sqlite:///"):
        raise SystemExit("--floor reads the SQLite database: no --database-url")
    with (work / "worker.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "broker_floor.py"),
             database_url.removeprefix("sqlite:///"), target, *(["--commit"] if commit else [])],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip


# --- faults: a slow subscriber beside a fast one; recovery after an outage -------------------


def _subscriber(out: Path, port: int = 0, drip: bool = False) -> tuple[subprocess.Popen[str], int]:
    command = [sys.executable, __file__, "--subscriber", str(out), "--port", str(port)]
    process = subprocess.Popen(command + (["--drip"] if drip else []), stdout=subprocess.PIPE,
                               cwd=REPO, text=True)  # fmt: skip
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed): connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def run_faults(args: argparse.Namespace, work: Path) -> int:
    per_phase = int(args.rate * (args.warmup + args.duration))
    outage_jobs = int(args.rate * args.outage)
    url, keys, jobs = prepare(args, work, len(PHASES) * per_phase + outage_jobs)
    template = ingest.notification_template()
    fast, port = _subscriber(work / "fast-1.jsonl")
    slow, slow_port = _subscriber(work / "slow.jsonl", drip=True)
    second, second_port = _subscriber(work / "second.jsonl")
    env = ingest.server_env(args, url, keys, secrets.token_hex(16))
    env["CIRELAY_DELIVERY_ALLOWED_NETWORKS"] = "127.0.0.0/8"
    env["CIRELAY_DELIVERY_RETRY_SCHEDULE"] = "5,30,120,600"  # the default's start
    worker: subprocess.Popen[bytes] | None = None
    phases: dict[str, Sent] = {}
    drained = float("nan")
    batches = iter(jobs[n * per_phase : (n + 1) * per_phase] for n in range(len(PHASES)))
    try:
        with ingest.Server("cirelay", ingest.cirelay_command(args), env, work, 200) as server:
            key = env["CIRELAY_API_KEYS"]
            create_subscription(server.url, key, f"http://127.0.0.1:{port}/hook")
            worker = start_worker(server, work)
            time.sleep(1.0)

            def phase(name: str, beside: str | None = None) -> None:
                other = create_subscription(server.url, key, beside) if beside else None
                print(f"phase {len(phases) + 1}: {PHASES[name]}", flush=True)
                phases[name] = send_at_rate(server.url, next(batches), template, args.rate,
                                            args.connections)  # fmt: skip
                if other is not None:
                    delete_subscription(server.url, key, other)
                    wait_for_backlog(server.url, timeout=60)

            healthy = f"http://127.0.0.1:{second_port}/hook"
            phase("alone")
            phase("slow", f"http://127.0.0.1:{slow_port}/hook")
            phase("again")
            phase("down", f"http://127.0.0.1:{_closed_port()}/")
            phase("third")
            phase("healthy", healthy)
            wait_for_backlog(server.url, timeout=60)
            print(f"phase {len(PHASES) + 1}: the fast subscriber down for {args.outage:g} s",
                  flush=True)  # fmt: skip
            _stop(fast)
            send_at_rate(server.url, jobs[len(PHASES) * per_phase :], template, args.rate,
                         args.connections)  # fmt: skip
            time.sleep(2.0)  # the last notifications' first attempts fail too
            fast, _ = _subscriber(work / "fast-2.jsonl", port)
            up = time.monotonic()
            wait_for_backlog(server.url, timeout=600, interval=0.05)
            drained = time.monotonic() - up
    finally:
        if worker is not None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=60)
        _stop(fast)
        _stop(second)
        slow.kill()
    received = [json.loads(line) for name in ("fast-1.jsonl", "fast-2.jsonl")
                for line in (work / name).read_text().splitlines()]  # fmt: skip
    return report_faults(args, url, phases, received, outage_jobs, drained)


PHASES = {"alone": "alone", "slow": "beside a drip-feeding subscriber",
          "again": "alone again (the control)", "down": "beside a subscriber that is down",
          "third": "alone a third time", "healthy": "beside a healthy subscriber"}  # fmt: skip


def report_faults(
    args: argparse.Namespace, url: str, phases: dict[str, Sent], received: list[dict[str, Any]],
    outage_jobs: int, drained: float,
) -> int:  # fmt: skip
    events = {r["id"]: r for r in received}
    to_epoch: Callable[[float], float] = lambda mono: mono - time.monotonic() + time.time()  # noqa: E731
    print()
    print(f"machine: {platform.node()} {os.cpu_count()} CPUs, {platform.python_version()}, "
          f"database {ingest._redacted(url).split(':')[0]}, serve {args.workers} x "
          f"{args.worker_class}/{args.threads}")  # fmt: skip
    print(f"rate {args.rate:g}/s, {args.duration:g} s measured per phase (+{args.warmup:g} s)")
    print(f"{'fast subscriber: state change -> 2xx':36} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'p99 ms':>8} {'max ms':>8}")  # fmt: skip
    p95: dict[str, float] = {}
    for name, sent in phases.items():
        start = to_epoch(sent.started + args.warmup)
        end = start + args.duration
        latencies = [
            (r["arrived"] - datetime.fromisoformat(r["time"]).timestamp()) * 1000
            for r in events.values()
            if start <= datetime.fromisoformat(r["time"]).timestamp() < end
        ]
        print(line(PHASES[name], latencies))
        p95[name] = percentile(latencies, 95)
    # each phase against the mean of the two phases around it (a fault's are both alone)
    around = {"slow": ("alone", "again"), "again": ("alone", "third"), "down": ("again", "third")}
    ratios = ", ".join(
        f"{PHASES[n].split(' (')[0]} {p95[n] / ((p95[a] + p95[b]) / 2):.2f}"
        for n, (a, b) in around.items()
    )
    print(f"p95 against the phases alone around it: {ratios} (alone again: the control, how far "
          "p95 moves by itself)")  # fmt: skip
    print(f"for reference, beside a healthy subscriber: {p95['healthy'] / p95['third']:.2f} of the"
          " phase alone before it")  # fmt: skip
    print(f"recovery: {outage_jobs} notifications during a {args.outage:g} s outage; backlog "
          f"drained {drained:.1f} s after the subscriber was back")  # fmt: skip
    return 0


# --- figures --------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def line(name: str, values_ms: list[float]) -> str:
    figures = " ".join(f"{percentile(values_ms, p):8.1f}" for p in (50, 95, 99))
    return f"  {name:<34} {len(values_ms):>6} {figures} {max(values_ms, default=0):8.1f}"


def report(
    args: argparse.Namespace, url: str, sent: Sent, baseline: Sent | None,
    received: list[dict[str, Any]],
) -> int:  # fmt: skip
    measured_from = sent.started + args.warmup
    to_epoch: Callable[[float], float] = lambda mono: mono - time.monotonic() + time.time()  # noqa: E731
    start_epoch = to_epoch(measured_from)
    ids = [r["id"] for r in received]
    events = {r["id"]: r for r in received}
    latencies = [
        (r["arrived"] - datetime.fromisoformat(r["time"]).timestamp()) * 1000
        for r in events.values()
        if datetime.fromisoformat(r["time"]).timestamp() >= start_epoch
    ]
    ingest_ms = [s * 1000 for at, s in sent.latencies if at >= measured_from]
    base_ms = [s * 1000 for _, s in baseline.latencies] if baseline else []
    accepted = len(sent.latencies) - sent.errors
    duplicates = len(ids) - len(set(ids))
    print()
    print(f"machine: {platform.node()} {os.cpu_count()} CPUs, {platform.python_version()}, "
          f"database {ingest._redacted(url).split(':')[0]}, serve {args.workers} x "
          f"{args.worker_class}/{args.threads}")  # fmt: skip
    print(f"rate {args.rate:g}/s for {args.duration:g} s (+{args.warmup:g} s warm-up); "
          f"{accepted} notifications accepted, {sent.errors} errors, "
          f"{sent.late} sent late")  # fmt: skip
    print(f"{'':36} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    where = {None: "subscriber 2xx", "nats": "stored in JetStream",
             "amqp": "consumer (RabbitMQ)"}[args.broker]  # fmt: skip
    print(line(f"state change -> {where}", latencies))
    print(line("notification answered (ingest)", ingest_ms))
    if baseline:
        print(line("baseline: POST straight to hook", base_ms))
    p95 = percentile(latencies, 95)
    target = TARGET_BROKER_P95_MS if args.broker else TARGET_P95_MS
    verdict = "met" if p95 <= target else "NOT met"
    print(f"target p95 <= {target:g} ms at 200 events/s: {verdict} ({p95:.1f} ms)")
    print(f"events received {len(set(ids))} of {accepted} accepted; duplicates {duplicates}")
    ok = len(set(ids)) == accepted and sent.errors == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
