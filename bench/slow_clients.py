"""Ingest beside slow clients (not a test): what 200 clients that send a byte every 2 s cost.

For each worker class (``--worker-class``, repeatable; default the event-loop worker and the
balanced gthread it replaced): ``cirelay serve`` (2 workers, SQLite, jobs prepared as in
``bench/ingest.py``). Then ``--rounds`` rounds; in each, every server in turn gets
``--duration`` seconds of wrk's notification load (``bench/notify.lua``, as
``bench/ingest.py``) alone, then the same with ``--slow`` slow clients connected: half send
their headers a byte every ``--interval`` seconds, half send complete headers and then their
body (a notification to the queue URL) that slowly. A slow client cut off by a deadline
connects again at once, so ``--slow`` stay connected.

Prints per server and phase: notifications answered per second, p50/p99 (median over the
rounds), non-2xx and errors, the slow clients cut off; then, per server, with/without for
throughput and p99 (the issue's targets: p99 ≤ 2x, throughput within 10 %).

Run: ``.venv/bin/python bench/slow_clients.py`` (about 2 minutes with the defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import ingest  # noqa: E402 - after the path is set

EVENT_LOOP = "app.serving.asgi_worker.Worker"
GTHREAD = "app.serving.balanced_worker.BalancedThreadWorker"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker-class", action="append", help="default: event loop, gthread")
    parser.add_argument("--slow", type=int, default=200, help="slow clients (default 200)")
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between bytes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16, help="wrk -c")
    args = parser.parse_args(argv)
    classes = args.worker_class or [EVENT_LOOP, GTHREAD]
    work = Path(tempfile.mkdtemp(prefix="cirelay-bench-slow-"))
    wrk = ingest.ensure_wrk()
    keys = (secrets.token_urlsafe(24),)
    queue_secret = secrets.token_urlsafe(24)
    runs_per_server = 1 + 2 * args.rounds  # warm-up, then alone and beside the slow clients
    per_run = 1500 * args.duration  # jobs per wrk run: above what 2 workers answer
    body_file = work / "notification.xml"
    body_file.write_text(ingest.notification_template())
    results: dict[str, dict[str, list[ingest.WrkResult]]] = {}
    cut: dict[str, dict[str, int]] = {}
    with contextlib.ExitStack() as stack:
        servers = []
        for n, worker_class in enumerate(classes):
            name = f"s{n}"
            url = f"sqlite:///{work / (name + '.db')}"
            jobs_file = work / f"{name}-jobs.txt"
            ingest.prepare_database(url, "job", per_run * runs_per_server, keys, jobs_file)
            options = argparse.Namespace(workers=2, worker_class=worker_class, threads=16)
            env = ingest.server_env(options, url, keys, queue_secret)
            server = stack.enter_context(
                ingest.Server(name, ingest.cirelay_command(options), env, work, 200)
            )
            servers.append((server, worker_class, jobs_file))
            results[worker_class] = {"alone": [], "beside": []}
            cut[worker_class] = {}

        def load(server: ingest.Server, jobs_file: Path, k: int, label: str) -> ingest.WrkResult:
            return ingest.job_slice_load(
                wrk, server, jobs_file, k * per_run, per_run, body_file, args.connections,
                args.duration, label,
            )  # fmt: skip

        for server, _, jobs_file in servers:
            load(server, jobs_file, 0, "warm-up")
        for r in range(args.rounds):
            for server, worker_class, jobs_file in servers:
                results[worker_class]["alone"].append(load(server, jobs_file, 1 + 2 * r, "alone"))
                slow = SlowClients(server.port, args.slow, args.interval, queue_secret)
                with slow:
                    time.sleep(args.interval + 1.0)  # every slow client connected, mid-request
                    beside = load(server, jobs_file, 2 + 2 * r, f"beside {args.slow} slow")
                results[worker_class]["beside"].append(beside)
                for key, value in slow.counts.items():
                    cut[worker_class][key] = cut[worker_class].get(key, 0) + value
    report(results, cut, args)
    return 0


def report(
    results: dict[str, dict[str, list[ingest.WrkResult]]],
    cut: dict[str, dict[str, int]],
    args: argparse.Namespace,
) -> None:
    print()
    print(f"{'worker class':<50} {'phase':<8} {'ok/s':>7} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'non2xx':>6} {'errors':>7}")  # fmt: skip
    for worker_class, phases in results.items():
        for phase, runs in phases.items():
            print(f"{worker_class:<50} {phase:<8} {_median(runs, 'ok_per_second'):>7.0f} "
                  f"{_median(runs, 'p50_ms'):>8.1f} {_median(runs, 'p99_ms'):>8.1f} "
                  f"{sum(r.non2xx for r in runs):>6} "
                  f"{sum(sum(r.errors.values()) for r in runs):>7}")  # fmt: skip
        print(f"{'':<50} slow clients over the runs: {cut[worker_class]}")
    print()
    print(f"with {args.slow} slow clients / alone (same run, alternating rounds): "
          "throughput (target >= 0.90), p99 (target <= 2.0)")  # fmt: skip
    for worker_class, phases in results.items():
        alone, beside = phases["alone"], phases["beside"]
        tput = _median(beside, "ok_per_second") / max(_median(alone, "ok_per_second"), 1e-9)
        p99 = _median(beside, "p99_ms") / max(_median(alone, "p99_ms"), 1e-9)
        if not _median(beside, "ok_per_second"):
            p99 = float("inf")
        print(f"  {worker_class:<50} throughput {tput:5.2f}   p99 {p99:6.2f}")


def _median(runs: list[ingest.WrkResult], attribute: str) -> float:
    return statistics.median(getattr(r, attribute) for r in runs)


class SlowClients:
    """``n`` connections on their own event loop (a thread): half send headers, half a body,
    a byte every ``interval`` seconds; one that is cut off connects again."""

    def __init__(self, port: int, n: int, interval: float, queue_secret: str) -> None:
        self.port, self.n, self.interval = port, n, interval
        self.head = (
            f"POST /callbacks/ci/queue/{queue_secret} HTTP/1.1\r\nHost: cirelay.bench\r\n"
            "Content-Type: application/xml\r\nContent-Length: 4000\r\n\r\n"
        ).encode()
        self.counts = {"connections": 0, "cut off": 0, "answered": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    async def _run(self) -> None:
        tasks = [asyncio.create_task(self._client(i % 2 == 0)) for i in range(self.n)]
        while not self._stop.is_set():
            await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _client(self, in_headers: bool) -> None:
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.5)
                continue
            self.counts["connections"] += 1
            try:
                if not in_headers:
                    writer.write(self.head)
                dribble = self.head if in_headers else b"<" * 4000
                for byte in dribble:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        answer = await asyncio.wait_for(reader.read(64), self.interval)
                        self.counts["answered" if answer else "cut off"] += 1
                        break
            except OSError:
                self.counts["cut off"] += 1
            finally:
                writer.close()


if __name__ == "__main__":
    raise SystemExit(main())
