"""One migration history for both databases, and it matches the tables the code uses."""

from __future__ import annotations

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
