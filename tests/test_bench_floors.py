"""The benchmark's transaction floor (``bench/floor_app.py:transaction_application``) does
what it stands for: issue 2 section 4's transaction at the least — the raw notification, the
job's new state and an event together, a repeated notification recorded once, states only
forward. Its figure bounds cirelay's on SQLite (README, "Speed"), so it is checked like code."""

from __future__ import annotations

import contextlib
import io
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from app import store
from app.migrations import upgrade
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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cirelay_url = f"sqlite:///{tmp_path / 'cirelay.db'}"
    engine = store.create_engine(cirelay_url)
    upgrade(engine)
    now = datetime(2026, 12, 6, tzinfo=UTC)
    for n in (1, 2):
        make_job(engine, f"job_0{n}", now, ci_id=ci_job_id(n))
    engine.dispose()
    floor_db = tmp_path / "floor-tx.db"
    monkeypatch.setenv("FLOOR_SQLITE_PATH", str(floor_db))
    monkeypatch.setenv("FLOOR_JOBS_DATABASE_URL", cirelay_url)
    from bench import floor_app

    app = floor_app.transaction_application
    assert post(app, "job_01", notification_xml(ci_job_id(1), state="Running")) == "200 OK"
    assert post(app, "job_01", notification_xml(ci_job_id(1), state="Success")) == "200 OK"
    assert post(app, "job_01", notification_xml(ci_job_id(1), state="Success")) == "200 OK"
    late = notification_xml(ci_job_id(1), state="Running", UserData="late")
    assert post(app, "job_01", late) == "200 OK"
    assert post(app, "job_02", "<Response><JobsDetail/></Response>").startswith("400")
    assert post(app, "job_02", "<Response>").startswith("400")  # not even well-formed

    with contextlib.closing(sqlite3.connect(floor_db)) as db:
        states = dict(db.execute("SELECT id, state FROM j").fetchall())
        notes = db.execute("SELECT job, state, outcome FROM n ORDER BY id").fetchall()
        events = db.execute("SELECT job_id, type FROM e ORDER BY seq").fetchall()
    assert states == {"job_01": "Success", "job_02": "Submitted"}
    assert notes == [
        ("job_01", "Running", "accepted"),
        ("job_01", "Success", "accepted"),
        ("job_01", "Running", "stale"),  # kept, the job not moved back; the repeat is not
    ]
    assert events == [("job_01", "job.running"), ("job_01", "job.success")]
