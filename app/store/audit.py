"""The audit log: every action taken in the console or the admin API, written in the
transaction of the change it describes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.models import Actor, AuditEntry
from app.store.schema import audit_log


def insert_audit(
    conn: Connection,
    actor: Actor,
    action: str,
    subject: str | None,
    details: dict[str, Any],
    at: datetime,
) -> None:
    conn.execute(
        sa.insert(audit_log).values(
            at=at,
            actor=actor.name[:64],
            via=actor.via,
            action=action,
            subject=subject[:80] if subject else None,
            details=details,
        )
    )


def list_audit(
    conn: Connection,
    *,
    actor: str | None = None,
    action: str | None = None,
    subject: str | None = None,
    before: int | None = None,
    limit: int = 50,
) -> list[AuditEntry]:
    """Newest first; ``before`` (an entry's id) pages."""
    query = sa.select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
    if actor:
        query = query.where(audit_log.c.actor == actor)
    if action:
        query = query.where(audit_log.c.action == action)
    if subject:
        query = query.where(audit_log.c.subject == subject)
    if before is not None:
        query = query.where(audit_log.c.id < before)
    return [AuditEntry(**dict(m)) for m in conn.execute(query).mappings()]
