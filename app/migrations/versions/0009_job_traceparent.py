"""Jobs keep the W3C traceparent of their submit: a nullable ``jobs.traceparent``

With ``CIRELAY_TRACING=on`` the client's submit is a span; its traceparent is stored with the
job so that CI's callback (which carries no header back) and every delivery about the job
continue the submitter's trace. Written once, at the insert; NULL when tracing is off.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("traceparent", sa.String(55), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("traceparent")
