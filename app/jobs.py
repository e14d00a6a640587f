"""Domain rules for jobs: which state changes CI's states allow, and how notifications are
applied to the jobs they name — deduplicated, never moving a job backwards.

Notifications are applied a batch at a time (:func:`apply_batch`): the group committer
(:mod:`app.commits`) hands over whatever arrived meanwhile, and the batch costs a fixed handful
of statements — read the jobs and their notification digests, then write the new jobs,
notifications, job states and events with one ``executemany`` each — instead of four or five
statements per notification. The rules are applied in memory, in arrival order, so two
notifications for one job in one batch see each other exactly as if they had come one after
the other.

A single job changed outside a notification (CI accepted or refused its submission, the
reconciler learnt CI never created it) goes through :func:`change_job`, the one place that
writes such a change and its event and so the one place that keeps the lock order.

Functions take an open transaction (``conn``) and never commit. No Flask, no SQL here:
storage goes through :mod:`app.store`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from app import events, store, workflows
from app.errors import (
    InvalidNotificationError,
    NotFoundError,
    ServiceError,
    WrongEndpointError,
)
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

if TYPE_CHECKING:  # a type only: the domain imports no SQLAlchemy
    from sqlalchemy.engine import Connection


def is_transition_allowed(current: JobState | None, new: JobState) -> bool:
    """Whether a job in ``current`` may move to ``new``.

    Forward only: a terminal state (Success, Failed, Cancel) is final; nothing returns to
    Submitted; Running and Pause may alternate (CI can pause and resume a job); a report of
    the state the job is already in is not a change.
    """
    if current is None or current == JobState.SUBMITTING:
        return True
    if current.is_terminal or new == current:
        return False
    return new != JobState.SUBMITTED


@dataclass(frozen=True)
class JobChange:
    """A single job before and after :func:`change_job` changed it."""

    before: Job
    after: Job

    @property
    def moved(self) -> bool:
        """Whether its state changed (and so an event was recorded)."""
        return self.after.state != self.before.state


def change_job(
    conn: Connection,
    job_id: str,
    decide: Callable[[Job], dict[str, Any] | None],
    now: datetime,
) -> JobChange | None:
    """Change one job in the caller's transaction: the job as locked goes to ``decide``, which
    returns the columns to write (``None``: leave it as it is); when ``state`` is among them
    and differs, the job's changed-state event is recorded with it. ``None`` when there is no
    such job or ``decide`` left it alone.

    The lock order every writer of jobs and events keeps: the events lock first, then the
    job's row (the group committer's batches take them in that order too, so two writers
    never wait for each other the other way round)."""
    store.hold_events_lock(conn)
    job = store.get_job(conn, job_id, for_update=True)
    if job is None:
        return None
    values = decide(job)
    if values is None:
        return None
    store.update_job(conn, job_id, values)
    changed = store.get_job(conn, job_id)
    assert changed is not None
    change = JobChange(job, changed)
    if change.moved:
        events.record_job_changed(conn, changed, job.state, now)
    return change


@dataclass(frozen=True)
class Pending:
    """One notification waiting to be applied."""

    notification: Notification
    received: Received
    now: datetime


def apply_batch(
    conn: Connection, items: Sequence[Pending]
) -> list[list[ApplyResult] | ServiceError]:
    """Apply ``items`` in order. Per item: its results, or the error that rejects it (an
    unknown job, a JobId that is not the URL's job), in which case nothing of it is written.
    Any other exception leaves the transaction to be rolled back by the caller."""
    batch = _Batch(conn)
    batch.load(items)
    runs = workflows.Runs.load(conn, items)  # after the jobs: the lock order
    outcomes: list[list[ApplyResult] | ServiceError] = []
    for item in items:
        if item.notification.workflow is not None:
            run = runs.apply(item)
            outcomes.append([run] if isinstance(run, ApplyResult) else run)
            continue
        try:
            batch.check_endpoint(item)  # before job_for creates any job of a queue notification
            jobs = [batch.job_for(report, item) for report in item.notification.reports]
        except (NotFoundError, InvalidNotificationError, WrongEndpointError) as exc:
            outcomes.append(exc)
            continue
        reports = item.notification.reports
        outcomes.append([batch.apply(j, r, item) for j, r in zip(jobs, reports, strict=True)])
    batch.write(runs)
    return outcomes


@dataclass
class _Batch:
    """The jobs a batch touches, in memory, and the rows it will write."""

    conn: Connection
    jobs: dict[str, Job] = field(default_factory=dict)
    by_ci_id: dict[str, str] = field(default_factory=dict)
    digests: set[tuple[str, str]] = field(default_factory=set)
    #: the jobs as they were read, to write back only what changed
    stored: dict[str, Job] = field(default_factory=dict)
    created: dict[str, Job] = field(default_factory=dict)
    changed: dict[str, Job] = field(default_factory=dict)
    notifications: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def load(self, items: Sequence[Pending]) -> None:
        """Read (and on PostgreSQL lock, in id order) every job the batch names, with the
        digests of the notifications it has."""
        ids = {i.received.job_id for i in items if i.received.job_id}
        ci_ids = {
            r.ci_job_id for i in items if not i.received.job_id for r in i.notification.reports
        }
        for job, digests in store.lock_jobs(self.conn, ids=ids, ci_job_ids=ci_ids):
            self._remember(job)
            self.stored[job.id] = job
            self.digests.update((job.id, digest) for digest in digests)

    def _remember(self, job: Job) -> None:
        self.jobs[job.id] = job
        if job.ci_job_id:
            self.by_ci_id[job.ci_job_id] = job.id

    def job_for(self, report: JobReport, item: Pending) -> Job:
        """The job a report is about. A per-job callback names its job in the URL and must
        carry that job's JobId; a queue callback (or a poll) finds the job by JobId and
        creates it when nobody submitted it through cirelay.

        A job cirelay submitted has its own CallBack URL, which CI notifies instead of the
        queue's: a notification about it that did not come through that URL (the queue's, or
        a replay of what came there) is refused by :meth:`check_endpoint` first, so the queue
        secret, shared by every job of the queue, cannot rewrite a job whose token it does not
        hold."""
        received = item.received
        if received.job_id is not None:
            job = self.jobs.get(received.job_id)
            if job is None:
                raise NotFoundError("no such callback")
            if job.ci_job_id not in (None, report.ci_job_id):
                raise InvalidNotificationError(
                    "notification is for another job",
                    [{"path": "/Response/JobsDetail/JobId",
                      "reason": "JobId does not belong to this callback URL"}],
                )  # fmt: skip
            return job
        known = self.by_ci_id.get(report.ci_job_id)
        if known is None:
            return self._new_job(report, received, item.now)
        return self.jobs[known]

    def check_endpoint(self, item: Pending) -> None:
        """Refuse (:class:`WrongEndpointError`) a notification that names no job in its URL
        but reports on a job cirelay submitted (see :meth:`job_for`)."""
        if item.received.job_id is not None:
            return
        for report in item.notification.reports:
            known = self.by_ci_id.get(report.ci_job_id)
            if known is not None and self.jobs[known].origin == "api":
                raise WrongEndpointError(
                    "notification for a job with its own callback URL",
                    [{"path": "/Response/JobsDetail/JobId",
                      "reason": f"job {report.ci_job_id} reports to its own CallBack URL, "
                                "not to the queue's"}],
                )  # fmt: skip

    def _new_job(self, report: JobReport, received: Received, now: datetime) -> Job:
        job = Job(
            id=new_id("job", now),
            ci_job_id=report.ci_job_id,
            origin="poll" if received.source is Source.POLL else "queue",
            state=JobState.SUBMITTING,
            tag=report.tag,
            queue_id=None, code=None, message=None, user_data=None,
            input={}, output={}, result_files=[], media_info={}, workflow=None, template=None,
            ci_created_at=None, ci_started_at=None, ci_ended_at=None,
            created_at=now, updated_at=now, last_notified_at=None,
        )  # fmt: skip
        self.created[job.id] = job
        self._remember(job)
        return job

    def apply(self, job: Job, report: JobReport, item: Pending) -> ApplyResult:
        job = self.jobs[job.id]  # as earlier items of this batch left it
        now = item.now
        if (job.id, report.digest) in self.digests:
            return ApplyResult(Outcome.DUPLICATE, job.id, report.ci_job_id, job.state, job.state,
                               tag=report.tag)  # fmt: skip
        self.digests.add((job.id, report.digest))
        is_new = job.id in self.created and job.last_notified_at is None
        previous = None if is_new else job.state
        moves = is_new or is_transition_allowed(job.state, report.state)
        outcome = Outcome.ACCEPTED if moves else Outcome.STALE
        self.notifications.append(
            {
                "job_id": job.id,
                "ci_job_id": report.ci_job_id,
                "state": report.state.value,
                "digest": report.digest,
                "source": item.received.source.value,
                "outcome": outcome.value,
                "wire_format": item.notification.wire_format,
                "content_type": item.notification.content_type,
                "headers": item.received.headers,
                "body": item.notification.body,
                "received_at": now,
            }
        )
        if not moves:
            self._change(dataclasses.replace(job, last_notified_at=now))
            return ApplyResult(outcome, job.id, report.ci_job_id, job.state, job.state,
                               tag=report.tag)  # fmt: skip
        moved = _moved(job, report, now)
        self._change(moved)
        self.events.append(events.job_changed_event(moved, previous, now))
        return ApplyResult(
            outcome,
            job.id,
            report.ci_job_id,
            previous,
            moved.state,
            ci_duration_seconds=report.ci_duration_seconds if report.state.is_terminal else None,
            tag=report.tag,
        )

    def _change(self, job: Job) -> None:
        self.jobs[job.id] = job
        if job.ci_job_id:
            self.by_ci_id[job.ci_job_id] = job.id
        if job.id in self.created:
            self.created[job.id] = job
        else:
            self.changed[job.id] = job

    def write(self, runs: workflows.Runs) -> None:
        """Everything the batch decided, its workflow instances too: one statement per table
        (for the jobs, one per set of changed columns: usually one, two when some jobs learn
        their CI JobId), sent together (on PostgreSQL one round trip; see
        :func:`store.pipelined`)."""
        changes = [(j.id, self._changed_columns(j)) for j in self.changed.values()]
        with store.pipelined(self.conn):
            store.insert_jobs(self.conn, [store.job_values(j) for j in self.created.values()])
            store.insert_notifications(self.conn, self.notifications)
            store.update_jobs(self.conn, [(job_id, cols) for job_id, cols in changes if cols])
            store.insert_executions(self.conn, runs.rows)
            store.insert_events(self.conn, self.events + runs.events(self.by_ci_id))

    def _changed_columns(self, job: Job) -> dict[str, Any]:
        """The columns of ``job`` that differ from the row as it was read."""
        before = store.job_values(self.stored[job.id], only=store.NOTIFIED_COLUMNS)
        after = store.job_values(job, only=store.NOTIFIED_COLUMNS)
        return {column: value for column, value in after.items() if value != before[column]}


def _moved(job: Job, report: JobReport, now: datetime) -> Job:
    """``job`` as ``report`` says it now is."""
    return dataclasses.replace(
        job,
        ci_job_id=report.ci_job_id,
        state=report.state,
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
        operation=report.operation,
        ci_created_at=report.created_at,
        ci_started_at=report.started_at,
        ci_ended_at=report.ended_at,
        updated_at=now,
        last_notified_at=now,
    )
