"""Workflow instances CI reported (WorkflowFinish): ``GET /v1/workflow-executions`` (the
list, newest first, with filters and cursor paging as ``GET /v1/jobs``) and
``GET /v1/workflow-executions/<id or RunId>``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from app import store
from app.errors import NotFoundError
from app.models import WORKFLOW_STATES, WorkflowExecution
from app.web import require_api_key, services
from app.web.filters import Reader

bp = Blueprint("workflows", __name__, url_prefix="/v1/workflow-executions")


def _views(conn: Any, executions: list[WorkflowExecution]) -> list[dict[str, Any]]:
    """Each instance as the API shows it, each task linked to cirelay's job by JobId."""
    ci_ids = (t.get("ci_job_id") for e in executions for t in e.report.tasks)
    links = store.job_ids_by_ci_id(conn, ci_ids)
    return [e.view(links) for e in executions]


@bp.get("/<ident>")
@require_api_key
def get_execution(ident: str) -> ResponseReturnValue:
    """One instance by cirelay id (``wfx_…``) or CI RunId."""
    with services().engine.connect() as conn:
        execution = store.get_execution(conn, ident)
        if execution is None:
            raise NotFoundError(f"no workflow execution {ident!r}")
        (view,) = _views(conn, [execution])
    return jsonify(view)


@bp.get("")
@require_api_key
def list_executions() -> ResponseReturnValue:
    """Newest first. Filters: ``state`` (Success, Failed; repeat or comma-separate),
    ``workflow_id``, ``bucket``, ``object``, ``job`` (a task's CI JobId or cirelay job id),
    ``task_type`` (a task's Type), ``created_after``/``created_before`` (ISO 8601, when
    cirelay recorded it); ``limit`` (1 to 200, default 50); ``cursor`` from the previous
    page's ``next_cursor``."""
    read = Reader(request.args)
    states, limit = read.states(WORKFLOW_STATES), read.limit()
    job = read.text("job", 64)
    workflow_id, bucket = read.text("workflow_id", 80), read.text("bucket", 80)
    object_key, task_type = read.text("object", 1024, whole=True), read.text("task_type", 64)
    after, before = read.time("created_after"), read.time("created_before")
    read.done("invalid query parameters")
    with services().engine.connect() as conn:
        if job and job.startswith("job_"):  # cirelay's id: its CI JobId is what tasks name
            found = store.get_job(conn, job)
            job = (found.ci_job_id if found else None) or job
        page = store.list_executions(
            conn, states=list(states), workflow_id=workflow_id, bucket=bucket,
            object_key=object_key, ci_job_id=job, task_type=task_type, created_after=after,
            created_before=before, before_id=request.args.get("cursor") or None, limit=limit,
        )  # fmt: skip
        views = _views(conn, page)
    next_cursor = page[-1].id if len(page) == limit else None
    return jsonify({"workflow_executions": views, "next_cursor": next_cursor})
