"""PostgreSQL: compress large values (raw bodies, job details, event data) with lz4

Values over about 2 kB are compressed when stored ("TOAST"); PostgreSQL's default, pglz, is a
measurable share of the server's CPU per notification (every one carries a raw body), lz4 a
fraction of that at a similar size. Only values written from now on are affected; nothing is
rewritten. Skipped where the server has no lz4 (built without it, or older than PostgreSQL 14)
and on SQLite.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: (table, column) holding values that are often over the compression threshold
LARGE = (
    ("notifications", "body"),
    ("jobs", "detail"),
    ("jobs", "request"),
    ("events", "data"),
    ("quarantined_notifications", "body"),
)


def _lz4_available() -> bool:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return False
    found = bind.execute(
        sa.text(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
        )
    ).scalar()
    return bool(found)


def upgrade() -> None:
    if _lz4_available():
        for table, column in LARGE:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION lz4")


def downgrade() -> None:
    if _lz4_available():
        for table, column in LARGE:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION default")
