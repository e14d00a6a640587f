"""PostgreSQL: the events lock (``store.hold_events_lock``) is taken before any job row, by
every transaction that may write an event after locking a job. The group committer takes it
first in each batch; a transaction taking them the other way round could deadlock with it."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app import reconciler, store, submission
from app.ci.errors import CIError
from app.models import JobReport, JobState
from app.submission import Submitter
from tests.conftest import Clock, ci_job_id, empty_postgresql, make_job
from tests.e2e_stack import poll

pytestmark = pytest.mark.postgresql


def statements(engine: Engine) -> tuple[list[str], Callable[[], None]]:
    seen: list[str] = []

    def capture(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", capture)
    return seen, lambda: sa.event.remove(engine, "before_cursor_execute", capture)


def test_the_events_lock_is_taken_once_per_transaction(pg_engine: Engine) -> None:
    seen, stop = statements(pg_engine)
    try:
        with store.transaction(pg_engine) as conn:
            store.hold_events_lock(conn)
            store.hold_events_lock(conn)
        with store.transaction(pg_engine) as conn:
            store.hold_events_lock(conn)
    finally:
        stop()
    assert sum("pg_advisory_xact_lock" in s for s in seen) == 2


def _submitted(now: datetime) -> JobReport:
    return JobReport(
        ci_job_id=ci_job_id(1), state=JobState.SUBMITTED, tag="VoiceSeparate", code="",
        message="", queue_id=None, created_at=now, started_at=None, ended_at=None,
        user_data=None, input={}, output={}, result_files=[], media_info={}, workflow=None,
        template=None, digest="d",
    )  # fmt: skip


_BLOCKED_ON_THE_EVENTS_LOCK = sa.text(
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE wait_event_type = 'Lock' AND query LIKE '%pg_advisory_xact_lock%'"
)


def _record_submitted(engine: Engine, now: datetime) -> None:
    with store.transaction(engine) as conn:
        submission.record_submitted(conn, "job_1", _submitted(now), now)


def _never_created(engine: Engine, now: datetime) -> None:
    with store.transaction(engine) as conn:
        reconciler.never_created(conn, "job_1", now)


def _refused(engine: Engine, now: datetime) -> None:
    submitter = Submitter(engine, lambda bucket, region: None, public_url="http://cirelay.test",
                          callback_keys=("k" * 32,))  # fmt: skip
    submitter._record_refusal("job_1", CIError("refused", ci_code="InvalidInput"), now)


@pytest.mark.parametrize("change", [_record_submitted, _never_created, _refused])
def test_a_job_change_that_writes_an_event_waits_for_the_events_lock_before_the_job(
    pg_engine: Engine, clock: Clock, change: Callable[[Engine, datetime], None]
) -> None:
    """Submission binding CI's JobId, the reconciler failing a job CI never created, and
    a submission CI refused: each may write an event after locking the job."""
    empty_postgresql(pg_engine)
    make_job(pg_engine, "job_1", clock.now)
    with pg_engine.begin() as conn:
        conn.execute(sa.text("UPDATE jobs SET state = 'Submitting' WHERE id = 'job_1'"))

    with ThreadPoolExecutor(max_workers=1) as pool:
        with store.transaction(pg_engine) as holder:  # a committer's batch, say
            store.hold_events_lock(holder)
            waiting = pool.submit(change, pg_engine, clock.now)
            poll("the change waiting for the events lock", lambda: _blocked(pg_engine))
            # the job row is free: the change has not locked it ahead of the events lock
            holder.execute(sa.text("SELECT 1 FROM jobs WHERE id = 'job_1' FOR UPDATE NOWAIT"))
        waiting.result(10)


def _blocked(engine: Engine) -> bool:
    with engine.connect() as probe:
        return bool(probe.execute(_BLOCKED_ON_THE_EVENTS_LOCK).scalar())
