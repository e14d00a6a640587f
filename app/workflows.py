"""Workflow instances (executions): what a WorkflowFinish notification says, and how it is
recorded — once per RunId, with its event ``com.cirelay.workflow.finished`` in the same
transaction (the group committer's, as job notifications: see :func:`app.jobs.apply_batch`).

A WorkflowFinish (Tencent's page "工作流回调内容"; spec §10) reports one instance of a
workflow: the file it processed, its state (Failed when any task failed) and its tasks, each
naming the job it ran by JobId. The jobs report themselves with their own TaskFinish
notifications; the read API links each task to its job by that JobId.

Functions take an open transaction and never commit. No Flask, no SQL here.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from lxml import etree

from app import events, store
from app.errors import InvalidNotificationError
from app.models import (
    WORKFLOW_TAG,
    ApplyResult,
    JobState,
    Outcome,
    WorkflowExecution,
    WorkflowReport,
    iso_z,
    new_id,
)
from app.notifications import as_list, content_digest, element_to_dict, utc_time

if TYPE_CHECKING:  # a type only: the domain imports no SQLAlchemy
    from sqlalchemy.engine import Connection

#: members of a WorkflowExecution that occur exactly once, and at most once (the XSD cannot
#: say so in XSD 1.0 beside the repeated CosHeaders and Tasks: see workflow-notification.xsd)
_EXACTLY_ONCE = ("WorkflowId", "State", "CreateTime")
_AT_MOST_ONCE = ("BucketId", "Object", "WorkflowName")


def workflow_report(execution: etree._Element) -> WorkflowReport:
    """What a schema-valid ``WorkflowExecution`` says about its instance."""
    problems = [
        {"path": "/Response/WorkflowExecution", "reason": f"{name} must occur exactly once"}
        for name in _EXACTLY_ONCE
        if len(execution.findall(name)) != 1
    ] + [
        {"path": "/Response/WorkflowExecution", "reason": f"{name} may occur at most once"}
        for name in _AT_MOST_ONCE
        if len(execution.findall(name)) > 1
    ]
    if problems:
        raise InvalidNotificationError(
            f"notification violates the schema ({len(problems)} problem(s))", problems
        )
    view: dict[str, Any] = element_to_dict(execution, without_empties=True)
    tasks = []
    for position, task in enumerate(as_list(view.get("Tasks")), start=1):
        task = task if isinstance(task, dict) else {}
        where = f"/Response/WorkflowExecution/Tasks[{position}]"
        tasks.append(
            {
                "type": task.get("Type"),
                "state": task.get("State"),
                "ci_job_id": task.get("JobId"),
                "name": task.get("Name"),
                "template_id": task.get("TemplateId"),
                "template_name": task.get("TemplateName"),
                "ci_created_at": iso_z(utc_time(task.get("CreateTime"), where + "/CreateTime")),
                "ci_ended_at": iso_z(utc_time(task.get("EndTime"), where + "/EndTime")),
            }
        )
    headers = as_list(view.get("CosHeaders"))
    return WorkflowReport(
        run_id=view["RunId"],
        workflow_id=view["WorkflowId"],
        workflow_name=view.get("WorkflowName"),
        bucket=view.get("BucketId"),
        object=view.get("Object"),
        cos_headers={h.get("Key", ""): h.get("Value", "") for h in headers},
        state=view["State"],
        ci_created_at=utc_time(view.get("CreateTime"), "/Response/WorkflowExecution/CreateTime"),
        tasks=tasks,
        digest=content_digest(view),
    )


# --- recording instances -------------------------------------------------------------------


class Runs:
    """The workflow instances a batch reports, in memory, and the rows it will write."""

    def __init__(self, conn: Connection, digests: dict[str, str], known: dict[str, str]) -> None:
        self.conn = conn
        #: RunId -> the digest it was recorded with (before this batch, or by it)
        self.digests = digests
        #: CI JobId -> job id of the tasks' jobs recorded before this batch
        self.known = known
        self.rows: list[dict[str, Any]] = []
        self.finished: list[tuple[WorkflowExecution, datetime]] = []

    @classmethod
    def load(cls, conn: Connection, items: Sequence[Any]) -> Runs:
        """What is recorded already of the instances ``items`` (``jobs.Pending``) report,
        and of their tasks' jobs. Read after the batch's jobs: the lock order (events lock,
        jobs, then these)."""
        reports = [i.notification.workflow for i in items if i.notification.workflow]
        if not reports:
            return cls(conn, {}, {})
        digests = store.execution_digests(conn, [r.run_id for r in reports])
        tasks = (t.get("ci_job_id") for r in reports for t in r.tasks)
        return cls(conn, digests, store.job_ids_by_ci_id(conn, tasks))

    def apply(self, item: Any) -> ApplyResult | InvalidNotificationError:
        """One WorkflowFinish: recorded with its event the first time its RunId is seen; the
        same content again is a duplicate, other content for a recorded RunId is stale (an
        instance finishes once: the first report stands)."""
        notification = item.notification
        report: WorkflowReport = notification.workflow
        if item.received.job_id is not None:  # a job's own CallBack URL: not its business
            return InvalidNotificationError(
                "notification is for a workflow instance, not for this job",
                [{"path": "/Response/WorkflowExecution",
                  "reason": "WorkflowFinish notifications go to the queue's URL"}],
            )  # fmt: skip
        state = JobState(report.state)
        recorded = self.digests.get(report.run_id)
        if recorded is not None:
            outcome = Outcome.DUPLICATE if recorded == report.digest else Outcome.STALE
            return _result(outcome, None, report, state)
        execution = WorkflowExecution(
            id=new_id("wfx", item.now),
            report=report,
            source=item.received.source.value,
            wire_format=notification.wire_format,
            created_at=item.now,
        )
        self.digests[report.run_id] = report.digest
        self.rows.append(
            {
                **store.execution_values(execution),
                "content_type": notification.content_type,
                "body": notification.body,
            }
        )
        self.finished.append((execution, item.now))
        return _result(Outcome.ACCEPTED, execution.id, report, state)

    def events(self, batch_jobs: dict[str, str]) -> list[dict[str, Any]]:
        """The ``workflow.finished`` events, their tasks linked to the jobs known before the
        batch and to those the batch itself records (``batch_jobs``: CI JobId -> job id; CI
        sends a task's TaskFinish and the instance's WorkflowFinish almost together)."""
        links = {**self.known, **batch_jobs}
        return [events.workflow_finished_event(e, links, now) for e, now in self.finished]


def _result(
    outcome: Outcome, execution_id: str | None, report: WorkflowReport, state: JobState
) -> ApplyResult:
    return ApplyResult(
        outcome, execution_id, report.run_id, None, state, tag=WORKFLOW_TAG, workflow=True
    )
