"""Workflow instances (``workflow_executions``) and their tasks (``workflow_tasks``)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.models import WorkflowExecution, WorkflowReport
from app.store.schema import jobs, workflow_executions, workflow_tasks

_DIGESTS = sa.select(workflow_executions.c.run_id, workflow_executions.c.digest).where(
    workflow_executions.c.run_id.in_(sa.bindparam("run_ids", expanding=True))
)


def execution_digests(conn: Connection, run_ids: Iterable[str]) -> dict[str, str]:
    """The digest each of these RunIds was recorded with (those recorded at all). The caller
    holds the events lock, which every writer of workflow instances takes first."""
    return dict(conn.execute(_DIGESTS, {"run_ids": sorted(set(run_ids))}).all())


def insert_executions(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Record instances: each row is :func:`execution_values` plus ``body``,
    ``content_type``; their tasks are written beside them. No RETURNING (``inline``): this
    runs in the group committer's pipelined writes, whose results are not read."""
    if not rows:
        return
    conn.execute(sa.insert(workflow_executions).inline(), list(rows))
    tasks = [
        {
            "execution_id": row["id"],
            "position": position,
            "type": task.get("type") or "",
            "state": task.get("state") or "",
            "ci_job_id": task.get("ci_job_id"),
        }
        for row in rows
        for position, task in enumerate(row["detail"]["tasks"], start=1)
    ]
    if tasks:
        conn.execute(sa.insert(workflow_tasks).inline(), tasks)


def execution_values(execution: WorkflowExecution) -> dict[str, Any]:
    """The columns of ``execution`` but its notification's body and content type."""
    r = execution.report
    return {
        "id": execution.id,
        "run_id": r.run_id,
        "workflow_id": r.workflow_id,
        "workflow_name": r.workflow_name,
        "bucket": r.bucket,
        "object": r.object,
        "state": r.state,
        "ci_created_at": r.ci_created_at,
        "detail": {"cos_headers": r.cos_headers, "tasks": r.tasks},
        "digest": r.digest,
        "source": execution.source,
        "wire_format": execution.wire_format,
        "created_at": execution.created_at,
    }


_COLUMNS = [c for c in workflow_executions.c if c.name not in ("body", "content_type")]


def _execution(m: Any) -> WorkflowExecution:
    detail = m["detail"] or {}
    return WorkflowExecution(
        id=m["id"],
        report=WorkflowReport(
            run_id=m["run_id"],
            workflow_id=m["workflow_id"],
            workflow_name=m["workflow_name"],
            bucket=m["bucket"],
            object=m["object"],
            cos_headers=detail.get("cos_headers", {}),
            state=m["state"],
            ci_created_at=m["ci_created_at"],
            tasks=detail.get("tasks", []),
            digest=m["digest"],
        ),
        source=m["source"],
        wire_format=m["wire_format"],
        created_at=m["created_at"],
    )


def get_execution(conn: Connection, ident: str) -> WorkflowExecution | None:
    """An instance by cirelay id or RunId."""
    query = sa.select(*_COLUMNS).where(
        sa.or_(workflow_executions.c.id == ident, workflow_executions.c.run_id == ident)
    )
    row = conn.execute(query).mappings().first()
    return _execution(row) if row else None


def list_executions(
    conn: Connection,
    *,
    states: Sequence[str] = (),
    workflow_id: str | None = None,
    bucket: str | None = None,
    object_key: str | None = None,
    ci_job_id: str | None = None,
    task_type: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    before_id: str | None = None,
    limit: int = 50,
) -> list[WorkflowExecution]:
    """Newest first; ``before_id`` is the cursor (ids sort by arrival). ``ci_job_id`` and
    ``task_type``: instances with such a task."""
    t = workflow_executions.c
    query = sa.select(*_COLUMNS).order_by(t.id.desc()).limit(limit)
    if states:
        query = query.where(t.state.in_(list(states)))
    for column, value in ((t.workflow_id, workflow_id), (t.bucket, bucket),
                          (t.object, object_key)):  # fmt: skip
        if value:
            query = query.where(column == value)
    if ci_job_id or task_type:
        tasks = sa.select(workflow_tasks.c.execution_id)
        if ci_job_id:
            tasks = tasks.where(workflow_tasks.c.ci_job_id == ci_job_id)
        if task_type:
            tasks = tasks.where(workflow_tasks.c.type == task_type)
        query = query.where(t.id.in_(tasks))
    if created_after:
        query = query.where(t.created_at >= created_after)
    if created_before:
        query = query.where(t.created_at < created_before)
    if before_id:
        query = query.where(t.id < before_id)
    return [_execution(m) for m in conn.execute(query).mappings()]


def job_ids_by_ci_id(conn: Connection, ci_job_ids: Iterable[str | None]) -> dict[str, str]:
    """cirelay's job id of each of these CI JobIds that it knows."""
    wanted = sorted({i for i in ci_job_ids if i})
    if not wanted:
        return {}
    query = sa.select(jobs.c.ci_job_id, jobs.c.id).where(jobs.c.ci_job_id.in_(wanted))
    return dict(conn.execute(query).all())
