"""The group committer's writes (``store.insert_jobs``, ``update_jobs``,
``insert_notifications``, ``insert_events``) hand rows to the driver themselves. They must
store exactly what SQLAlchemy's own ``conn.execute(statement, rows)`` stores: the same bytes
for every column (datetimes as SQLite text or PostgreSQL timestamps, JSON, blobs, NULLs),
compared here as the driver reads them back."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app import store
from tests.conftest import counts

NOW = datetime(2024, 11, 18, 13, 5, 2, 123456, tzinfo=UTC)
#: a non-UTC aware time: stored as the same instant in UTC by both paths
EAST = datetime(2024, 11, 18, 21, 5, 2, tzinfo=timezone(timedelta(hours=8)))


def job_row(job_id: str, ci_job_id: str | None) -> dict[str, Any]:
    return {
        "id": job_id, "ci_job_id": ci_job_id, "origin": "queue", "state": "Running",
        "tag": "VoiceSeparate", "queue_id": None, "code": None, "message": "née ✓",
        "user_data": None,
        "detail": {"input": {"object": "a/b.flac"}, "result_files": [], "workflow": None},
        "ci_created_at": EAST, "ci_started_at": None, "ci_ended_at": None,
        "created_at": NOW, "updated_at": NOW, "last_notified_at": NOW,
        "request": None, "idempotency_key": None, "request_digest": None,
        "submit_error": None,
    }  # fmt: skip


def notification_row(job_id: str, digest: str) -> dict[str, Any]:
    return {
        "job_id": job_id, "ci_job_id": "j" + "0" * 32, "state": "Running", "digest": digest,
        "source": "callback", "outcome": "accepted", "wire_format": "xml",
        "content_type": "application/xml", "headers": {"user-agent": "CI", "x-n": "1"},
        "body": b"<Response>\x00\xff</Response>", "received_at": NOW,
    }  # fmt: skip


#: the rows here carry arbitrary JSON (the codec is under test, not the event catalogue)
pytestmark = pytest.mark.outbox_unchecked

def event_row(event_id: str, job_id: str) -> dict[str, Any]:
    return {
        "id": event_id, "type": "cirelay.job.running", "source": "/ci/queues/q",
        "subject": None, "job_id": job_id, "time": EAST,
        "data": {"state": "Running", "previous_state": None, "n": [1, 2.5, "x"]},
    }  # fmt: skip


def raw(engine: Engine, table: sa.Table, key: str, value: Any) -> dict[str, Any]:
    """One row as the driver returns it (no SQLAlchemy type processing)."""
    with engine.connect() as conn:
        result = conn.exec_driver_sql(
            f"SELECT * FROM {table.name} WHERE {key} = "
            + ("?" if conn.dialect.paramstyle == "qmark" else "%(v)s"),
            (value,) if conn.dialect.paramstyle == "qmark" else {"v": value},
        )
        return dict(result.mappings().one())


def write(engine: Engine, action: Callable[[sa.Connection], None]) -> None:
    with store.transaction(engine) as conn:
        action(conn)


@pytest.mark.parametrize("ci_job_id", [None, "j" + "1" * 32])
def test_inserted_jobs_are_stored_as_sqlalchemy_stores_them(
    engine: Engine, ci_job_id: str | None
) -> None:
    write(engine, lambda conn: conn.execute(sa.insert(store.jobs), [job_row("job_a", None)]))
    write(engine, lambda conn: store.insert_jobs(conn, [job_row("job_b", ci_job_id)]))

    by_sqlalchemy = raw(engine, store.jobs, "id", "job_a")
    batched = raw(engine, store.jobs, "id", "job_b")
    assert {**batched, "id": "job_a", "ci_job_id": None} == by_sqlalchemy
    assert batched["ci_job_id"] == ci_job_id


def test_updated_jobs_are_stored_as_sqlalchemy_stores_them(engine: Engine) -> None:
    write(engine, lambda conn: store.insert_jobs(conn, [job_row("job_a", None)]))
    write(engine, lambda conn: store.insert_jobs(conn, [job_row("job_b", None)]))
    changes = {
        "state": "Success", "detail": {"output": {"au_object": "v.m4a"}}, "ci_ended_at": EAST,
        "message": None, "updated_at": NOW + timedelta(seconds=3),
    }  # fmt: skip
    write(
        engine,
        lambda conn: conn.execute(
            sa.update(store.jobs).where(store.jobs.c.id == "job_a").values(changes)
        ),
    )
    write(engine, lambda conn: store.update_jobs(conn, [("job_b", changes)]))

    assert {**raw(engine, store.jobs, "id", "job_b"), "id": "job_a"} == raw(
        engine, store.jobs, "id", "job_a"
    )


def test_jobs_changing_different_columns_each_get_their_own_columns(engine: Engine) -> None:
    """One batch, three jobs, two different sets of changed columns: one executemany per
    set, and no job gets another's columns."""
    write(engine, lambda conn: store.insert_jobs(conn, [job_row(f"job_{n}", None) for n in "abc"]))
    later = NOW + timedelta(seconds=9)
    changes = [
        ("job_a", {"last_notified_at": later}),
        ("job_b", {"state": "Failed", "code": "E1", "last_notified_at": later}),
        ("job_c", {"last_notified_at": later}),
    ]
    updates: list[int] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, context: Any,
                many: bool) -> None:  # fmt: skip
        if statement.startswith("UPDATE jobs"):
            updates.append(len(params) if many else 1)

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        write(engine, lambda conn: store.update_jobs(conn, changes))
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)

    assert sorted(updates) == [1, 2]  # job_b alone; job_a and job_c together
    with engine.connect() as conn:
        stored = {n: store.get_job(conn, f"job_{n}") for n in "abc"}
    assert {n: (j.state, j.code, j.last_notified_at) for n, j in stored.items() if j} == {
        "a": ("Running", None, later),
        "b": ("Failed", "E1", later),
        "c": ("Running", None, later),
    }


