"""The benchmark's transaction floor (``bench/floor_app.py:transaction_application``) does
what it stands for: issue 2 section 4's transaction at the least — the raw notification, the
job's new state and an event together, a repeated notification recorded once, states only
forward — on SQLite and on PostgreSQL, where it also locks the job rows and holds an events
lock as a fleet needs (not observable from one thread; ``bench/floor_app.py`` shows them). Its
figure bounds cirelay's (README, "Speed"), so it is checked like code."""

from __future__ import annotations

import contextlib
import io
import queue
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from tests.conftest import ci_job_id, make_job, notification_xml


def post(app: Any, job_id: str, body: str) -> str:
    raw = body.encode()
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": f"/callbacks/ci/{job_id}/token",
        "CONTENT_LENGTH": str(len(raw)),
        "CONTENT_TYPE": "application/xml",
        "wsgi.input": io.BytesIO(raw),
    }
    statuses: list[str] = []
    b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    return statuses[0]


def test_the_transaction_floor_records_state_event_and_notification_once(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    now = datetime(2026, 12, 6, tzinfo=UTC)
    for n in (1, 2):
        make_job(engine, f"job_0{n}", now, ci_id=ci_job_id(n))
    postgresql = engine.dialect.name == "postgresql"
    if postgresql:  # the floor's tables live beside cirelay's, as in the benchmark: not after

        def drop_floor_tables() -> None:
            with engine.begin() as conn:
                conn.execute(sa.text("DROP TABLE IF EXISTS floor_tx_n, floor_tx_j, floor_tx_e"))

        drop_floor_tables()
        request.addfinalizer(drop_floor_tables)
    monkeypatch.setenv("CIRELAY_DATABASE_URL", engine.url.render_as_string(hide_password=False))
    floor_db = tmp_path / "floor-tx.db"
    monkeypatch.setenv("FLOOR_SQLITE_PATH", str(floor_db))
    monkeypatch.setenv("FLOOR_JOBS_DATABASE_URL", str(engine.url))
    from bench import floor_app

    # a committer thread of this test's own (one of an earlier test serves its own queue)
    monkeypatch.setattr(floor_app, "_tx_queue", queue.SimpleQueue())
    monkeypatch.setattr(floor_app, "_tx_started", [0])
    app = floor_app.transaction_application
    assert post(app, "job_01", notification_xml(ci_job_id(1), state="Running")) == "200 OK"
    assert post(app, "job_01", notification_xml(ci_job_id(1), state="Success")) == "200 OK"
    assert post(app, "job_01", notification_xml(ci_job_id(1), state="Success")) == "200 OK"
    late = notification_xml(ci_job_id(1), state="Running", UserData="late")
    assert post(app, "job_01", late) == "200 OK"
    assert post(app, "job_02", "<Response><JobsDetail/></Response>").startswith("400")
    assert post(app, "job_02", "<Response>").startswith("400")  # not even well-formed

    queries = (
        "SELECT id, state FROM {j}",
        "SELECT job, state, outcome FROM {n} ORDER BY id",
        "SELECT job_id, type FROM {e} ORDER BY seq",
    )
    if postgresql:
        names = {"j": "floor_tx_j", "n": "floor_tx_n", "e": "floor_tx_e"}
        with engine.connect() as conn:
            found = [conn.execute(sa.text(q.format(**names))).all() for q in queries]
    else:
        with contextlib.closing(sqlite3.connect(floor_db)) as db:
            found = [db.execute(q.format(j="j", n="n", e="e")).fetchall() for q in queries]
    states, notes, events = ([tuple(row) for row in rows] for rows in found)
    assert dict(states) == {"job_01": "Success", "job_02": "Submitted"}
    assert notes == [
        ("job_01", "Running", "accepted"),
        ("job_01", "Success", "accepted"),
        ("job_01", "Running", "stale"),  # kept, the job not moved back; the repeat is not
    ]
    assert events == [("job_01", "job.running"), ("job_01", "job.success")]


@pytest.mark.outbox_unchecked  # events of its own making: the floor relays whatever is there
def test_the_broker_floor_publishes_each_new_event_once_after_noting_it(
    engine: Engine, tmp_path: Path
) -> None:
    """``bench/broker_floor.py --commit`` (the floor of ``bench/delivery.py --broker nats``):
    every event committed after it starts reaches the real JetStream stream once, with its id
    as ``Nats-Msg-Id``, its time and its type's subject, after a durable note of it."""
    if engine.dialect.name != "sqlite":
        pytest.skip("the floor reads cirelay's SQLite database")
    import subprocess
    import sys
    import time

    from app import store
    from app.models import new_id
    from tests.brokers.brokers import JetStream

    def event(n: int) -> dict[str, Any]:
        at = datetime(2026, 12, 6, 12, 0, n, 250000, tzinfo=UTC)
        return {"id": new_id("evt", at), "type": "com.cirelay.job.succeeded", "time": at,
                "source": "/test", "subject": ci_job_id(n), "job_id": None,
                "data": {"n": n}}  # fmt: skip

    database = engine.url.database
    assert database is not None
    before = event(0)
    with store.transaction(engine) as conn:
        store.insert_event(conn, before)
    with JetStream.make() as stream:
        relay = subprocess.Popen(
            [sys.executable, "bench/broker_floor.py", database, stream.url(), "--commit"],
            stdout=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            with contextlib.closing(sqlite3.connect(database)) as db:
                while not db.execute(
                    "SELECT 1 FROM sqlite_master WHERE name = 'floor_sent'"
                ).fetchone():
                    assert time.monotonic() < deadline and relay.poll() is None
                    time.sleep(0.05)
            events = [event(n) for n in (1, 2, 3)]
            with store.transaction(engine) as conn:
                store.insert_events(conn, events)
            received = stream.wait_for(3)
        finally:
            relay.terminate()
            relay.wait(10)
        with contextlib.closing(sqlite3.connect(database)) as db:
            noted = [row[0] for row in db.execute("SELECT seq FROM floor_sent ORDER BY seq")]
    assert [m.headers["Nats-Msg-Id"] for m in received] == [e["id"] for e in events]
    assert [m.event().get_time() for m in received] == [e["time"] for e in events]
    assert {m.topic for m in received} == {f"{stream.prefix}.job.succeeded"}
    with engine.connect() as conn:
        seqs = [e.seq for e in store.list_events(conn) if e.id != before["id"]]
    assert noted == seqs
