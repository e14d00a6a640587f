"""Group commit: shared transactions, each caller all-or-nothing."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from app import store
from app.commits import GroupCommitter
from tests.conftest import Clock

#: the committer's mechanics with placeholder events (type "t"), not the event catalogue
pytestmark = pytest.mark.outbox_unchecked


def event_ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(store.events.c.id)).scalars())


class Recorder:
    """An ``apply_batch`` that writes one event per item; ``"block"`` waits for a gate,
    ``"bad"`` is rejected alone, ``"boom"`` raises (the whole batch is rolled back)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.started, self.gate = threading.Event(), threading.Event()
        self.batch_sizes: list[int] = []

    def __call__(self, conn: Connection, items: Sequence[str]) -> list[str | Exception]:
        self.batch_sizes.append(len(items))
        results: list[str | Exception] = []
        for item in items:
            if item == "block":
                self.started.set()
                self.gate.wait(10)
            if item == "bad":
                results.append(ValueError("rejected"))
                continue
            store.insert_event(conn, {"id": f"evt_{item}", "type": "t", "source": "s",
                                      "time": self.clock.now, "data": {}})  # fmt: skip
            if item == "boom":
                raise RuntimeError("boom")
            results.append(item)
        return results


def run_while_blocked(
    committer: GroupCommitter[str, str], recorder: Recorder, items: list[str]
) -> list[str | BaseException]:
    """Queue ``items`` while the committer is inside a first transaction, then release it:
    they all land in the next batch."""
    with ThreadPoolExecutor(max_workers=len(items) + 1) as pool:
        first = pool.submit(committer.run, "block")
        assert recorder.started.wait(10)
        futures = [pool.submit(committer.run, item) for item in items]
        while committer._queue.qsize() < len(items):
            threading.Event().wait(0.01)
        recorder.gate.set()
        assert first.result() == "block"
        return [f.exception() or f.result() for f in futures]


def test_items_queued_during_a_commit_share_the_next_transaction(
    engine: Engine, clock: Clock
) -> None:
    recorder = Recorder(clock)
    committer: GroupCommitter[str, str] = GroupCommitter(engine, recorder)

    results = run_while_blocked(committer, recorder, [str(n) for n in range(10)])

    assert results == [str(n) for n in range(10)]
    assert recorder.batch_sizes == [1, 10]
    assert committer.batches == 2 and committer.items == 11
    assert event_ids(engine) == {"evt_block"} | {f"evt_{n}" for n in range(10)}


def test_items_queued_while_the_committer_waits_for_the_database_join_its_batch(
    engine: Engine, clock: Clock
) -> None:
    """The committer waits for the lock all writers share (SQLite's writer lock; on
    PostgreSQL the events lock, taken first by its ``begin`` hook) while another process
    commits; whatever is queued by the time it has the lock goes into the same transaction,
    instead of waiting for the next one."""
    recorder = Recorder(clock)
    committer: GroupCommitter[str, str] = GroupCommitter(
        engine, recorder, begin=store.hold_events_lock
    )
    with ThreadPoolExecutor(max_workers=3) as pool:
        with store.transaction(engine) as other:  # another writer holds the database
            store.hold_events_lock(other)
            first = pool.submit(committer.run, "a")
            while committer._queue.qsize() or not committer._pid:
                threading.Event().wait(0.01)  # the committer took "a" and waits for the lock
            later = [pool.submit(committer.run, item) for item in ("b", "c")]
            while committer._queue.qsize() < 2:
                threading.Event().wait(0.01)
        assert [f.result(10) for f in (first, *later)] == ["a", "b", "c"]
    assert recorder.batch_sizes == [3]


