"""The admin operations the console shares with the API (``app/operations.py``): retry one
delivery or every one matching a filter (count first with ``dry_run``), quarantine list, show
and replay (one, or every one matching), and the audit log naming the key of each action —
on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from app import Services, build_services, store
from app.config import Settings
from app.models import DeliveryState
from app.schemas import SchemaSet
from tests.conftest import API_KEY, CORPUS, Clock, callback_path, ci_job_id, make_job
from tests.conftest import notification_xml as note

READ_KEY = "read-key-0123456789abcdef"
OPS_KEY = "ops-key-0123456789abcdef"
READ = {"Authorization": f"Bearer {READ_KEY}"}
OPS = {"Authorization": f"Bearer {OPS_KEY}"}
HOOK = "http://127.0.0.1:9/hooks"
XML = {"Content-Type": "application/xml"}


@pytest.fixture
def services(
    settings: Settings, engine: Engine, schemas: SchemaSet, registry: CollectorRegistry,
    clock: Clock,
) -> Services:  # fmt: skip
    keys = (API_KEY, f"viewer:read:{READ_KEY}", f"ops:admin:{OPS_KEY}")
    changed = replace(settings, api_keys=keys, delivery_allowed_networks=("127.0.0.0/8",))
    return build_services(changed, registry=registry, engine=engine, schemas=schemas, clock=clock)


def subscribe(client: FlaskClient) -> str:
    response = client.post("/v1/subscriptions", json={"url": HOOK}, headers=OPS)
    assert response.status_code == 201, response.json
    return str(response.json["id"])


def finished_jobs(client: FlaskClient, engine: Engine, clock: Clock, n: int) -> list[str]:
    """``n`` jobs, each with a Success notification (one event each)."""
    ids = []
    for i in range(n):
        job_id = f"job_{i:02d}"
        make_job(engine, job_id, clock.now)
        response = client.post(callback_path(job_id), data=note(ci_job_id(i)), headers=XML)
        assert response.status_code == 200, response.json
        ids.append(job_id)
    return ids


def deliveries_failed(services: Services, sub_id: str) -> list[int]:
    """Fan the events out to the subscription and give every delivery up, as a worker does
    after its last retry (the store's own claim and finish)."""
    now = services.clock()
    with store.transaction(services.engine) as conn:
        subscription = store.get_subscription(conn, sub_id)
        assert subscription is not None
        store.fan_out(conn, subscription, limit=100, now=now)
        claims = store.claim_deliveries(
            conn, now=now, owner="w", lease_until=now + timedelta(seconds=30), limit=100
        )
        updates = [
            {"id": c.delivery_id, "state": DeliveryState.FAILED.value, "attempts": 3,
             "next_attempt_at": now, "completed_at": now, "last_status_code": 503,
             "last_error": "unavailable"}
            for c in claims
        ]  # fmt: skip
        store.finish_attempts(conn, "w", updates, [])
    return [c.delivery_id for c in claims]


def states(client: FlaskClient, sub_id: str, **query: str) -> dict[int, str]:
    response = client.get(f"/v1/subscriptions/{sub_id}/deliveries", query_string=query,
                          headers=READ)  # fmt: skip
    assert response.status_code == 200, response.json
    return {d["id"]: d["state"] for d in response.json["deliveries"]}


def audit(client: FlaskClient, **query: str) -> list[dict[str, Any]]:
    response = client.get("/v1/audit", query_string=query, headers=READ)
    assert response.status_code == 200, response.json
    entries: list[dict[str, Any]] = response.json["audit"]
    return entries


def test_retry_all_failed_counts_first_then_sends_them_again_and_is_audited(
    client: FlaskClient, engine: Engine, clock: Clock, services: Services
) -> None:
    sub = subscribe(client)
    jobs = finished_jobs(client, engine, clock, 2)
    failed = deliveries_failed(services, sub)
    assert len(failed) == 2 and set(states(client, sub).values()) == {"failed"}
    path = f"/v1/subscriptions/{sub}/deliveries/retry"

    one_job = {"state": ["failed"], "job_id": jobs[0]}
    counted = client.post(path, json=one_job | {"dry_run": True}, headers=OPS)
    assert counted.status_code == 200 and counted.json == {"matching": 1}
    assert set(states(client, sub).values()) == {"failed"}  # a count changes nothing

    clock.now += timedelta(minutes=1)
    done = client.post(path, json={"state": "failed"}, headers=OPS)
    assert done.status_code == 202 and done.json == {"retried": 2, "remaining": 0}
    assert set(states(client, sub).values()) == {"pending"}
    with engine.connect() as conn:
        assert store.has_claimable(conn, clock.now)  # due now: a worker sends them
    (entry,) = audit(client, action="deliveries retried")
    assert entry["actor"] == "ops" and entry["via"] == "api" and entry["subject"] == sub
    assert entry["details"] == {"filter": {"subscription_id": sub, "states": ["failed"]},
                                "retried": 2}  # fmt: skip

    # the count shown first is what the retry then takes: never a delivery that succeeded
    with engine.begin() as conn:
        conn.execute(store.deliveries.update().where(store.deliveries.c.id == failed[0])
                     .values(state="succeeded"))  # fmt: skip
    assert client.post(path, json={"dry_run": True}, headers=OPS).json == {"matching": 1}
    nothing = {"state": "succeeded", "dry_run": True}
    assert client.post(path, json=nothing, headers=OPS).json == {"matching": 0}
    again = client.post(path, json={}, headers=OPS)
    assert again.json == {"retried": 1, "remaining": 0}


def test_retry_one_and_what_it_refuses(
    client: FlaskClient, engine: Engine, clock: Clock, services: Services
) -> None:
    sub, other = subscribe(client), subscribe(client)
    finished_jobs(client, engine, clock, 2)
    first, _ = deliveries_failed(services, sub)
    base = f"/v1/subscriptions/{sub}/deliveries"

    assert client.post(f"{base}/{first}/retry", headers=READ).status_code == 403
    assert client.post(f"/v1/subscriptions/{other}/deliveries/{first}/retry",
                       headers=OPS).status_code == 404  # fmt: skip
    response = client.post(f"{base}/{first}/retry", headers=OPS)
    assert response.status_code == 202 and response.json == {"retried": 1}
    assert states(client, sub)[first] == "pending"
    assert states(client, sub, state="failed") and first not in states(client, sub, state="failed")
    bad = client.post(f"{base}/retry", json={"state": "lost", "created_after": "x"}, headers=OPS)
    assert bad.status_code == 400
    assert {d["field"] for d in bad.json["details"]} == {"state", "created_after"}
    assert client.post(f"{base}/retry", json={"what": 1}, headers=OPS).status_code == 422
    assert client.post(f"{base}/retry", json=["x"], headers=OPS).status_code == 422
    assert client.post("/v1/subscriptions/sub_x/deliveries/retry", json={},
                       headers=OPS).status_code == 404  # fmt: skip


def test_deliveries_filter_by_job_and_time(
    client: FlaskClient, engine: Engine, clock: Clock, services: Services
) -> None:
    sub = subscribe(client)
    jobs = finished_jobs(client, engine, clock, 2)
    deliveries_failed(services, sub)
    assert len(states(client, sub, job_id=jobs[1])) == 1
    assert states(client, sub, created_after="2024-11-18T13:00:01Z") == {}
    assert len(states(client, sub, created_before="2024-11-18T13:00:01Z")) == 2
    bad = client.get(f"/v1/subscriptions/{sub}/deliveries?created_before=soon", headers=READ)
    assert bad.status_code == 400


INVALID = (CORPUS / "notification/invalid/state-not-in-enum.xml").read_bytes()


def test_quarantine_list_show_and_replay(client: FlaskClient, engine: Engine, clock: Clock) -> None:
    make_job(engine, "job_q1", clock.now)
    body = INVALID.replace(b"j6d67510d4c4f15952ca66bc47f5b1ea3", ci_job_id(7).encode())
    assert client.post(callback_path("job_q1"), data=body, headers=XML).status_code == 400
    listed = client.get("/v1/quarantine?error=schema_violation&pending=true", headers=READ)
    assert listed.status_code == 200
    (item,) = listed.json["quarantined"]
    assert item["job_id"] == "job_q1" and "body" not in item
    shown = client.get(f"/v1/quarantine/{item['id']}", headers=READ).json
    assert shown["body"] == body.decode() and shown["reasons"][0]["path"].endswith("/State")
    assert client.get("/v1/quarantine?error=nope", headers=READ).status_code == 400
    assert client.get("/v1/quarantine/999", headers=READ).status_code == 404

    assert client.post(f"/v1/quarantine/{item['id']}/replay", headers=READ).status_code == 403
    replayed = client.post(f"/v1/quarantine/{item['id']}/replay", headers=OPS)
    assert replayed.json == {"id": item["id"], "outcome": "schema_violation"}
    counted = client.post("/v1/quarantine/replay", json={"job_id": "job_q1", "dry_run": True},
                          headers=OPS)  # fmt: skip
    assert counted.json == {"matching": 1}
    pending = client.post("/v1/quarantine/replay", json={"pending": True}, headers=OPS)
    assert pending.json == {"replayed": 0, "outcomes": {}, "remaining": 0}
    everything = client.post("/v1/quarantine/replay", json={}, headers=OPS)
    assert everything.json == {"replayed": 1, "outcomes": {"schema_violation": 1}, "remaining": 0}
    assert [e["action"] for e in audit(client, actor="ops")] == ["quarantine replayed"] * 3


def test_a_bounded_replay_of_everything_reaches_every_match_round_after_round(
    client: FlaskClient, services: Services, engine: Engine, clock: Clock
) -> None:
    """"Replay all" takes at most a batch a round; the next round takes the rest, not the
    same batch again (the never-replayed first, then those replayed longest ago)."""
    from app import operations
    from app.models import Actor, QuarantineFilter

    for n in (1, 2):
        make_job(engine, f"job_r{n}", clock.now)
        body = INVALID.replace(b"j6d67510d4c4f15952ca66bc47f5b1ea3", ci_job_id(n).encode())
        assert client.post(callback_path(f"job_r{n}"), data=body, headers=XML).status_code == 400
    ops = Actor("ops", "api")
    rounds = []
    for _ in range(3):
        clock.now += timedelta(seconds=1)
        done = operations.replay_quarantined_matching(
            services.receiver, QuarantineFilter(), ops, clock.now, limit=1
        )
        assert done["replayed"] == 1 and done["remaining"] == 1
        with engine.connect() as conn:
            replayed = [q for q in store.list_quarantined(conn, limit=10) if q.replayed_at]
        rounds.append(max(replayed, key=lambda q: q.replayed_at or clock.now).job_id)
    assert rounds == ["job_r1", "job_r2", "job_r1"]


def test_every_admin_action_is_audited_with_the_key_name(client: FlaskClient) -> None:
    sub = subscribe(client)
    client.patch(f"/v1/subscriptions/{sub}", json={"description": "x"}, headers=OPS)
    client.post(f"/v1/subscriptions/{sub}/rotate-secret", json={"grace_seconds": 60}, headers=OPS)
    client.post(f"/v1/subscriptions/{sub}/replay", json={"since": "2024-11-18T12:00:00Z"},
                headers={"Authorization": f"Bearer {API_KEY}"})  # fmt: skip
    client.delete(f"/v1/subscriptions/{sub}", headers=OPS)
    client.delete(f"/v1/subscriptions/{sub}", headers=OPS)  # 404: nothing happened, no entry
    entries = audit(client)
    assert [(e["action"], e["actor"]) for e in entries] == [
        ("subscription deleted", "ops"),
        ("replay started", "key1"),
        ("subscription secret rotated", "ops"),
        ("subscription updated", "ops"),
        ("subscription created", "ops"),
    ]
    assert all(e["subject"] == sub for e in entries)
    assert entries[2]["details"] == {"grace_seconds": 60}
    text = str(entries)
    assert OPS_KEY not in text and "whsec_" not in text
    assert audit(client, limit="2")[1]["action"] == "replay started"
    assert client.get("/v1/audit?limit=0", headers=READ).status_code == 400
