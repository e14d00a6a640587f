from __future__ import annotations

from pathlib import Path

from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry

from app import build_services, create_app, store
from app.config import Settings
from app.schemas import SchemaSet


def test_healthz(client: FlaskClient) -> None:
    assert client.get("/healthz").json == {"status": "ok"}


def test_readyz_when_database_and_schemas_are_there(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json["checks"] == {"database": "ok", "schemas": "ok"}


def test_readyz_is_503_when_the_database_is_unreachable(
    tmp_path: Path, settings: Settings, schemas: SchemaSet
) -> None:
    missing = tmp_path / "no-such-dir" / "db.sqlite"
    engine = store.create_engine(f"sqlite:///{missing}")
    services = build_services(
        settings, registry=CollectorRegistry(), engine=engine, schemas=schemas
    )
    client = create_app(services=services).test_client()

    response = client.get("/readyz")

    assert response.status_code == 503
    assert response.json["checks"]["database"] == "unreachable"
    assert client.get("/healthz").status_code == 200


def test_metrics_exposition_has_every_outcome_at_zero(client: FlaskClient) -> None:
    text = client.get("/metrics").get_data(as_text=True)
    for outcome in (
        "accepted", "duplicate", "stale", "schema_violation", "malformed",
        "unauthenticated", "too_large", "unsupported_media_type",
    ):  # fmt: skip
        assert f'cirelay_notifications_total{{outcome="{outcome}"}} 0.0' in text
    assert "cirelay_quarantine_size 0.0" in text


def test_unknown_path_is_json_404(client: FlaskClient) -> None:
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.json["error"] == "not_found"


def test_wrong_method_is_json_405(client: FlaskClient) -> None:
    response = client.get("/callbacks/ci/queue/whatever")
    assert response.status_code == 405
    assert response.json["error"] == "method_not_allowed"
