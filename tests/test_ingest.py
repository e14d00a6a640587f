"""The ingest path against real databases: one transaction, nothing half-written, nothing
counted twice, also under concurrency."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app import Services, events, jobs, store
from app.models import Outcome, Received, Source
from app.notifications import parse_notification
from app.schemas import SchemaSet
from tests.conftest import CORPUS, Clock, ci_job_id, counts, make_job, notification_xml


def received(body: str | bytes, job_id: str | None = None) -> Received:
    return Received(
        body=body.encode() if isinstance(body, str) else body,
        content_type="application/xml",
        headers={},
        source=Source.CALLBACK if job_id else Source.QUEUE,
        job_id=job_id,
    )


def test_a_failure_inside_the_transaction_leaves_nothing_written(
    services: Services, engine: Engine, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_job(engine, "job_01", clock.now, ci_id=ci_job_id(1))
    before = counts(engine)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(events, "job_changed_event", broken)
    with pytest.raises(RuntimeError):
        services.receiver.ingest(received(notification_xml(ci_job_id(1)), "job_01"), clock.now)

    assert counts(engine) == before
    with engine.connect() as conn:
        job = store.get_job(conn, "job_01")
    assert job is not None and job.state == "Submitted"


def test_concurrent_copies_of_one_notification_are_recorded_once(
    services: Services, engine: Engine, clock: Clock
) -> None:
    make_job(engine, "job_01", clock.now, ci_id=ci_job_id(1))
    body = notification_xml(ci_job_id(1))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(
            pool.map(
                lambda _: services.receiver.ingest(received(body, "job_01"), clock.now)[0],
                range(16),
            )
        )

    outcomes = sorted(r.outcome.value for r in results)
    assert outcomes == ["accepted"] + ["duplicate"] * 15
    assert counts(engine)["notifications"] == 1
    assert counts(engine)["events"] == 1


def test_concurrent_queue_notifications_create_one_job(
    services: Services, engine: Engine, clock: Clock
) -> None:
    body = notification_xml(ci_job_id(7))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(
            pool.map(lambda _: services.receiver.ingest(received(body), clock.now)[0], range(8))
        )

    assert sorted(r.outcome.value for r in results) == ["accepted"] + ["duplicate"] * 7
    assert counts(engine)["jobs"] == 1


def test_replay_of_a_quarantined_notification_records_it(
    services: Services, engine: Engine, clock: Clock
) -> None:
    make_job(engine, "job_01", clock.now, ci_id=ci_job_id(1))
    # Imagine CI started sending something the schema did not know yet; here we simulate
    # the "schema fix" by quarantining a body that is valid, as a replay would see it.
    body = notification_xml(ci_job_id(1))
    with store.transaction(engine) as conn:
        from app.models import QuarantinedNotification

        item = store.insert_quarantined(
            conn,
            QuarantinedNotification(
                id=0, received_at=clock.now, source="callback", job_id="job_01",
                content_type="application/xml", headers={}, body=body.encode(),
                error="schema_violation", reasons=[{"path": "/x", "reason": "old schema"}],
                replayed_at=None, replay_outcome=None,
            ),
        )  # fmt: skip

    assert services.receiver.replay(item.id, clock.now) == Outcome.ACCEPTED.value
    with engine.connect() as conn:
        (note,) = store.list_notifications(conn, "job_01")
        replayed = store.get_quarantined(conn, item.id)
    assert note.source == "replay"
    assert replayed is not None and replayed.replay_outcome == "accepted"
    assert services.receiver.replay(item.id, clock.now) == Outcome.DUPLICATE.value


def test_replay_of_a_still_invalid_notification_is_not_quarantined_again(
    services: Services, engine: Engine, clock: Clock
) -> None:
    body = (CORPUS / "notification/invalid").glob("*.xml").__next__().read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - any 400 error
        services.receiver.ingest(received(body), clock.now)
    with engine.connect() as conn:
        (item,) = store.list_quarantined(conn)

    outcome = services.receiver.replay(item.id, clock.now)

    assert outcome in ("schema_violation", "malformed")
    assert counts(engine)["quarantined_notifications"] == 1


def test_a_batch_updates_only_the_job_columns_that_changed(
    engine: Engine, clock: Clock, schemas: SchemaSet
) -> None:
    """One batch: a job that learns its CI JobId, one that knows it, one whose notification
    is stale. Each job ends as notified, and each UPDATE sets only what changed for its job
    (never the id; the CI JobId only where it is learnt; the stale one only the time it was
    last notified) — SQLite rewrites the index of every column an UPDATE sets."""
    make_job(engine, "job_01", clock.now)  # submitted, CI's JobId not known yet
    make_job(engine, "job_02", clock.now, ci_id=ci_job_id(2))
    make_job(engine, "job_03", clock.now, ci_id=ci_job_id(3))
    done = notification_xml(ci_job_id(3), state="Success")
    with store.transaction(engine) as conn:
        jobs.apply_batch(conn, [pending(done, "job_03", clock, schemas)])
    later = clock.now + timedelta(seconds=5)
    items = [
        pending(notification_xml(ci_job_id(1)), "job_01", clock, schemas, at=later),
        pending(notification_xml(ci_job_id(2), state="Running"), "job_02", clock, schemas,
                at=later),
        pending(notification_xml(ci_job_id(3), state="Running"), "job_03", clock, schemas,
                at=later),
    ]  # fmt: skip
    updates: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if statement.lstrip().upper().startswith("UPDATE JOBS"):
            updates.append((statement, params))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        with store.transaction(engine) as conn:
            outcomes = jobs.apply_batch(conn, items)
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)

    assert [[r.outcome for r in o] for o in outcomes if isinstance(o, list)] == [
        [Outcome.ACCEPTED],
        [Outcome.ACCEPTED],
        [Outcome.STALE],
    ]
    set_clauses = sorted(
        statement.split(" SET ", 1)[1].split(" WHERE ", 1)[0] for statement, _ in updates
    )
    columns = [sorted(c.split("=")[0].strip() for c in clause.split(",")) for clause in set_clauses]
    assert ["last_notified_at"] in columns  # the stale notification's job
    assert any("ci_job_id" in c and "state" in c for c in columns)  # job_01 learns its id
    assert any("ci_job_id" not in c and "state" in c for c in columns)  # job_02
    assert all("id" not in c and "origin" not in c for c in columns)
    with engine.connect() as conn:
        stored = {j: store.get_job(conn, j) for j in ("job_01", "job_02", "job_03")}
    assert {j: (s.ci_job_id, s.state, s.last_notified_at) for j, s in stored.items() if s} == {
        "job_01": (ci_job_id(1), "Success", later),
        "job_02": (ci_job_id(2), "Running", later),
        "job_03": (ci_job_id(3), "Success", later),
    }


def pending(
    body: str, job_id: str, clock: Clock, schemas: SchemaSet, *, at: datetime | None = None
) -> jobs.Pending:
    notification = parse_notification(body.encode(), "application/xml", schemas)
    return jobs.Pending(notification, received(body, job_id), at or clock.now)
