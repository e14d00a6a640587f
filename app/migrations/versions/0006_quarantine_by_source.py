"""Quarantine writes counted per source: an index on (source, job_id, received_at)

Each invalid notification from a token holder is stored (up to the body cap) with an event;
``CIRELAY_QUARANTINE_PER_MINUTE`` bounds how many one source (a callback token's job, or the
queue secret) may store per minute, and counting a source's rows of the last minute must not
scan the table.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_quarantined_notifications_source_job_id_received_at",
        "quarantined_notifications",
        ["source", "job_id", "received_at"],
    )


def downgrade() -> None:
    op.drop_index(
        "ix_quarantined_notifications_source_job_id_received_at",
        table_name="quarantined_notifications",
    )
