"""Events: what cirelay fans out. Written to the ``events`` table (the outbox) in the same
transaction as the change they describe, so an event exists exactly when its change does.

Types are reverse-DNS names: ``com.cirelay.job.<submitted|running|succeeded|failed|paused|
cancelled>`` (jobs of every tag), ``com.cirelay.workflow.finished`` (a workflow instance
ended) and ``com.cirelay.notification.quarantined``. The CloudEvents envelope is built
from these columns at delivery time.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from cloudevents.v1.conversion import to_dict
from cloudevents.v1.http import CloudEvent

from app import store
from app.models import (
    Event,
    Job,
    JobState,
    QuarantinedNotification,
    WorkflowExecution,
    new_id,
)

if TYPE_CHECKING:  # a type only: the domain imports no SQLAlchemy
    from sqlalchemy.engine import Connection

TYPE_PREFIX = "com.cirelay"
QUARANTINED = f"{TYPE_PREFIX}.notification.quarantined"
WORKFLOW_FINISHED = f"{TYPE_PREFIX}.workflow.finished"


def to_cloudevent(event: Event) -> dict[str, Any]:
    """The event as a CloudEvents 1.0 JSON structured-mode document, built with the SDK.
    ``sequence`` (the CloudEvents sequence extension) is the outbox position, the cursor."""
    attributes = {
        "id": event.id,
        "type": event.type,
        "source": event.source,
        "time": event.time.isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "sequence": str(event.seq),
    }
    if event.subject:
        attributes["subject"] = event.subject
    document: dict[str, Any] = to_dict(CloudEvent(attributes, event.data))
    return document


def job_event_type(state: JobState) -> str:
    return f"{TYPE_PREFIX}.job.{state.event_name}"


def event_source(job: Job) -> str:
    """The CI bucket and queue the job ran in, as a URI reference."""
    bucket = job.input.get("bucket") or "unknown-bucket"
    region = job.input.get("region") or "unknown-region"
    queue = job.queue_id or "default"
    return f"https://{bucket}.ci.{region}.myqcloud.com/queues/{queue}"


def job_changed_event(job: Job, previous: JobState | None, now: datetime) -> dict[str, Any]:
    """The outbox row announcing that ``job`` moved from ``previous`` to its state."""
    data = job.view()
    data["previous_state"] = previous
    return {
        "id": new_id("evt", now),
        "type": job_event_type(job.state),
        "source": event_source(job),
        "subject": job.ci_job_id,
        "job_id": job.id,
        "time": now,
        "data": data,
    }


def workflow_finished_event(
    execution: WorkflowExecution, job_ids: dict[str, str], now: datetime
) -> dict[str, Any]:
    """The outbox row announcing that a workflow instance ended: its view is the data, its
    RunId the subject; the source names its bucket and workflow. ``job_ids`` links its
    tasks to the jobs cirelay knows (CI JobId -> job id)."""
    report = execution.report
    bucket = report.bucket or "unknown-bucket"
    return {
        "id": new_id("evt", now),
        "type": WORKFLOW_FINISHED,
        "source": f"https://{bucket}.ci.myqcloud.com/workflows/{report.workflow_id}",
        "subject": report.run_id,
        "job_id": None,
        "time": now,
        "data": execution.view(job_ids),
    }


def record_job_changed(
    conn: Connection, job: Job, previous: JobState | None, now: datetime
) -> None:
    store.insert_event(conn, job_changed_event(job, previous, now))


def record_quarantined(conn: Connection, item: QuarantinedNotification, now: datetime) -> None:
    store.insert_event(
        conn,
        {
            "id": new_id("evt", now),
            "type": QUARANTINED,
            "source": "/cirelay/quarantine",
            "subject": None,
            "job_id": item.job_id,
            "time": now,
            "data": {
                "quarantine_id": item.id,
                "source": item.source,
                "job_id": item.job_id,
                "error": item.error,
                "reasons": item.reasons,
            },
        },
    )
