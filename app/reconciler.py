"""Lost callbacks are recovered: ask CI about jobs that have gone quiet.

CI documents no retry policy for its callbacks, so a notification can be lost (our outage,
a network partition, CI giving up). The reconciler, run by ``cirelay worker``, finds jobs that
are not finished and have been silent past a deadline, asks CI about them in batches of up to
10 ids (``GET /jobs/<ids>``, one request per bucket and region), and applies each answer through
the same path as a notification (:meth:`app.ingest.Receiver.ingest_polled`): same state rules,
same deduplication, same events, recorded with source ``poll``.

A job whose ``POST /jobs`` timed out has no JobId to ask with; CI may or may not have created
it. The reconciler looks for it in CI's job list (same input object, created around the same
time, same UserData and output keys, not bound to another job): exactly one such CI job binds
it; none, after ``ORPHAN_GIVE_UP`` times the silence, means CI never created it and the job is
Failed with ``ci_job_not_found``; several leave it for an operator (logged). A job CI never
answered at all (no ``submit_error``: the process that stored it died before or while calling
CI, and a client's retry with the same Idempotency-Key was answered from the stored job) and
that CI's list does not show is submitted again (:meth:`app.submission.Submitter.resubmit`).
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection, Engine

from app import store
from app.ci.client import CIClient
from app.ci.errors import CIError
from app.ingest import Receiver
from app.jobs import change_job
from app.models import Job, JobReport, JobState
from app.submission import Submitter

log = logging.getLogger(__name__)

#: CI's DescribeMediaJob takes at most 10 ids (spec §4.1).
BATCH = 10
#: how far around a job's creation CI's list is searched for it
ORPHAN_WINDOW = timedelta(minutes=5)
#: an orphan CI has not shown after this many silences was never created
ORPHAN_GIVE_UP = 6


@dataclass(frozen=True)
class ReconcileReport:
    asked: int
    moved: int
    missing: list[str]
    failed_batches: int


def _is_same_job(job: Job, report: JobReport) -> bool:
    """Whether CI's ``report`` can be the job cirelay submitted as ``job``."""
    if (report.user_data or None) != (job.user_data or None):
        return False
    asked = (job.request or {}).get("Operation", {}).get("Output", {})
    for ours, theirs in (("Object", "object"), ("AuObject", "au_object")):
        if asked.get(ours) and not _output_matches(asked[ours], report.output.get(theirs), report):
            return False
    return True


def _output_matches(pattern: str, actual: str | None, report: JobReport) -> bool:
    """``stems/${jobid}/a.${ext}`` against the key CI echoes, resolved or not."""
    if actual is None or actual == pattern:
        return actual == pattern
    regex = re.escape(pattern)
    regex = regex.replace(re.escape("${jobid}"), re.escape(report.ci_job_id))
    regex = regex.replace(re.escape("${ext}"), "[A-Za-z0-9]+")
    return re.fullmatch(regex, actual) is not None


def never_created(conn: Connection, job_id: str, now: datetime) -> None:
    """CI never created a job whose submission timed out: it is Failed."""

    def failed(job: Job) -> dict[str, Any] | None:
        if job.state != JobState.SUBMITTING or job.ci_job_id is not None:
            return None
        return {"state": JobState.FAILED, "code": "ci_job_not_found",
                "message": "the submission timed out and CI has no such job",
                "updated_at": now, "last_polled_at": now}  # fmt: skip

    change_job(conn, job_id, failed, now)


class Reconciler:
    def __init__(
        self,
        engine: Engine,
        receiver: Receiver,
        client_for: Callable[[str, str], CIClient],
        *,
        silence: timedelta,
        max_jobs: int = 500,
        submitter: Submitter | None = None,
    ) -> None:
        self.engine = engine
        self.submitter = submitter
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
        bound = self._bind_orphans(now)
        return ReconcileReport(len(silent) + bound, moved + bound, missing, failed)

    def _bind_orphans(self, now: datetime) -> int:
        with self.engine.connect() as conn:
            orphans = store.list_unbound_jobs(conn, created_before=now - self.silence, limit=BATCH)
        bound = 0
        for job in orphans:
            try:
                bound += self._bind(job, now)
            except (CIError, ValueError) as exc:
                log.warning("reconcile: looking for job %s at CI failed: %s", job.id, exc)
        return bound

    def _bind(self, job: Job, now: datetime) -> int:
        client = self.client_for(job.input.get("bucket") or "", job.input.get("region") or "")
        reports, _ = client.list_jobs(
            input_object=job.input.get("object"),
            start_creation_time=job.created_at - ORPHAN_WINDOW,
            end_creation_time=job.created_at + ORPHAN_WINDOW,
            size=100,
        )
        with self.engine.connect() as conn:
            candidates = [
                r for r in reports
                if _is_same_job(job, r) and store.find_job(conn, r.ci_job_id) is None
            ]  # fmt: skip
        if len(candidates) == 1:
            log.info("reconcile: job %s is CI job %s", job.id, candidates[0].ci_job_id)
            result = self.receiver.ingest_polled(job.id, candidates[0], now)
            return int(result.outcome.value == "accepted")
        if candidates:
            log.warning("reconcile: job %s matches %d CI jobs; left", job.id, len(candidates))
        elif job.submit_error is None and self.submitter is not None:
            # CI never answered its submission at all: the submitting process died before or
            # while calling CI, and CI has no such job. Send it now.
            log.info("reconcile: job %s never reached CI; submitting it", job.id)
            return int(self.submitter.resubmit(job.id, now) is not None)
        elif now - job.created_at > self.silence * ORPHAN_GIVE_UP:
            with store.transaction(self.engine) as conn:
                never_created(conn, job.id, now)
            return 1
        with store.transaction(self.engine) as conn:
            store.mark_polled(conn, [job.id], now)
        return 0

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
