"""The ingest path against real databases: one transaction, nothing half-written, nothing
counted twice, also under concurrency."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy.engine import Engine

from app import Services, events, store
from app.models import Outcome, Received, Source
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


def test_one_batch_with_jobs_that_learn_their_ci_id_and_jobs_that_know_it(
    engine: Engine, clock: Clock
) -> None:
    """The batch writes the CI JobId only for the jobs that learn it (a second UPDATE),
    and every job ends in its notified state with the right CI JobId."""
    from app import jobs
    from app.notifications import parse_notification
    from app.schemas import SchemaSet

    schemas = SchemaSet.load()
    make_job(engine, "job_01", clock.now)  # submitted, CI's JobId not known yet
    make_job(engine, "job_02", clock.now, ci_id=ci_job_id(2))
    make_job(engine, "job_03", clock.now)
    items = [
        jobs.Pending(
            parse_notification(body.encode(), "application/xml", schemas),
            received(body, job),
            clock.now,
        )
        for job, body in [
            ("job_01", notification_xml(ci_job_id(1))),
            ("job_02", notification_xml(ci_job_id(2), state="Running")),
            ("job_03", notification_xml(ci_job_id(3), state="Failed")),
        ]
    ]
    with store.transaction(engine) as conn:
        outcomes = jobs.apply_batch(conn, items)
    assert all(not isinstance(o, Exception) for o in outcomes)
    assert [[r.outcome for r in o] for o in outcomes if isinstance(o, list)] == [
        [Outcome.ACCEPTED]
    ] * 3
    with engine.connect() as conn:
        stored = {j: store.get_job(conn, j) for j in ("job_01", "job_02", "job_03")}
    assert {j: (s.ci_job_id, s.state) for j, s in stored.items() if s} == {
        "job_01": (ci_job_id(1), "Success"),
        "job_02": (ci_job_id(2), "Running"),
        "job_03": (ci_job_id(3), "Failed"),
    }
