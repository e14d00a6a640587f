"""Server-Sent Events under gunicorn (not a test): open streams beside the notifications.

For each setting (``--setting worker_class:workers:streams``, repeatable; default the
event-loop worker with 1,000 streams, and the balanced gthread it replaced with 100):
``cirelay serve`` (SQLite, jobs prepared as in ``bench/ingest.py``), ``streams`` clients on
``GET /v1/events/stream`` (one asyncio thread reads them all), then

1. **latency**: Success notifications for distinct jobs at ``--rate`` for ``--duration``
   seconds (open loop). Per setting: the streams that got through (the rest were refused,
   503), whether every connected stream got every event committed meanwhile (count and last
   id), and the latency from each event's ``time`` (its commit) to its arrival on the
   stream, p50/p95, measured on one stream in :data:`TIMED_EVERY`;
2. **throughput**: ``--rounds`` rounds of wrk's notification load (``bench/notify.lua``) for
   ``--wrk-seconds`` seconds, in turn with no stream, with the streams connected (each
   receiving every event, drained by the client without parsing), and with the streams
   connected but idle (asking for ``com.cirelay.notification.quarantined``, which the load
   never makes); each ratio to the first (the issue's target: within 10 %).

And **the floor** (``bench/stream_floor.py``, unless ``--no-floor``), in the same run: the same
readers on a minimal asyncio server that writes cirelay's committed events to every stream as
one shared chunk every 50 ms, nothing else. Its latency (at ``--rate``, as in 1.) and wrk's
throughput against cirelay while the readers receive from the floor (a fourth load in each
round): what the 1,000 readers and the writes alone leave on this machine.

Run: ``.venv/bin/python bench/stream.py`` (about 2 minutes with the defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import secrets
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import delivery, ingest  # noqa: E402 - after the path is set

DEFAULT_SETTINGS = [
    "app.serving.asgi_worker.Worker:2:1000",
    "app.serving.balanced_worker.BalancedThreadWorker:2:100",
]
_TIME = re.compile(rb'"time":"([^"]+)"')
#: one stream in this many is timed (every event parsed), the others only counted: a client
#: parsing 100,000 messages a second would time itself, not the server
TIMED_EVERY = 20
#: what idle streams ask for: an event type the valid notifications of the load never make
IDLE_TYPE = "com.cirelay.notification.quarantined"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--setting", action="append", help="worker_class:workers:streams[:asyncio|uvloop]"
    )
    parser.add_argument("--rate", type=float, default=100.0, help="notifications/s (latency)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds at --rate")
    parser.add_argument("--rounds", type=int, default=3, help="wrk rounds with and without")
    parser.add_argument("--wrk-seconds", type=int, default=4)
    parser.add_argument("--no-floor", action="store_true", help="skip bench/stream_floor.py")
    args = parser.parse_args(argv)
    rows = []
    for setting in args.setting or DEFAULT_SETTINGS:
        loop = ""  # gunicorn's asgi_loop: "auto" (uvloop when installed) unless named
        if setting.endswith((":asyncio", ":uvloop")):
            setting, loop = setting.rsplit(":", 1)
        worker_class, workers, streams = setting.rsplit(":", 2)
        rows.append(run(worker_class, int(workers), int(streams), args, loop))
    print()
    print(f"{'worker class':<50} {'streams':>9} {'answered':>9} {'errors':>6} {'every event':>11}"
          f" {'stream p50':>10} {'stream p95':>10} {'ok/s without':>12} {'ok/s with':>9}"
          f" {'ratio':>5} {'ok/s idle':>9} {'ratio':>5} {'floor p95':>9} {'ok/s floor':>10}"
          f" {'ratio':>5}")  # fmt: skip
    for r in rows:
        print(f"{r['class']:<50} {r['streams']:>9} {r['answered']:>9} {r['errors']:>6} "
              f"{r['every']:>11} {r['s50']:>10.1f} {r['s95']:>10.1f} {r['without']:>12.0f} "
              f"{r['with']:>9.0f} {r['with'] / max(r['without'], 1e-9):>5.2f} "
              f"{r['idle']:>9.0f} {r['idle'] / max(r['without'], 1e-9):>5.2f} "
              f"{r['f95']:>9.1f} {r['floor']:>10.0f} "
              f"{r['floor'] / max(r['without'], 1e-9):>5.2f}")  # fmt: skip
    return 0


def run(
    worker_class: str, workers: int, streams: int, args: argparse.Namespace, loop: str = ""
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="cirelay-bench-stream-"))
    url = f"sqlite:///{work / 'cirelay.db'}"
    keys = (secrets.token_hex(20),)
    timed = int(args.rate * args.duration)
    per_wrk = 1500 * args.wrk_seconds
    loads = 3 if args.no_floor else 4  # a round's wrk loads
    wrk_runs = 1 + loads * args.rounds
    ingest.prepare_database(url, "job", 2 * timed + per_wrk * wrk_runs, keys, work / "jobs.txt")
    jobs = [line.split() for line in (work / "jobs.txt").read_text().splitlines()]
    options = argparse.Namespace(workers=workers, worker_class=worker_class, threads=16)
    env = ingest.server_env(options, url, keys, secrets.token_hex(16))
    env["CIRELAY_ACCESS_LOG"] = "off"
    if loop:
        env["GUNICORN_CMD_ARGS"] = f"--asgi-loop {loop}"
    body_file = work / "notification.xml"
    body_file.write_text(ingest.notification_template())
    wrk = ingest.ensure_wrk()
    print(f"{worker_class} {workers} workers, {streams} streams {loop}", flush=True)
    with ingest.Server("cirelay", ingest.cirelay_command(options), env, work, 200) as server:

        def load(k: int, label: str) -> ingest.WrkResult:
            return ingest.job_slice_load(
                wrk, server, work / "jobs.txt", 2 * timed + k * per_wrk, per_wrk, body_file, 16,
                args.wrk_seconds, label,
            )  # fmt: skip

        load(0, "warm-up")
        # 1. latency at the rate, every stream timing every event
        with Readers(server.port, env["CIRELAY_API_KEYS"], streams, timing=True) as readers:
            first_seq = readers.after
            sent = delivery.send_at_rate(
                server.url, jobs[:timed], ingest.notification_template(), args.rate, 8
            )
            time.sleep(2.0)
        answered = len(sent.latencies) - sent.errors
        connected = [r for r in readers.streams if r["open"]]
        every = all(r["count"] >= answered and r["last"] >= first_seq + answered
                    for r in connected)  # fmt: skip
        latencies = [v for r in connected for v in r["ms"]]
        floor = contextlib.nullcontext(None) if args.no_floor else ingest.Server(
            "floor", [sys.executable, str(REPO / "bench" / "stream_floor.py"), "--port",
                      "{port}", "--database", str(work / "cirelay.db")], env, work, None,
        )  # fmt: skip
        with floor as floor_server:
            floor_latencies: list[float] = []
            if floor_server is not None:  # the floor's latency, at the same rate
                with Readers(server.port, env["CIRELAY_API_KEYS"], streams, timing=True,
                             stream_port=floor_server.port) as floor_readers:  # fmt: skip
                    delivery.send_at_rate(
                        server.url,
                        jobs[timed : 2 * timed],
                        ingest.notification_template(),
                        args.rate,
                        8,
                    )
                    time.sleep(2.0)
                floor_latencies = [v for r in floor_readers.streams for v in r["ms"]]
            # 2. throughput, with the streams connected (counting, not timing) and without
            with_streams, idle, without, floored = [], [], [], []
            for k in range(args.rounds):
                without.append(load(1 + loads * k, "without"))
                with Readers(server.port, env["CIRELAY_API_KEYS"], streams, timing=False):
                    time.sleep(1.0)
                    with_streams.append(load(2 + loads * k, f"with {streams}"))
                with Readers(server.port, env["CIRELAY_API_KEYS"], streams, timing=False,
                             types=IDLE_TYPE):  # fmt: skip
                    time.sleep(1.0)
                    idle.append(load(3 + loads * k, f"{streams} idle"))
                if floor_server is not None:
                    with Readers(server.port, env["CIRELAY_API_KEYS"], streams, timing=False,
                                 stream_port=floor_server.port):  # fmt: skip
                        time.sleep(1.0)
                        floored.append(load(4 + loads * k, f"{streams} on the floor"))
    nan = float("nan")
    return {
        "class": f"{worker_class} {loop}".strip(),
        "streams": f"{len(connected)}/{streams}",
        "answered": answered,
        "errors": sent.errors,
        "every": "yes" if every and connected else "NO",
        "s50": delivery.percentile(latencies, 50) if latencies else float("nan"),
        "s95": delivery.percentile(latencies, 95) if latencies else float("nan"),
        "without": statistics.median(r.ok_per_second for r in without),
        "with": statistics.median(r.ok_per_second for r in with_streams),
        "idle": statistics.median(r.ok_per_second for r in idle),
        "f95": delivery.percentile(floor_latencies, 95) if floor_latencies else nan,
        "floor": statistics.median(r.ok_per_second for r in floored) if floored else nan,
    }


class Readers:
    """``n`` stream clients on one event loop (a thread). Each stream's record: open, events
    counted, the last id, and (``timing``) milliseconds from each event's ``time`` to its
    arrival. The streams are read from ``stream_port`` (the floor's) when given."""

    def __init__(
        self, port: int, api_key: str, n: int, *, timing: bool, types: str = "",
        stream_port: int | None = None,
    ) -> None:  # fmt: skip
        self.port, self.api_key, self.timing = port, api_key, timing
        self.stream_port = stream_port or port
        self.query = f"&type={types}" if types else ""
        self.after = self.head()  # the streams start at the newest event
        self.streams: list[dict[str, Any]] = [
            {"index": i, "open": False, "count": 0, "last": 0, "ms": []} for i in range(n)
        ]
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Readers:
        self._thread.start()
        self._ready.wait(60)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def head(self) -> int:
        """The newest event's sequence number, as the API reports it."""
        import urllib.request

        after = 0
        while True:
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.port}/v1/events?after={after}&limit=500",
                headers={"Authorization": f"Bearer {self.api_key}"},
            )
            with urllib.request.urlopen(request, timeout=30) as response:
                page = json.load(response)
            if page["next_after"] == after:
                return after
            after = page["next_after"]

    async def _run(self) -> None:
        tasks = [asyncio.create_task(self._read(record)) for record in self.streams]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(r["open"] or r.get("refused")
                                                      for r in self.streams):  # fmt: skip
            await asyncio.sleep(0.1)
        self._ready.set()
        while not self._stop.is_set():
            await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, record: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        timed = self.timing and record["index"] % TIMED_EVERY == 0
        request = (
            f"GET /v1/events/stream?after={self.after}{self.query} HTTP/1.1\r\nHost: bench\r\n"
            f"Authorization: Bearer {self.api_key}\r\n\r\n"
        ).encode()
        try:
            transport, _ = await loop.create_connection(
                lambda: _Reader(record, timed, request, done), "127.0.0.1", self.stream_port
            )
        except OSError:
            return
        try:
            await done
        finally:
            transport.close()


