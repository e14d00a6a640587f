"""API keys with names and scopes: a ``read`` key reads and never sees a callback token, only
an ``admin`` key changes anything, and the logs name the key, never show it."""

from __future__ import annotations

import logging
from dataclasses import replace

import pytest
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from app import Services, build_services
from app.config import Settings
from app.schemas import SchemaSet
from tests.conftest import API_KEY, Clock, ci_job_id, counts, make_job

READ_KEY = "reader-key-0123456789abcdef"
OPS_KEY = "ops-admin-key-0123456789abcdef"
READ = {"Authorization": f"Bearer {READ_KEY}"}
OPS = {"Authorization": f"Bearer {OPS_KEY}"}
HOOK = "http://127.0.0.1:9/hooks"


@pytest.fixture
def services(
    settings: Settings, engine: Engine, schemas: SchemaSet, registry: CollectorRegistry,
    clock: Clock,
) -> Services:  # fmt: skip
    """A bare key (admin, named key1, as before names existed), a read key and a named admin
    key; loopback subscribers allowed."""
    keyed = replace(
        settings,
        api_keys=(API_KEY, f"dashboard:read:{READ_KEY}", f"ops:admin:{OPS_KEY}"),
        delivery_allowed_networks=("127.0.0.0/8",),
    )
    return build_services(keyed, registry=registry, engine=engine, schemas=schemas, clock=clock)


@pytest.fixture
def api_job(engine: Engine, clock: Clock) -> str:
    """A job cirelay submitted: its CallBack URL carries its token."""
    make_job(engine, "job_01KEYS", clock.now, ci_id=ci_job_id(1))
    return "job_01KEYS"


def test_a_read_key_reads_but_never_sees_a_callback_token(
    client: FlaskClient, auth: dict[str, str], api_job: str
) -> None:
    one = client.get(f"/v1/jobs/{api_job}", headers=READ)
    assert one.status_code == 200 and one.json["id"] == api_job
    assert "callback_url" not in one.json
    (listed,) = client.get("/v1/jobs", headers=READ).json["jobs"]
    assert listed["id"] == api_job and "callback_url" not in listed
    for body in (one.get_data(as_text=True), client.get("/v1/jobs", headers=READ).text):
        assert "/callbacks/ci/" not in body

    for admin in (auth, OPS):  # a bare key is admin, as every key was before scopes
        shown = client.get(f"/v1/jobs/{api_job}", headers=admin).json
        assert shown["callback_url"].startswith(f"http://cirelay.test/callbacks/ci/{api_job}/")
        (listed,) = client.get("/v1/jobs", headers=admin).json["jobs"]
        assert listed["callback_url"] == shown["callback_url"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/subscriptions", {"url": HOOK}),
        ("PATCH", "/v1/subscriptions/{sub}", {"enabled": False}),
        ("DELETE", "/v1/subscriptions/{sub}", None),
        ("POST", "/v1/subscriptions/{sub}/rotate-secret", {}),
        ("POST", "/v1/subscriptions/{sub}/replay", {"since": "2024-11-18T12:00:00Z"}),
        ("POST", "/v1/jobs", {"input": {"object": "songs/a.wav"}}),
    ],
)
def test_a_read_key_changing_anything_is_403_and_changes_nothing(
    client: FlaskClient, engine: Engine, method: str, path: str, body: object
) -> None:
    sub = client.post("/v1/subscriptions", json={"url": HOOK}, headers=OPS).json["id"]
    before = counts(engine)
    response = client.open(path.format(sub=sub), method=method, json=body, headers=READ)
    assert response.status_code == 403
    assert response.json["error"] == "insufficient_scope"
    assert "dashboard" in response.json["message"] and READ_KEY not in response.text
    assert counts(engine) == before
    assert client.get(f"/v1/subscriptions/{sub}", headers=READ).json["enabled"] is True


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {READ_KEY[:-1]}",
        f"Bearer {READ_KEY}x",
        f"Basic {READ_KEY}",
        f"dashboard:read:{READ_KEY}",
        f"Bearer dashboard:read:{READ_KEY}",
        "Bearer key1",
        "Bearer \u00e9\u00e9",
        "Bearer ",
    ],
)
def test_anything_but_a_key_itself_is_401(client: FlaskClient, header: str) -> None:
    response = client.get("/v1/jobs", headers={"Authorization": header})
    assert response.status_code == 401 and response.json["error"] == "unauthorized"


def test_who_did_what_names_the_key_and_never_shows_it(
    client: FlaskClient, auth: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sub = client.post("/v1/subscriptions", json={"url": HOOK}, headers=OPS).json["id"]
    client.patch(f"/v1/subscriptions/{sub}", json={"description": "x"}, headers=auth)
    client.post(f"/v1/subscriptions/{sub}/replay", json={"since": "2024-11-18T12:00:00Z"},
                headers=OPS)  # fmt: skip
    client.delete(f"/v1/subscriptions/{sub}", headers=OPS)
    client.delete(f"/v1/subscriptions/{sub}", headers=READ)

    who = [(r.getMessage().split(":")[0], getattr(r, "api_key", None)) for r in caplog.records
           if " by " in r.getMessage()]  # fmt: skip
    assert who == [
        ("subscription created by ops", "ops"),
        ("subscription updated by key1", "key1"),
        ("replay started by ops", "ops"),
        ("subscription deleted by ops", "ops"),
    ]
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for key in (API_KEY, READ_KEY, OPS_KEY):
        assert key not in logged
