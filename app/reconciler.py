"""Lost callbacks are recovered: ask CI about jobs that have gone quiet.

CI documents no retry policy for its callbacks, so a notification can be lost (our outage,
a network partition, CI giving up). The reconciler, run by ``cirelay worker``, finds jobs that
are not finished and have been silent past a deadline, asks CI about them in batches of up to
10 ids (``GET /jobs/<ids>``, one request per bucket and region), and applies each answer through
the same path as a notification (:meth:`app.ingest.Receiver.ingest_polled`): same state rules,
same deduplication, same events, recorded with source ``poll``.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine

from app import store
from app.ci.client import CIClient
from app.ci.errors import CIError
from app.ingest import Receiver
from app.models import Job

log = logging.getLogger(__name__)

#: CI's DescribeMediaJob takes at most 10 ids (spec §4.1).
BATCH = 10


@dataclass(frozen=True)
class ReconcileReport:
    asked: int
    moved: int
    missing: list[str]
    failed_batches: int


class Reconciler:
    def __init__(
        self,
        engine: Engine,
        receiver: Receiver,
        client_for: Callable[[str, str], CIClient],
        *,
        silence: timedelta,
        max_jobs: int = 500,
    ) -> None:
        self.engine = engine
        self.receiver = receiver
        self.client_for = client_for
        self.silence = silence
        self.max_jobs = max_jobs

    def run_once(self, now: datetime) -> ReconcileReport:
        with self.engine.connect() as conn:
            silent = store.list_silent_jobs(
                conn, silent_since=now - self.silence, limit=self.max_jobs
            )
        by_host: dict[tuple[str, str], list[Job]] = defaultdict(list)
        for job in silent:
            by_host[job.input.get("bucket") or "", job.input.get("region") or ""].append(job)

        moved, failed, missing = 0, 0, []
        for (bucket, region), group in by_host.items():
            for start in range(0, len(group), BATCH):
                batch = group[start : start + BATCH]
                try:
                    m, gone = self._ask(bucket, region, batch, now)
                except (CIError, ValueError) as exc:  # CI down, or no credentials for it
                    log.warning("reconcile: asking CI failed: %s", exc)
                    failed += 1
                    continue
                moved += m
                missing += gone
        return ReconcileReport(len(silent), moved, missing, failed)

    def _ask(
        self, bucket: str, region: str, batch: list[Job], now: datetime
    ) -> tuple[int, list[str]]:
        by_ci_id = {job.ci_job_id: job for job in batch if job.ci_job_id}
        reports, missing = self.client_for(bucket, region).describe_jobs(list(by_ci_id))
        moved = 0
        for report in reports:
            job = by_ci_id.get(report.ci_job_id)
            if job is None:
                continue
            result = self.receiver.ingest_polled(job.id, report, now)
            moved += result.outcome.value == "accepted"
        with store.transaction(self.engine) as conn:
            store.mark_polled(conn, [job.id for job in batch], now)
        if missing:
            log.warning("reconcile: CI does not know %s", ", ".join(missing))
        return moved, missing
