"""Where a notification's CPU goes, in one process (a benchmark, not a test).

Calls cirelay's WSGI app directly (no network, no gunicorn) with distinct jobs' Success
notifications from ``--threads`` threads, and prints the CPU per notification of the request
threads (token check, body, parse, validation, report, metrics, answer) and of the group
committer (``time.thread_time()`` around its ``_commit``: the batch's reads, rules, writes and
commit). ``--no-database`` answers from the report without committing, to see the request side
alone. Pin it to one CPU as a gunicorn worker is (``app/serving/gunicorn_conf.py``):

    taskset -c 1 .venv/bin/python bench/inprocess.py --threads 16
    taskset -c 1 .venv/bin/python bench/inprocess.py --threads 1 --no-database
    taskset -c 1 .venv/bin/python bench/inprocess.py --database-url postgresql://…/scratch

A PostgreSQL database has cirelay's tables dropped first. Add ``py-spy record --gil -- …``
in front to see where the GIL time goes.
"""

from __future__ import annotations

import argparse
import io
import os
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WARMUP = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--database-url")
    parser.add_argument("--no-database", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cirelay-inprocess-") as work:
        run(args, Path(work))


def run(args: argparse.Namespace, work: Path) -> None:
    os.environ.update(
        CIRELAY_DATABASE_URL=args.database_url or f"sqlite:///{work}/cirelay.db",
        CIRELAY_CALLBACK_KEYS=secrets.token_urlsafe(24),
        CIRELAY_API_KEYS=secrets.token_urlsafe(24),
        CIRELAY_QUEUE_CALLBACK_SECRET=secrets.token_urlsafe(24),
    )
    sys.path.insert(0, str(REPO))
    from werkzeug.test import EnvironBuilder

    from app import commits, create_app
    from app.config import Settings
    from app.models import ApplyResult, Outcome

    settings = Settings.from_env()
    requests = prepare(settings, args.jobs, work)
    app = create_app(settings)
    committer_cpu = [0.0]
    commit = commits.GroupCommitter._commit

    def timed_commit(self: Any, batch: Any, **options: Any) -> None:
        started = time.thread_time()
        commit(self, batch, **options)
        committer_cpu[0] += time.thread_time() - started

    commits.GroupCommitter._commit = timed_commit  # type: ignore[method-assign]
    if args.no_database:

        def answer_only(self: Any, item: Any) -> list[ApplyResult]:
            report = item.notification.reports[0]
            job = item.received.job_id
            return [ApplyResult(Outcome.ACCEPTED, job, report.ci_job_id, "Submitted", "Success")]

        commits.GroupCommitter.run = answer_only  # type: ignore[method-assign,assignment]

    environs = []
    for path, body in requests:
        builder = EnvironBuilder(path=path, method="POST", data=body,
                                 content_type="application/xml")  # fmt: skip
        environs.append((builder.get_environ(), body))

    def call(environ: dict[str, Any], body: bytes) -> None:
        environ = dict(environ, **{"wsgi.input": io.BytesIO(body)})
        statuses: list[str] = []

        def start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            statuses.append(status)

        chunks = app(environ, start_response)
        b"".join(chunks)
        assert statuses[0].startswith("200"), statuses

    for environ, body in environs[:WARMUP]:
        call(environ, body)
    committer_cpu[0] = 0.0
    measured = environs[WARMUP:]
    request_cpu = [0.0]
    lock = threading.Lock()

    def worker(k: int) -> None:
        started = time.thread_time()
        for environ, body in measured[k :: args.threads]:
            call(environ, body)
        with lock:
            request_cpu[0] += time.thread_time() - started

    server = PostgresCpu(settings.database_url)
    server_before = server.seconds()
    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    n = len(measured)
    server_cpu = ""
    if server.active:
        server_cpu = f" + PostgreSQL {(server.seconds() - server_before) / n * 1e6:.0f} us"
    print(
        f"{n / elapsed:.0f} notifications/s in one process, {args.threads} threads; CPU per "
        f"notification: request threads {request_cpu[0] / n * 1e6:.0f} us + group committer "
        f"{committer_cpu[0] / n * 1e6:.0f} us{server_cpu}"
    )


class PostgresCpu:
    """The CPU time of every process of a PostgreSQL server on this machine (its backends,
    WAL writer, checkpointer...), read from ``/proc``: what the database spends per
    notification. Inactive for SQLite or a server whose processes cannot be read."""

    def __init__(self, database_url: str) -> None:
        self.pids: list[int] = []
        if database_url.startswith("postgresql"):
            import psycopg

            url = database_url.replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(url) as conn:
                self.pids = [pid for (pid,) in conn.execute("SELECT pid FROM pg_stat_activity")]
            self.pids = [pid for pid in self.pids if os.access(f"/proc/{pid}/stat", os.R_OK)]

    @property
    def active(self) -> bool:
        return bool(self.pids)

    def seconds(self) -> float:
        """CPU seconds used so far by the server's processes (those alive now)."""
        ticks = 0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")


def prepare(settings: Any, count: int, work: Path) -> list[tuple[str, bytes]]:
    """``count`` jobs in state Submitted, as ``bench/ingest.py`` prepares them; for each, its
    callback path and its notification."""
    from bench import ingest

    jobs_file = work / "jobs.txt"
    ingest.prepare_database(settings.database_url, "job", count, settings.callback_keys, jobs_file)
    template = ingest.notification_template()
    requests = []
    for line in jobs_file.read_text().splitlines():
        path, ci_job_id = line.split()
        requests.append((path, template.replace("{{JOBID}}", ci_job_id).encode()))
    return requests


if __name__ == "__main__":
    main()
