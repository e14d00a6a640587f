"""Claims look at one subscription at a time: indexes on (subscription_id, state,
next_attempt_at) and (state, lease_until)

A claim counts each subscription's live leases (the leased rows alone, by ``lease_until``)
and then reads the due deliveries of each subscription below its cap, so a slow
subscriber's backlog is never walked on the way to a healthy one's.

Revision ID: 0010
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_deliveries_subscription_id_state_next_attempt_at",
        "deliveries",
        ["subscription_id", "state", "next_attempt_at"],
    )
    op.create_index("ix_deliveries_state_lease_until", "deliveries", ["state", "lease_until"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_state_lease_until", table_name="deliveries")
    op.drop_index("ix_deliveries_subscription_id_state_next_attempt_at", table_name="deliveries")
