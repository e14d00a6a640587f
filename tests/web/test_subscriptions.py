"""/v1/subscriptions: CRUD, secrets shown once, rotation, SSRF checks when saving."""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from app import Services, build_services
from app.config import Settings
from app.schemas import SchemaSet
from tests.conftest import Clock

HOOK = "http://127.0.0.1:9/hooks"


@pytest.fixture
def services(
    settings: Settings, engine: Engine, schemas: SchemaSet, registry: CollectorRegistry,
    clock: Clock,
) -> Services:  # fmt: skip
    """The tests' subscribers listen on loopback, so loopback is allowed (as in CI)."""
    allowed = replace(settings, delivery_allowed_networks=("127.0.0.0/8",))
    return build_services(allowed, registry=registry, engine=engine, schemas=schemas, clock=clock)


def create(client: FlaskClient, auth: dict[str, str], **body: object) -> dict:  # type: ignore[type-arg]
    response = client.post("/v1/subscriptions", json={"url": HOOK, **body}, headers=auth)
    assert response.status_code == 201, response.json
    return dict(response.json)


def test_create_returns_the_secret_once_in_standard_webhooks_form(
    client: FlaskClient, auth: dict[str, str]
) -> None:
    created = create(client, auth, event_types=["com.cirelay.job.*"], description="billing")

    assert created["secret"].startswith("whsec_")
    assert len(base64.b64decode(created["secret"].removeprefix("whsec_"))) == 24
    fetched = client.get(f"/v1/subscriptions/{created['id']}", headers=auth).json
    assert "secret" not in fetched
    assert fetched["event_types"] == ["com.cirelay.job.*"] and fetched["enabled"] is True
    listed = client.get("/v1/subscriptions", headers=auth).json["subscriptions"]
    assert [s["id"] for s in listed] == [created["id"]] and "secret" not in listed[0]


def test_default_event_types_is_everything(client: FlaskClient, auth: dict[str, str]) -> None:
    assert create(client, auth)["event_types"] == ["*"]


def test_update_and_delete(client: FlaskClient, auth: dict[str, str]) -> None:
    sub = create(client, auth)
    path = f"/v1/subscriptions/{sub['id']}"

    patched = client.patch(path, json={"enabled": False, "description": "paused"}, headers=auth)
    assert patched.status_code == 200
    assert patched.json["enabled"] is False and patched.json["description"] == "paused"
    assert client.delete(path, headers=auth).status_code == 204
    assert client.get(path, headers=auth).status_code == 404
    assert client.delete(path, headers=auth).status_code == 404


def test_rotation_keeps_the_old_secret_for_the_grace_period(
    client: FlaskClient, auth: dict[str, str], clock: Clock
) -> None:
    sub = create(client, auth)
    rotated = client.post(
        f"/v1/subscriptions/{sub['id']}/rotate-secret", json={"grace_seconds": 3600}, headers=auth
    )
    assert rotated.status_code == 200
    assert rotated.json["secret"] != sub["secret"]
    expires = (clock.now + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert rotated.json["previous_secret_expires_at"] == expires


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "ftp://example.org/x"}, "url"),
        ({"url": "http://user:pw@127.0.0.1/x"}, "url"),
        ({"url": "http://10.0.0.1/hook"}, "url"),
        ({"url": "http://169.254.169.254/latest/meta-data"}, "url"),
        ({"url": "http://[::1]/hook"}, "url"),
        ({"url": "http://0.0.0.0/hook"}, "url"),
        ({"url": HOOK, "event_types": []}, "event_types"),
        ({"url": HOOK, "event_types": ["Not A Type"]}, "event_types[0]"),
        ({"url": HOOK, "colour": "red"}, "colour"),
        ({"url": HOOK, "enabled": "yes"}, "enabled"),
    ],
)
def test_invalid_subscriptions_are_422_naming_the_field(
    client: FlaskClient, auth: dict[str, str], body: dict[str, object], field: str
) -> None:
    response = client.post("/v1/subscriptions", json=body, headers=auth)
    assert response.status_code == 422
    assert field in {d["field"] for d in response.json["details"]}


def test_loopback_is_refused_unless_allowed(
    settings: Settings, engine: Engine, schemas: SchemaSet, auth: dict[str, str]
) -> None:
    from app import create_app

    strict = build_services(settings, registry=CollectorRegistry(), engine=engine,
                            schemas=schemas)  # fmt: skip
    response = (
        create_app(services=strict)
        .test_client()
        .post("/v1/subscriptions", json={"url": HOOK}, headers=auth)
    )
    assert response.status_code == 422


def test_subscriptions_need_a_bearer_key(client: FlaskClient) -> None:
    assert client.get("/v1/subscriptions").status_code == 401
