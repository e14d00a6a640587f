"""Domain rules for jobs: which state changes CI's states allow, and how one notification
is applied to the job it names — deduplicated, never moving a job backwards.

Pure functions over an open transaction (``conn``) and the current time (``now``); the
caller commits. No Flask, no SQL here: storage goes through :mod:`app.store`.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from app import events, store
from app.errors import InvalidNotificationError, NotFoundError
from app.models import (
    ApplyResult,
    Job,
    JobReport,
    JobState,
    Notification,
    Outcome,
    Received,
    Source,
    new_id,
)

#: What cirelay calls a job before CI has acknowledged it (set by submission).
SUBMITTING = "Submitting"


def is_transition_allowed(current: str | None, new: JobState) -> bool:
    """Whether a job in ``current`` may move to ``new``.

    Forward only: a terminal state (Success, Failed, Cancel) is final; nothing returns to
    Submitted; Running and Pause may alternate (CI can pause and resume a job); a report of
    the state the job is already in is not a change.
    """
    if current is None or current == SUBMITTING:
        return True
    state = JobState(current)
    if state.is_terminal or new == state:
        return False
    return new != JobState.SUBMITTED


def apply_notification(
    conn: Any, notification: Notification, received: Received, now: datetime
) -> list[ApplyResult]:
    """Record ``notification`` and move its job(s); one result per ``JobsDetail``."""
    return [
        _apply_report(conn, report, notification, received, now) for report in notification.reports
    ]


def _apply_report(
    conn: Any, report: JobReport, notification: Notification, received: Received, now: datetime
) -> ApplyResult:
    job, is_new = _job_for(conn, report, received, now)
    previous = None if is_new else job.state
    moves = is_new or is_transition_allowed(job.state, report.state)
    outcome = Outcome.ACCEPTED if moves else Outcome.STALE
    # The unique key (job, content digest) makes a repeated notification a no-op; the job row
    # is locked, so two copies arriving at once cannot both get past this line.
    recorded = store.insert_notification(
        conn,
        {
            "job_id": job.id,
            "ci_job_id": report.ci_job_id,
            "state": report.state.value,
            "digest": report.digest,
            "source": received.source.value,
            "outcome": outcome.value,
            "wire_format": notification.wire_format,
            "content_type": notification.content_type,
            "headers": received.headers,
            "body": notification.body,
            "received_at": now,
        },
    )
    if not recorded:
        return ApplyResult(Outcome.DUPLICATE, job.id, report.ci_job_id, job.state, job.state)
    if outcome is Outcome.STALE:
        store.update_job(conn, job.id, {"last_notified_at": now})
        return ApplyResult(outcome, job.id, report.ci_job_id, job.state, job.state)

    moved = _moved(job, report, now)
    store.update_job(conn, job.id, store.job_values(moved))
    events.record_job_changed(conn, moved, previous, now)
    return ApplyResult(
        outcome,
        job.id,
        report.ci_job_id,
        previous,
        moved.state,
        ci_duration_seconds=report.ci_duration_seconds if report.state.is_terminal else None,
    )


def _job_for(conn: Any, report: JobReport, received: Received, now: datetime) -> tuple[Job, bool]:
    """The job a report is about, locked for the rest of the transaction, and whether it was
    created just now.

    A per-job callback names its job in the URL and must carry that job's JobId. A queue
    callback (or a poll) finds the job by JobId and creates it when nobody submitted it
    through cirelay.
    """
    if received.job_id is not None:
        job = store.get_job(conn, received.job_id, for_update=True)
        if job is None:
            raise NotFoundError("no such callback")
        if job.ci_job_id not in (None, report.ci_job_id):
            raise InvalidNotificationError(
                "notification is for another job",
                [
                    {
                        "path": "/Response/JobsDetail/JobId",
                        "reason": "JobId does not belong to this callback URL",
                    }
                ],
            )
        return job, False
    job = store.find_job(conn, report.ci_job_id, for_update=True)
    if job is not None:
        return job, False
    store.insert_job_if_absent(
        conn,
        {
            "id": new_id("job", now),
            "ci_job_id": report.ci_job_id,
            "origin": "queue" if received.source is not Source.POLL else "poll",
            "state": SUBMITTING,
            "tag": report.tag,
            "detail": {},
            "created_at": now,
            "updated_at": now,
        },
    )
    job = store.find_job(conn, report.ci_job_id, for_update=True)
    assert job is not None
    # Another transaction may have created and moved it between our two statements.
    return job, job.state == SUBMITTING


def _moved(job: Job, report: JobReport, now: datetime) -> Job:
    """``job`` as ``report`` says it now is."""
    return dataclasses.replace(
        job,
        ci_job_id=report.ci_job_id,
        state=report.state.value,
        tag=report.tag,
        queue_id=report.queue_id,
        code=report.code or None,
        message=report.message or None,
        user_data=report.user_data,
        input=report.input,
        output=report.output,
        result_files=report.result_files,
        media_info=report.media_info,
        workflow=report.workflow,
        template=report.template,
        ci_created_at=report.created_at,
        ci_started_at=report.started_at,
        ci_ended_at=report.ended_at,
        updated_at=now,
        last_notified_at=now,
    )
