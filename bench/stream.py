"""Server-Sent Events under gunicorn (not a test): which worker class serves open streams and
notifications together.

For each setting (``--setting worker_class:workers:threads:streams``, repeatable):
``cirelay serve`` with that gunicorn worker class and counts, ``streams`` clients on
``GET /v1/events/stream``, then Success notifications for distinct jobs at ``--rate`` for
``--duration`` seconds (open loop). Prints, per setting: notifications answered (errors,
p50/p95), the streams that got through (the rest were refused: ``CIRELAY_MAX_STREAMS`` per
process, 503), the fewest events a connected stream received, and the latency from the
event's ``time`` to its arrival on the stream (p50/p95).

Run: ``.venv/bin/python bench/stream.py`` (defaults: gthread 2x16 with 0, 8 and 24 streams;
sync 2 workers with 2 streams).
"""

from __future__ import annotations

import argparse
import http.client
import json
import secrets
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

DEFAULT_SETTINGS = ["gthread:2:16:0", "gthread:2:16:8", "gthread:2:16:24", "sync:2:1:2"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", action="append", help="worker_class:workers:threads:streams")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--duration", type=float, default=10.0)
    args = parser.parse_args(argv)
    rows = []
    for setting in args.setting or DEFAULT_SETTINGS:
        worker_class, workers, threads, streams = setting.split(":")
        rows.append(
            run(worker_class, int(workers), int(threads), int(streams), args.rate, args.duration)
        )
    print()
    print(f"{'worker class':<14} {'procs x threads':>15} {'streams':>9} {'answered':>9} "
          f"{'errors':>6} {'p50 ms':>7} {'p95 ms':>7} {'events/stream':>13} "
          f"{'stream p50':>10} {'stream p95':>10}")  # fmt: skip
    for r in rows:
        print(f"{r['class']:<14} {r['procs']:>15} {r['streams']:>9} {r['answered']:>9} "
              f"{r['errors']:>6} {r['p50']:>7.1f} {r['p95']:>7.1f} {r['per_stream']:>13} "
              f"{r['s50']:>10.1f} {r['s95']:>10.1f}")  # fmt: skip
    return 0


def run(
    worker_class: str, workers: int, threads: int, streams: int, rate: float, duration: float
) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="cirelay-bench-stream-"))
    url = f"sqlite:///{work / 'cirelay.db'}"
    keys = (secrets.token_hex(20),)
    total = int(rate * duration)
    ingest.prepare_database(url, "job", total, keys, work / "jobs.txt")
    jobs = [line.split() for line in (work / "jobs.txt").read_text().splitlines()]
    options = argparse.Namespace(workers=workers, worker_class=worker_class, threads=threads)
    env = ingest.server_env(options, url, keys, secrets.token_hex(16))
    print(f"{worker_class} {workers}x{threads}, {streams} streams", flush=True)
    with ingest.Server("cirelay", ingest.cirelay_command(options), env, work, 200) as server:
        arrivals: list[list[float]] = [[] for _ in range(streams)]
        stop = threading.Event()
        readers = [
            threading.Thread(target=read_stream, daemon=True,
                             args=(server.url, env["CIRELAY_API_KEYS"], arrivals[i], stop))
            for i in range(streams)
        ]  # fmt: skip
        for reader in readers:
            reader.start()
        time.sleep(1.0)  # the streams are open
        sent = delivery.send_at_rate(server.url, jobs, ingest.notification_template(), rate, 8)
        time.sleep(1.0)
        stop.set()
    answered_ms = [s * 1000 for _, s in sent.latencies]
    stream_ms = [v for a in arrivals for v in a]
    return {
        "class": worker_class,
        "procs": f"{workers} x {threads}",
        "streams": f"{sum(1 for a in arrivals if a)}/{streams}",
        "answered": len(sent.latencies) - sent.errors,
        "errors": sent.errors,
        "p50": delivery.percentile(answered_ms, 50),
        "p95": delivery.percentile(answered_ms, 95),
        "per_stream": min((len(a) for a in arrivals if a), default=0) if streams else "-",
        "s50": delivery.percentile(stream_ms, 50) if stream_ms else float("nan"),
        "s95": delivery.percentile(stream_ms, 95) if stream_ms else float("nan"),
    }


def read_stream(base: str, api_key: str, out: list[float], stop: threading.Event) -> None:
    """Follow the stream; for each event, milliseconds from its ``time`` to its arrival."""
    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=30)
    try:
        conn.request("GET", "/v1/events/stream", headers={"Authorization": f"Bearer {api_key}"})
        response = conn.getresponse()
        while not stop.is_set():
            line = response.readline()
            if not line:
                return
            if line.startswith(b"data:"):
                event = json.loads(line[5:])
                sent = datetime.fromisoformat(event["time"]).timestamp()
                out.append((time.time() - sent) * 1000)
    except (OSError, http.client.HTTPException):
        return
    finally:
        conn.close()


if __name__ == "__main__":
    raise SystemExit(main())
