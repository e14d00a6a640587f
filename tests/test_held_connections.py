"""SQLite and the connections a thread keeps (``store.HeldConnection``): a transaction whose
writes are done again if a power loss takes them back does not wait for the disk at commit
(``synchronous`` 1 = NORMAL), and leaves its connection as durable as before (2 = FULL) for
whoever takes it from the pool next (the worker's writes are such: tests/test_delivery.py
shows which); the held connection's data version tells its own commits from others'."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from app import store

FULL, NORMAL = 2, 1


def _level(conn: sa.Connection) -> int:
    return int(conn.exec_driver_sql("PRAGMA synchronous").scalar_one())


def test_a_transaction_redone_if_lost_leaves_its_connection_durable_for_the_next(
    tmp_path: Path,
) -> None:
    engine = store.create_engine(f"sqlite:///{tmp_path / 'levels.db'}")
    try:
        held = store.HeldConnection(engine, redone_if_lost=True)
        with held.transaction() as conn:
            relaxed = conn.connection.dbapi_connection
            assert _level(conn) == NORMAL
        held.close()  # back to the pool
        with store.transaction(engine) as conn:
            assert conn.connection.dbapi_connection is relaxed  # the same connection
            assert _level(conn) == FULL
        with held.transaction() as conn:
            assert _level(conn) == NORMAL
        held.close()
        with engine.connect() as conn, conn.begin():
            assert conn.connection.dbapi_connection is relaxed
            assert _level(conn) == FULL
    finally:
        engine.dispose()


def test_the_data_version_changes_for_other_connections_commits_never_for_its_own(
    tmp_path: Path,
) -> None:
    engine = store.create_engine(f"sqlite:///{tmp_path / 'versions.db'}")
    try:
        insert = sa.text("INSERT INTO marks VALUES (1)")
        with store.transaction(engine) as conn:
            conn.execute(sa.text("CREATE TABLE marks (n INTEGER)"))
        held = store.HeldConnection(engine)
        assert held.data_version() is None  # nothing held yet
        with held.transaction() as conn:
            conn.execute(insert)
        before = held.data_version()
        assert before is not None
        with held.transaction() as conn:  # its own commit
            conn.execute(insert)
        assert held.data_version() == before
        with store.transaction(engine) as conn:  # another connection's
            conn.execute(insert)
        assert held.data_version() != before
        held.close()
        assert held.data_version() is None
    finally:
        engine.dispose()
