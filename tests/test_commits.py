"""Group commit: shared transactions, per-caller all-or-nothing."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from app import store
from app.commits import GroupCommitter
from tests.conftest import Clock


def _insert_event(n: int, clock: Clock):  # type: ignore[no-untyped-def]
    def work(conn: Connection) -> int:
        store.insert_event(
            conn,
            {"id": f"evt_{n}", "type": "t", "source": "s", "time": clock.now, "data": {}},
        )
        return n

    return work


def _event_ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(store.events.c.id)).scalars())


def test_work_queued_while_a_commit_runs_shares_the_next_transaction(
    engine: Engine, clock: Clock
) -> None:
    committer = GroupCommitter(engine)
    started, gate = threading.Event(), threading.Event()

    def blocker(conn: Connection) -> str:
        started.set()
        gate.wait(10)
        return "first"

    with ThreadPoolExecutor(max_workers=12) as pool:
        first = pool.submit(committer.run, blocker)
        assert started.wait(10)  # the committer is inside the first transaction
        rest = [pool.submit(committer.run, _insert_event(n, clock)) for n in range(10)]
        while committer._queue.qsize() < 10:
            threading.Event().wait(0.01)
        gate.set()
        assert first.result() == "first"
        assert sorted(f.result() for f in rest) == list(range(10))

    assert committer.units == 11
    assert committer.batches == 2
    assert _event_ids(engine) == {f"evt_{n}" for n in range(10)}


def test_a_failing_unit_is_rolled_back_alone(engine: Engine, clock: Clock) -> None:
    committer = GroupCommitter(engine)
    started, gate = threading.Event(), threading.Event()

    def block(conn: Connection) -> None:
        started.set()
        gate.wait(10)

    def failing(conn: Connection) -> None:
        _insert_event(99, clock)(conn)  # written, then rolled back
        raise ValueError("bad notification")

    with ThreadPoolExecutor(max_workers=8) as pool:
        first = pool.submit(committer.run, block)
        assert started.wait(10)
        futures = [pool.submit(committer.run, _insert_event(n, clock), key=str(n)) for n in (1, 3)]
        bad = pool.submit(committer.run, failing, key="2")
        while committer._queue.qsize() < 3:
            threading.Event().wait(0.01)
        gate.set()
        first.result()
        with pytest.raises(ValueError, match="bad notification"):
            bad.result()
        assert [f.result() for f in futures] == [1, 3]

    assert _event_ids(engine) == {"evt_1", "evt_3"}


def test_a_failed_commit_reaches_every_caller(engine: Engine) -> None:
    committer = GroupCommitter(engine)

    def violates_not_null(conn: Connection) -> None:
        conn.execute(sa.insert(store.events).values(id="x"))

    with pytest.raises(sa.exc.IntegrityError):
        committer.run(violates_not_null)
    assert committer.run(lambda conn: 42) == 42
