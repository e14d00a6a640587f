"""Hostile documents (not a test): how long a real ``cirelay serve`` takes to answer the worst
documents one can build within its caps (issue 14 §2; target: 50 ms or less each).

Each document is sent ``--repeat`` times, one request at a time over one keep-alive HTTP
connection, to a ``cirelay serve`` (``--workers`` gunicorn workers, SQLite in a temporary
directory, ``CIRELAY_QUARANTINE_PER_MINUTE`` high enough that every refused notification is
stored, as the first ones of a source are): to the queue callback URL, to a job's own
callback URL, and to ``POST /v1/jobs`` (CI's ``<Request>`` XML and cirelay's JSON). Prints,
per document: its size, elements, the answer's status and number of violations listed, and
the answer time (median, p95, max, ms) measured by the client. Figures, never assertions.

Run: ``.venv/bin/python bench/hostile.py [--repeat 20] [--workers 2] [--only NAME]``.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.ingest import HOST, Server, _venv_bin  # noqa: E402 - after the path is set

CAP = 1 << 20
TARGET_MS = 50.0
SAMPLE = (REPO / "tests/corpus/notification/valid/success-alphabetical.xml").read_bytes()
ATTRIBUTES = b" ".join(b'a%d="1"' % i for i in range(16))


def _detail() -> bytes:
    from lxml import etree

    root = etree.fromstring(SAMPLE, etree.XMLParser(remove_blank_text=True))
    return bytes(etree.tostring(root.find("JobsDetail")))


DETAIL = _detail()
BAD_DETAIL = DETAIL.replace(b"<State>Success", b"<State>Nope")


def _xml(*parts: bytes) -> bytes:
    return b"<Response><EventName>TaskFinish</EventName>" + b"".join(parts) + b"</Response>"


def _fill_json(prefix: bytes, item: bytes, suffix: bytes) -> bytes:
    count = (CAP - len(prefix) - len(suffix)) // (len(item) + 1)
    return prefix + b",".join([item] * count) + suffix


#: name -> (where, content type, body); "queue" and "job" are the two callback URLs
Document = tuple[str, str, Callable[[], bytes]]
XML, JSON = "application/xml", "application/json"
DOCUMENTS: dict[str, Document] = {
    # the issue's: 5,000 JobsDetail x 16 attributes (650 KB), then its /v1/jobs twin
    "issue: 5000 JobsDetail x 16 attributes": (
        "queue", XML, lambda: b"<Response>" + (b"<JobsDetail " + ATTRIBUTES + b"/>") * 4999
        + b"</Response>",
    ),
    "999 empty JobsDetail": ("queue", XML, lambda: _xml(b"<JobsDetail/>" * 998)),
    "499 JobsDetail, an unknown child each": (
        "job", XML, lambda: _xml(b"<JobsDetail><x/></JobsDetail>" * 499),
    ),
    "998 unknown children of the root": ("queue", XML, lambda: _xml(b"<a/>" * 997)),
    "997 unknown children of one JobsDetail": (
        "queue", XML, lambda: _xml(b"<JobsDetail>" + b"<a/>" * 996 + b"</JobsDetail>"),
    ),
    "16 attributes on the root + 998 empty JobsDetail": (
        "queue", XML, lambda: b"<Response " + ATTRIBUTES + b">" + b"<JobsDetail/>" * 999
        + b"</Response>",
    ),
    "12 JobsDetail, every State bad": ("job", XML, lambda: _xml(BAD_DETAIL * 12)),
    "11 valid JobsDetail, the 12th bad": ("queue", XML, lambda: _xml(DETAIL * 11 + BAD_DETAIL)),
    "deep: 30 nested unknown elements": (
        "queue", XML, lambda: _xml(b"<JobsDetail>" + b"<a>" * 29 + b"</a>" * 29 + b"</JobsDetail>"),
    ),
    "1 MB JobId": (
        "queue", XML, lambda: _xml(DETAIL.replace(
            b"j6d67510d4c4f15952ca66bc47f5b1ea3", b"9" * (CAP - len(DETAIL) - 200)
        )),
    ),
    "valid (for reference; a duplicate after the first)": ("queue", XML, lambda: SAMPLE),
    "JSON: 1 MB array of numbers": (
        "queue", JSON, lambda: _fill_json(b'{"JobsDetail":[', b"1", b"]}"),
    ),
    "JSON: 499 empty JobsDetail objects": (
        "queue", JSON, lambda: json.dumps({"JobsDetail": [{"Code": "x"}] * 499}).encode(),
    ),
    "JSON: nested 100,000 deep": ("queue", JSON, lambda: b"[" * 100_000 + b"]" * 100_000),
    # POST /v1/jobs: CI's <Request> XML and cirelay's JSON
    "jobs XML, issue: 4000 Tag x 16 attributes": (
        "jobs", XML, lambda: b"<Request>" + (b"<Tag " + ATTRIBUTES + b"/>") * 4000 + b"</Request>",
    ),
    "jobs XML: 499 Tag": ("jobs", XML, lambda: b"<Request>" + b"<Tag/>" * 499 + b"</Request>"),
    "jobs XML: 16 attributes + 498 unknown": (
        "jobs", XML, lambda: b"<Request " + ATTRIBUTES + b">" + b"<Bogus/>" * 498 + b"</Request>",
    ),
    "jobs XML: 498 Operation": (
        "jobs", XML, lambda: b"<Request><Tag>VoiceSeparate</Tag>" + b"<Operation/>" * 497
        + b"</Request>",
    ),
    "jobs JSON: nested 100,000 deep": ("jobs", JSON, lambda: b'{"a":' * 100_000 + b"1"
                                       + b"}" * 100_000),
    "jobs JSON: 1 MB array": ("jobs", JSON, lambda: _fill_json(b'{"input":[', b"1", b"]}")),
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=20, help="requests per document")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", action="append", help="documents whose name contains this")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cirelay-hostile-") as work:
        return run(args, Path(work))


def run(args: argparse.Namespace, work: Path) -> int:
    from app.tokens import sign_job

    api_key, callback_key, queue_secret = (secrets.token_urlsafe(24) for _ in range(3))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRELAY_")}
    env.update(
        CIRELAY_DATABASE_URL=f"sqlite:///{work / 'cirelay.db'}",
        CIRELAY_API_KEYS=api_key,
        CIRELAY_CALLBACK_KEYS=callback_key,
        CIRELAY_QUEUE_CALLBACK_SECRET=queue_secret,
        CIRELAY_QUARANTINE_PER_MINUTE="1000000",
        PYTHONUNBUFFERED="1",
    )
    paths = {
        "queue": f"/callbacks/ci/queue/{queue_secret}",
        "job": f"/callbacks/ci/job_bench/{sign_job('job_bench', (callback_key,))}",
        "jobs": "/v1/jobs",
    }
    command = [str(_venv_bin() / "cirelay"), "serve", "--host", HOST, "--port", "{port}",
               "--workers", str(args.workers)]  # fmt: skip
    print_machine(args)
    chosen = {
        name: doc for name, doc in DOCUMENTS.items()
        if not args.only or any(part in name for part in args.only)
    }  # fmt: skip
    rows = []
    with Server("cirelay", command, env, work, ready_status=200) as server:
        for name, (where, content_type, build) in chosen.items():
            body = build()
            headers = {"Content-Type": content_type}
            if where == "jobs":
                headers["Authorization"] = f"Bearer {api_key}"
            times, status, listed = measure(server.port, paths[where], body, headers, args.repeat)
            rows.append((name, where, len(body), body.count(b"<"), status, listed, times))
            print(f"  {name}: {statistics.median(times):.1f} ms", flush=True)
    print_table(rows)
    worst = max(max(r[6]) for r in rows)
    worst_median = max(statistics.median(r[6]) for r in rows)
    print(f"\nworst median {worst_median:.1f} ms, worst single answer {worst:.1f} ms "
          f"(target: {TARGET_MS:.0f} ms or less each)")  # fmt: skip
    return 0


def measure(
    port: int, path: str, body: bytes, headers: dict[str, str], repeat: int
) -> tuple[list[float], int, int]:
    """``repeat`` answer times (ms) after one warm-up request, the status and how many
    violations the answer listed."""
    conn = http.client.HTTPConnection(HOST, port, timeout=300)
    times: list[float] = []
    status, listed = 0, 0
    try:
        for i in range(repeat + 1):
            started = time.perf_counter()
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            answer = response.read()
            elapsed = (time.perf_counter() - started) * 1000
            if i:  # the first one warms the worker that took it
                times.append(elapsed)
            status = response.status
            with contextlib.suppress(ValueError):
                listed = len(json.loads(answer).get("details") or [])
    finally:
        conn.close()
    return times, status, listed


def print_machine(args: argparse.Namespace) -> None:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"machine   nproc {os.cpu_count()}, {model}; load average {load}\n"
        f"software  python {sys.version.split()[0]}\n"
        f"server    cirelay serve, {args.workers} workers (app.serving.gunicorn_conf), SQLite\n"
        f"load      one request at a time, {args.repeat} per document after one warm-up",
        flush=True,
    )


def print_table(rows: list[tuple[str, str, int, int, int, int, list[float]]]) -> None:
    print()
    print(f"{'document':<50} {'to':<6} {'bytes':>8} {'tags':>6} {'status':>6} {'listed':>6} "
          f"{'p50 ms':>7} {'p95 ms':>7} {'max ms':>7}")  # fmt: skip
    for name, where, size, tags, status, listed, times in rows:
        ordered = sorted(times)
        p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
        print(f"{name:<50} {where:<6} {size:>8} {tags:>6} {status:>6} {listed:>6} "
              f"{statistics.median(times):>7.1f} {p95:>7.1f} {ordered[-1]:>7.1f}")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