def test_the_committer_keeps_its_connection_while_busy_and_returns_it_when_idle(
    engine: Engine, clock: Clock
) -> None:
    """Batches that follow each other share one checkout (no pool round trip, no pre-ping);
    a commit that leaves nothing queued gives the connection back before answering."""
    recorder = Recorder(clock)
    committer: GroupCommitter[str, str] = GroupCommitter(engine, recorder)
    pool: Any = engine.pool
    before = pool.checkedout()
    checkouts: list[int] = []

    def count(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        checkouts.append(id(dbapi_connection))

    sa.event.listen(engine, "checkout", count)
    try:
        assert committer.run("alone") == "alone"
        assert pool.checkedout() == before and len(checkouts) == 1
        assert run_while_blocked(committer, recorder, ["a", "b", "c"]) == ["a", "b", "c"]
        assert pool.checkedout() == before
    finally:
        sa.event.remove(engine, "checkout", count)
    assert recorder.batch_sizes == [1, 1, 3]
    assert len(checkouts) == 2  # "alone"; then "block" and the batch queued behind it


def test_a_rejected_item_fails_alone(engine: Engine, clock: Clock) -> None:
    recorder = Recorder(clock)
    committer: GroupCommitter[str, str] = GroupCommitter(engine, recorder)

    results = run_while_blocked(committer, recorder, ["1", "bad", "3"])

    assert results[0] == "1" and results[2] == "3"
    assert isinstance(results[1], ValueError)
    assert recorder.batch_sizes == [1, 3]


def test_an_exception_rolls_the_batch_back_and_each_item_is_retried_alone(
    engine: Engine, clock: Clock
) -> None:
    recorder = Recorder(clock)
    committer: GroupCommitter[str, str] = GroupCommitter(engine, recorder)

    results = run_while_blocked(committer, recorder, ["1", "boom", "3"])

    assert results[0] == "1" and results[2] == "3"
    assert isinstance(results[1], RuntimeError)
    assert recorder.batch_sizes == [1, 3, 1, 1, 1]
    assert event_ids(engine) == {"evt_block", "evt_1", "evt_3"}


def test_a_failed_commit_reaches_its_caller_and_the_committer_goes_on(
    engine: Engine, clock: Clock
) -> None:
    def violates_not_null(conn: Connection, items: Sequence[str]) -> list[str]:
        if items == ["bad"]:
            conn.execute(sa.insert(store.events).values(id="x"))
        return list(items)

    committer: GroupCommitter[str, str] = GroupCommitter(engine, violates_not_null)
    with pytest.raises(sa.exc.IntegrityError):
        committer.run("bad")
    assert committer.run("good") == "good"


class _PgError(Exception):
    """Stands in for a psycopg error: what SQLAlchemy wraps, with a SQLSTATE."""

    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


def failing(times: int, sqlstate: str, *, dropped: bool = False) -> tuple[list[int], object]:
    """An apply_batch failing ``times`` times with ``sqlstate`` (``dropped``: the connection
    went away in the middle), then succeeding."""
    calls: list[int] = []

    def apply(conn: Connection, items: Sequence[str]) -> list[str]:
        calls.append(len(items))
        if len(calls) <= times:
            raise sa.exc.OperationalError(
                "COMMIT", {}, _PgError(sqlstate), connection_invalidated=dropped
            )
        return list(items)

    return calls, apply


@pytest.mark.parametrize(
    ("sqlstate", "dropped"), [("40001", False), ("40P01", False), ("08006", True)]
)
def test_a_transient_failure_runs_the_batch_again(
    engine: Engine, sqlstate: str, dropped: bool
) -> None:
    """Serialization failures, deadlocks and connections dropped mid-way are tried again."""
    calls, apply = failing(2, sqlstate, dropped=dropped)
    committer: GroupCommitter[str, str] = GroupCommitter(engine, apply)  # type: ignore[arg-type]
    assert committer.run("a") == "a"
    assert calls == [1, 1, 1]


def test_an_unreachable_database_fails_every_item_at_once(engine: Engine) -> None:
    """Connecting failed (it waited its timeout already): no retry, no splitting the batch;
    every caller gets the error (503)."""
    calls, apply = failing(100, "08001")
    committer: GroupCommitter[str, str] = GroupCommitter(engine, apply)  # type: ignore[arg-type]
    with pytest.raises(sa.exc.OperationalError) as raised:
        committer.run("a")
    assert store.is_unavailable(raised.value) and not store.is_transient(raised.value)
    assert calls == [1]


def test_a_permanent_error_is_not_retried(engine: Engine) -> None:
    calls, apply = failing(100, "23505")  # unique violation: the same again would fail again
    committer: GroupCommitter[str, str] = GroupCommitter(engine, apply)  # type: ignore[arg-type]
    with pytest.raises(sa.exc.OperationalError):
        committer.run("a")
    assert calls == [1]
