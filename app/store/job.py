"""Jobs and the notifications recorded for them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.models import TERMINAL_STATES, VOICE_SEPARATE, Job, JobState, NotificationRecord
from app.store.schema import jobs, notifications


def _job(row: sa.Row[Any]) -> Job:
    m = row._mapping
    detail = m["detail"] or {}
    return Job(
        id=m["id"],
        ci_job_id=m["ci_job_id"],
        origin=m["origin"],
        state=JobState(m["state"]),
        tag=m["tag"],
        queue_id=m["queue_id"],
        code=m["code"],
        message=m["message"],
        user_data=m["user_data"],
        input=detail.get("input", {}),
        output=detail.get("output", {}),
        result_files=detail.get("result_files", []),
        media_info=detail.get("media_info", {}),
        workflow=detail.get("workflow"),
        template=detail.get("template"),
        ci_created_at=m["ci_created_at"],
        ci_started_at=m["ci_started_at"],
        ci_ended_at=m["ci_ended_at"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        last_notified_at=m["last_notified_at"],
        request=m["request"],
        idempotency_key=m["idempotency_key"],
        request_digest=m["request_digest"],
        submit_error=m["submit_error"],
        operation=detail.get("operation"),
    )


# Hot-path statements are built once and executed with a parameter dict, so SQLAlchemy
# compiles each once per dialect instead of once per notification.
_SELECT_JOB = sa.select(jobs).where(jobs.c.id == sa.bindparam("ident"))
_FIND_JOB = sa.select(jobs).where(
    sa.or_(jobs.c.id == sa.bindparam("ident"), jobs.c.ci_job_id == sa.bindparam("ident"))
)
_LOCKED = {q: q.with_for_update() for q in (_SELECT_JOB, _FIND_JOB)}
_UPDATE_JOB = sa.update(jobs).where(jobs.c.id == sa.bindparam("job_id_"))


def _select(conn: Connection, query: sa.Select[Any], ident: str, for_update: bool) -> Job | None:
    # SQLite's BEGIN IMMEDIATE already holds the write lock; PostgreSQL locks the row.
    if for_update and conn.dialect.name == "postgresql":
        query = _LOCKED[query]
    row = conn.execute(query, {"ident": ident}).first()
    return _job(row) if row else None


def get_job(conn: Connection, job_id: str, *, for_update: bool = False) -> Job | None:
    return _select(conn, _SELECT_JOB, job_id, for_update)


def find_job(conn: Connection, ident: str, *, for_update: bool = False) -> Job | None:
    """A job by cirelay id or CI JobId."""
    return _select(conn, _FIND_JOB, ident, for_update)


def find_job_by_idempotency_key(conn: Connection, key: str) -> Job | None:
    row = conn.execute(sa.select(jobs).where(jobs.c.idempotency_key == key)).first()
    return _job(row) if row else None


def insert_job(conn: Connection, values: dict[str, Any]) -> None:
    conn.execute(sa.insert(jobs), values)


def update_job(conn: Connection, job_id: str, values: dict[str, Any]) -> None:
    conn.execute(_UPDATE_JOB, {**values, "job_id_": job_id})


#: the columns a notification can change (not the submission's, not the creation's)
NOTIFIED_COLUMNS = frozenset(
    {"ci_job_id", "state", "tag", "queue_id", "code", "message", "user_data", "detail",
     "ci_created_at", "ci_started_at", "ci_ended_at", "updated_at", "last_notified_at"}
)  # fmt: skip


def job_values(job: Job, *, only: frozenset[str] | None = None) -> dict[str, Any]:
    """The columns of ``job`` (the inverse of reading a row), or only those named."""
    values = {
        "id": job.id,
        "ci_job_id": job.ci_job_id,
        "origin": job.origin,
        "state": job.state.value,
        "tag": job.tag,
        "queue_id": job.queue_id,
        "code": job.code,
        "message": job.message,
        "user_data": job.user_data,
        "detail": {
            "input": job.input,
            "output": job.output,
            "result_files": job.result_files,
            "media_info": job.media_info,
            "workflow": job.workflow,
            "template": job.template,
            "operation": job.operation,
        },
        "ci_created_at": job.ci_created_at,
        "ci_started_at": job.ci_started_at,
        "ci_ended_at": job.ci_ended_at,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "last_notified_at": job.last_notified_at,
        "request": job.request,
        "idempotency_key": job.idempotency_key,
        "request_digest": job.request_digest,
        "submit_error": job.submit_error,
    }
    return values if only is None else {k: v for k, v in values.items() if k in only}


#: every digest recorded for the job, comma-separated (digests are hex): read with the job
_DIGESTS_OF_JOB = (
    sa.select(sa.func.aggregate_strings(notifications.c.digest, ","))
    .where(notifications.c.job_id == jobs.c.id)
    .scalar_subquery()
)
_LOCK_JOBS = (
    sa.select(jobs, _DIGESTS_OF_JOB.label("digests"))
    .where(
        sa.or_(
            jobs.c.id.in_(sa.bindparam("ids", expanding=True)),
            jobs.c.ci_job_id.in_(sa.bindparam("ci_ids", expanding=True)),
        )
    )
    .order_by(jobs.c.id)
)
_LOCK_JOBS_FOR_UPDATE = _LOCK_JOBS.with_for_update(of=jobs)


def lock_jobs(
    conn: Connection, *, ids: Iterable[str], ci_job_ids: Iterable[str]
) -> list[tuple[Job, set[str]]]:
    """The jobs with these ids or CI JobIds, each with the digests of every notification
    recorded for it (one statement); on PostgreSQL locked for the transaction, in id order so
    that concurrent batches cannot deadlock (SQLite's writer lock serialises)."""
    query = _LOCK_JOBS_FOR_UPDATE if conn.dialect.name == "postgresql" else _LOCK_JOBS
    rows = conn.execute(query, {"ids": sorted(ids), "ci_ids": sorted(ci_job_ids)})
    return [(_job(row), set(row.digests.split(",")) if row.digests else set()) for row in rows]


def list_jobs(
    conn: Connection,
    *,
    states: Sequence[str] = (),
    tag: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    before_id: str | None = None,
    limit: int = 50,
    origin: str | None = None,
    ci_job_id: str | None = None,
    user_data: str | None = None,
) -> list[Job]:
    """Newest first; ``before_id`` is the cursor (ids sort by creation time). ``user_data``
    matches jobs whose user data contains it."""
    query = sa.select(jobs).order_by(jobs.c.id.desc()).limit(limit)
    if states:
        query = query.where(jobs.c.state.in_(list(states)))
    if tag:
        query = query.where(jobs.c.tag == tag)
    if origin:
        query = query.where(jobs.c.origin == origin)
    if ci_job_id:
        query = query.where(jobs.c.ci_job_id == ci_job_id)
    if user_data:
        query = query.where(jobs.c.user_data.contains(user_data, autoescape=True))
    if created_after:
        query = query.where(jobs.c.created_at >= created_after)
    if created_before:
        query = query.where(jobs.c.created_at < created_before)
    if before_id:
        query = query.where(jobs.c.id < before_id)
    return [_job(row) for row in conn.execute(query)]


def list_silent_jobs(conn: Connection, *, silent_since: datetime, limit: int) -> list[Job]:
    """Jobs CI has not told us about since ``silent_since`` and we have not asked about since
    then either: not finished, with a CI JobId to ask with; the most overdue first. Only
    VoiceSeparate jobs: CI's answers are checked by the typed describe schema, which another
    tag's job (learnt from the queue's URL) would fail, and with it its whole batch."""
    heard = sa.func.coalesce(jobs.c.last_notified_at, jobs.c.updated_at)
    asked = sa.func.coalesce(jobs.c.last_polled_at, heard)
    query = (
        sa.select(jobs)
        .where(
            jobs.c.ci_job_id.is_not(None),
            jobs.c.tag == VOICE_SEPARATE,
            jobs.c.state.not_in(sorted(s.value for s in TERMINAL_STATES)),
            heard < silent_since,
            asked < silent_since,
        )
        .order_by(asked)
        .limit(limit)
    )
    return [_job(row) for row in conn.execute(query)]


def list_unbound_jobs(conn: Connection, *, created_before: datetime, limit: int) -> list[Job]:
    """Jobs whose submission got no answer from CI (no JobId), older than ``created_before``
    and not looked for since then."""
    asked = sa.func.coalesce(jobs.c.last_polled_at, jobs.c.created_at)
    query = (
        sa.select(jobs)
        .where(
            jobs.c.ci_job_id.is_(None),
            jobs.c.state == JobState.SUBMITTING.value,
            jobs.c.origin == "api",
            jobs.c.created_at < created_before,
            asked < created_before,
        )
        .order_by(asked)
        .limit(limit)
    )
    return [_job(row) for row in conn.execute(query)]


def mark_polled(conn: Connection, job_ids: Sequence[str], at: datetime) -> None:
    conn.execute(sa.update(jobs).where(jobs.c.id.in_(list(job_ids))).values(last_polled_at=at))


def list_notifications(
    conn: Connection, job_id: str, *, with_bodies: bool = False
) -> list[NotificationRecord]:
    """The job's notifications, oldest first; with their bodies and headers when asked."""
    bulky = () if with_bodies else ("body", "headers", "content_type")
    cols = [c for c in notifications.c if c.name not in bulky]
    query = sa.select(*cols).where(notifications.c.job_id == job_id).order_by(notifications.c.id)
    return [
        NotificationRecord(
            id=m["id"],
            job_id=m["job_id"],
            state=m["state"],
            source=m["source"],
            outcome=m["outcome"],
            wire_format=m["wire_format"],
            digest=m["digest"],
            received_at=m["received_at"],
            content_type=m.get("content_type"),
            headers=m.get("headers"),
            body=m.get("body"),
        )
        for m in conn.execute(query).mappings()
    ]


def job_traceparent(conn: Connection, job_id: str) -> str | None:
    """The W3C traceparent stored with the job at its submit (``None``: none, or no job)."""
    query = sa.select(jobs.c.traceparent).where(jobs.c.id == job_id)
    value: str | None = conn.execute(query).scalar_one_or_none()
    return value
