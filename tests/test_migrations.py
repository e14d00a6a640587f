"""One migration history for both databases, and it matches the tables the code uses."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

from app import migrations, store


def test_migrations_produce_exactly_the_tables_the_code_uses(engine: Engine) -> None:
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), store.metadata)
    assert diff == []


def test_database_is_at_head_after_upgrade(engine: Engine) -> None:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(migrations.alembic_config(engine)).get_current_head()
    assert migrations.current(engine) == head


def test_upgrade_twice_is_harmless(engine: Engine) -> None:
    migrations.upgrade(engine)
    assert migrations.current(engine) is not None


@pytest.mark.postgresql
def test_large_values_are_compressed_with_lz4_on_postgresql(pg_engine: Engine) -> None:
    """Where the server has lz4; otherwise the columns keep the server's default ("")."""
    with pg_engine.connect() as conn:
        available = conn.execute(
            sa.text(
                "SELECT 'lz4' = ANY(enumvals) FROM pg_settings "
                "WHERE name = 'default_toast_compression'"
            )
        ).scalar()
        methods = dict(
            conn.execute(
                sa.text(
                    "SELECT attrelid::regclass::text || '.' || attname, attcompression "
                    "FROM pg_attribute WHERE attname IN ('body', 'detail', 'request', 'data') "
                    "AND attrelid::regclass::text IN "
                    "('notifications', 'jobs', 'events', 'quarantined_notifications')"
                )
            ).all()
        )
    expected = "l" if available else ""
    assert methods == {
        "notifications.body": expected,
        "jobs.detail": expected,
        "jobs.request": expected,
        "events.data": expected,
        "quarantined_notifications.body": expected,
    }