class _Reader(asyncio.Protocol):
    """One stream, read in ``data_received`` (no task woken per read: the readers share the
    machine with the server, so they cost as little as they can)."""

    def __init__(
        self, record: dict[str, Any], timed: bool, request: bytes, done: asyncio.Future[None]
    ) -> None:
        self.record, self.timed, self.request, self.done = record, timed, request, done
        self.head: bytes | None = b""  # ``None`` once the answer's head is read
        self.carry = self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self.request)

    def data_received(self, chunk: bytes) -> None:
        record = self.record
        if self.head is not None:
            self.head += chunk
            at = self.head.find(b"\r\n\r\n")
            if at < 0:
                return
            if not self.head.startswith(b"HTTP/1.1 200"):
                record["refused"] = True
                self._end()
                return
            chunk, self.head = self.head[at + 4 :], None
            record["open"] = True
        arrived = time.time()
        # every stream: count the events and keep the last id, at the least CPU
        data = self.carry + chunk
        self.carry = data[-4:]  # "\nid: " is 5 bytes
        record["count"] += data.count(b"\nid: ")
        at = data.rfind(b"\nid: ")
        end = data.find(b"\n", at + 5)
        if at >= 0 and end > 0:
            with contextlib.suppress(ValueError):
                record["last"] = int(data[at + 5 : end])
        if not self.timed:
            return
        self.buffer += chunk
        *messages, self.buffer = self.buffer.split(b"\n\n")
        for message in messages:
            if found := _TIME.search(message):
                committed = datetime.fromisoformat(found.group(1).decode()).timestamp()
                record["ms"].append((arrived - committed) * 1000)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def _end(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


if __name__ == "__main__":
    raise SystemExit(main())
