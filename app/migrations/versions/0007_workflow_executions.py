"""Workflow instances: the tables WorkflowFinish notifications are recorded in

A CI queue's URL receives a WorkflowFinish for every workflow instance that ends (spec §10).
Each is recorded once per RunId (``workflow_executions``), its tasks one row each
(``workflow_tasks``), linked to the jobs by CI JobId.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
UTCDateTime = sa.DateTime(timezone=True)

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "workflow_executions",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("workflow_id", sa.String(80), nullable=False),
        sa.Column("workflow_name", sa.Text),
        sa.Column("bucket", sa.String(80)),
        sa.Column("object", sa.Text),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("ci_created_at", UTCDateTime),
        sa.Column("detail", sa.JSON, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("wire_format", sa.String(8), nullable=False),
        sa.Column("content_type", sa.String(64), nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_workflow_executions"),
        sa.UniqueConstraint("run_id", name="uq_workflow_executions_run_id"),
    )
    op.create_index(
        "ix_workflow_executions_workflow_id_id", "workflow_executions", ["workflow_id", "id"]
    )
    op.create_index("ix_workflow_executions_state_id", "workflow_executions", ["state", "id"])
    op.create_table(
        "workflow_tasks",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("execution_id", sa.String(40), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("ci_job_id", sa.String(64)),
        sa.PrimaryKeyConstraint("id", name="pk_workflow_tasks"),
        sa.ForeignKeyConstraint(
            ["execution_id"],
            ["workflow_executions.id"],
            name="fk_workflow_tasks_execution_id_workflow_executions",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_workflow_tasks_ci_job_id", "workflow_tasks", ["ci_job_id"])
    op.create_index(
        "ix_workflow_tasks_execution_id_position", "workflow_tasks", ["execution_id", "position"]
    )


def downgrade() -> None:
    op.drop_table("workflow_tasks")
    op.drop_table("workflow_executions")
