"""A subscription whose endpoint cannot be reached is paused: subscriptions.paused_until

While an endpoint cannot be reached (connections refused, timeouts), its deliveries are not
each attempted and failed: the subscription is paused until its next probe, then tried with
one delivery at a time until one succeeds, so a down subscriber costs the worker one attempt
per probe interval instead of one per delivery.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.add_column(sa.Column("paused_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("subscriptions") as batch:
        batch.drop_column("paused_until")
