"""Where a notification's CPU goes, in one process (a benchmark, not a test).

Calls cirelay's WSGI app directly (no network, no gunicorn) with distinct jobs' Success
notifications from ``--threads`` threads, and prints the CPU per notification of the request
threads (token check, body, parse, validation, report, metrics, answer) and of the group
committer (``time.thread_time()`` around its ``_commit``: the batch's reads, rules, writes and
commit). ``--no-database`` answers from the report without committing, to see the request side
alone. Pin it to one CPU as a gunicorn worker is (README, "Speed"):

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
import re
import secrets
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NOTIFICATION = REPO / "tests" / "corpus" / "notification" / "valid" / "success-alphabetical.xml"
WARMUP = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=4000)
    parser.add_argument("--database-url")
    parser.add_argument("--no-database", action="store_true")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="cirelay-inprocess-")
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
    requests = prepare(settings, args.jobs)
    app = create_app(settings)
    committer_cpu = [0.0]
    commit = commits.GroupCommitter._commit

    def timed_commit(self: Any, batch: Any) -> None:
        started = time.thread_time()
        commit(self, batch)
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

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    n = len(measured)
    print(
        f"{n / elapsed:.0f} notifications/s in one process, {args.threads} threads; CPU per "
        f"notification: request threads {request_cpu[0] / n * 1e6:.0f} us + group committer "
        f"{committer_cpu[0] / n * 1e6:.0f} us"
    )


def prepare(settings: Any, count: int) -> list[tuple[str, bytes]]:
    """``count`` jobs in state Submitted; for each, its callback path and notification."""
    import sqlalchemy as sa

    from app import store
    from app.migrations import upgrade
    from app.models import new_id
    from app.tokens import sign_job

    engine = store.create_engine(settings.database_url)
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            store.metadata.drop_all(conn)
            conn.execute(sa.text("DROP TABLE IF EXISTS alembic_version"))
    upgrade(engine)
    template = re.sub(r"<JobId>[^<]*</JobId>", "<JobId>JOBID</JobId>", NOTIFICATION.read_text())
    now = datetime.now(UTC)
    rows, requests = [], []
    for _ in range(count):
        job_id, ci_job_id = new_id("job", now), "j" + secrets.token_hex(16)
        rows.append({"id": job_id, "ci_job_id": ci_job_id, "origin": "api",
                     "state": "Submitted", "tag": "VoiceSeparate", "detail": {},
                     "created_at": now, "updated_at": now})  # fmt: skip
        path = f"/callbacks/ci/{job_id}/{sign_job(job_id, settings.callback_keys)}"
        requests.append((path, template.replace("JOBID", ci_job_id).encode()))
    with engine.begin() as conn:
        conn.execute(sa.insert(store.jobs), rows)
    engine.dispose()
    return requests


if __name__ == "__main__":
    main()