def test_notifications_and_events_are_stored_as_sqlalchemy_stores_them(engine: Engine) -> None:
    write(engine, lambda conn: store.insert_jobs(conn, [job_row("job_a", None)]))
    first_row = notification_row("job_a", "d1")
    write(engine, lambda conn: conn.execute(sa.insert(store.notifications), [first_row]))
    write(engine, lambda conn: store.insert_notifications(conn, [notification_row("job_a", "d2")]))
    write(engine, lambda conn: conn.execute(sa.insert(store.events), [event_row("evt_1", "job_a")]))
    write(engine, lambda conn: store.insert_events(conn, [event_row("evt_2", "job_a")]))

    first, second = (raw(engine, store.notifications, "digest", d) for d in ("d1", "d2"))
    assert second["id"] == first["id"] + 1
    assert {**second, "id": first["id"], "digest": "d1"} == first
    first, second = (raw(engine, store.events, "id", e) for e in ("evt_1", "evt_2"))
    assert second["seq"] == first["seq"] + 1
    assert {**second, "seq": first["seq"], "id": "evt_1"} == first
    with engine.connect() as conn:
        (event,) = [e for e in store.list_events(conn, after=0, limit=10) if e.id == "evt_2"]
    assert event.time == EAST and event.data["n"] == [1, 2.5, "x"]


def test_a_batched_write_that_breaks_a_constraint_raises_sqlalchemys_error(
    engine: Engine,
) -> None:
    """The committer tells a conflict (retry one by one) from a database that is down by
    SQLAlchemy's exception types, so the batched writes must raise them too."""
    write(engine, lambda conn: store.insert_jobs(conn, [job_row("job_a", None)]))
    rows = [notification_row("job_a", "same"), notification_row("job_a", "same")]
    with pytest.raises(sa.exc.IntegrityError):
        write(engine, lambda conn: store.insert_notifications(conn, rows))
    assert counts(engine)["notifications"] == 0


def test_a_conflict_in_pipelined_writes_raises_sqlalchemys_error(engine: Engine) -> None:
    """On PostgreSQL the batch's writes go to the server together and fail at the end of
    the block: still as SQLAlchemy's IntegrityError, with nothing of the block written."""
    write(engine, lambda conn: store.insert_jobs(conn, [job_row("job_a", None)]))

    def conflicting(conn: sa.Connection) -> None:
        with store.pipelined(conn):
            store.insert_events(conn, [event_row("evt_1", "job_a")])
            store.insert_notifications(conn, [notification_row("job_a", "same")] * 2)

    with pytest.raises(sa.exc.IntegrityError):
        write(engine, conflicting)
    assert (counts(engine)["notifications"], counts(engine)["events"]) == (0, 0)
    write(engine, lambda conn: store.insert_notifications(conn, [notification_row("job_a", "ok")]))
    assert counts(engine)["notifications"] == 1  # the connection is usable afterwards


def test_json_columns_take_what_the_standard_library_takes(engine: Engine) -> None:
    """JSON is written by orjson, with the standard library behind it for what orjson
    refuses: keys that are not strings, integers over 64 bits. What neither encodes still
    fails the write."""
    odd = {"input": {1: "one", "big": 2**70, "text": "né ✓", "nested": [None, 1.5, True]}}
    row = job_row("job_a", None) | {"detail": odd}
    write(engine, lambda conn: store.insert_jobs(conn, [row]))
    with engine.connect() as conn:
        stored = store.get_job(conn, "job_a")
    assert stored is not None
    assert stored.input == {"1": "one", "big": 2**70, "text": "né ✓", "nested": [None, 1.5, True]}
    bad = job_row("job_b", None) | {"detail": {"when": NOW}}
    with pytest.raises(TypeError, match="Object of type datetime is not JSON serializable"):
        write(engine, lambda conn: store.insert_jobs(conn, [bad]))


def test_json_text_orjson_refuses_is_still_read() -> None:
    assert store.json_loads('{"x": NaN}')["x"] != store.json_loads('{"x": NaN}')["x"]  # NaN
    assert store.json_loads(b'{"x": [1, "\\u00e9"]}') == {"x": [1, "é"]}
    assert store.json_dumps({"k": "é"}) == '{"k":"é"}'
