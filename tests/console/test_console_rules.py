"""The console's access rules, in process (the browser tests show the flows): sign-in,
session timeout, sign-out, CSRF on every POST, read keys refused, the Content-Security-Policy,
Secure cookies behind an https proxy, no open redirect after sign-in, htmx polling after the
session ended. Also the pretty-printed bodies with the offending elements marked."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta

import pytest
from flask.testing import FlaskClient
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import Engine

from app import Services, bodies, build_services, create_app
from app.config import Settings
from app.schemas import SchemaSet
from tests.conftest import API_KEY, CORPUS, Clock

READ_KEY = "read-key-0123456789abcdef"


@pytest.fixture
def services(
    settings: Settings, engine: Engine, schemas: SchemaSet, registry: CollectorRegistry,
    clock: Clock,
) -> Services:  # fmt: skip
    keys = (API_KEY, f"viewer:read:{READ_KEY}")
    changed = replace(settings, api_keys=keys, delivery_allowed_networks=("127.0.0.0/8",))
    return build_services(changed, registry=registry, engine=engine, schemas=schemas, clock=clock)


def token(client: FlaskClient, path: str = "/console/sign-in") -> str:
    page = client.get(path).get_data(as_text=True)
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page[:500]
    return match.group(1)


def sign_in(client: FlaskClient, key: str = API_KEY) -> str:
    response = client.post("/console/sign-in", data={"api_key": key, "csrf_token": token(client)})
    assert response.status_code == 303, response.get_data(as_text=True)[:500]
    return token(client, "/console/subscriptions")


def test_pages_need_a_session_and_a_wrong_key_is_refused(client: FlaskClient) -> None:
    response = client.get("/console/jobs?state=Success")
    assert response.status_code == 302
    assert response.headers["Location"].endswith(
        "/console/sign-in?next=/console/jobs?state%3DSuccess"
    )
    wrong = client.post(
        "/console/sign-in", data={"api_key": "nope" * 5, "csrf_token": token(client)}
    )
    assert wrong.status_code == 401 and "not an API key" in wrong.get_data(as_text=True)
    assert client.post("/console/sign-in", data={"api_key": API_KEY}).status_code == 400


def test_the_session_cookie_and_the_policy(client: FlaskClient) -> None:
    sign_in(client)
    cookie = client.get_cookie("cirelay_console")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Strict"
    assert not cookie.secure and API_KEY not in cookie.value
    page = client.get("/console/")
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy
    assert "frame-ancestors 'none'" in policy and page.headers["Cache-Control"] == "no-store"
    assert "<script>" not in page.get_data(as_text=True)  # no inline script
    assert ' style="' not in page.get_data(as_text=True)


def test_sign_in_goes_back_only_to_a_console_page(client: FlaskClient) -> None:
    cases = [
        ("/console/jobs", "/console/jobs"),
        ("https://evil.test/", "/console/"),
        ("//evil.test/console/", "/console/"),
        ("/v1/jobs", "/console/"),
    ]
    for target, expected in cases:
        fresh = client.application.test_client()
        data = {"api_key": API_KEY, "csrf_token": token(fresh), "next": target}
        response = fresh.post("/console/sign-in", data=data)
        assert response.headers["Location"] == expected, target


def test_posts_need_the_csrf_token_and_an_admin_key(client: FlaskClient) -> None:
    csrf = sign_in(client)
    form = {"url": "http://127.0.0.1:9/hook", "event_types": "*"}
    assert client.post("/console/subscriptions", data=form).status_code == 400
    bad = client.post("/console/subscriptions", data=form | {"csrf_token": "forged"})
    assert bad.status_code == 400
    created = client.post("/console/subscriptions", data=form | {"csrf_token": csrf})
    assert created.status_code == 200 and "whsec_" in created.get_data(as_text=True)
    assert created.headers["Cache-Control"] == "no-store"
    # htmx sends the token as a header
    assert (
        client.post("/console/quarantine/replay", headers={"X-CSRFToken": csrf}).status_code == 200
    )

    reader = client.application.test_client()
    read_csrf = sign_in(reader, READ_KEY)
    refused = reader.post("/console/subscriptions", data=form | {"csrf_token": read_csrf})
    assert refused.status_code == 403
    listed = reader.get("/console/subscriptions").get_data(as_text=True)
    assert listed.count('method="post"') == 1  # sign-out only
    assert 'method="post"' in client.get("/console/subscriptions").get_data(as_text=True)


def test_a_session_ends_when_idle_and_at_sign_out(client: FlaskClient, clock: Clock) -> None:
    csrf = sign_in(client)
    clock.now += timedelta(minutes=29)
    assert client.get("/console/").status_code == 200  # a page opened: still active
    for _ in range(4):  # polling alone keeps nobody signed in
        clock.now += timedelta(minutes=10)
        polled = client.get("/console/", headers={"HX-Request": "true"})
    assert polled.status_code == 401 and polled.headers["HX-Redirect"] == "/console/sign-in"
    assert client.get("/console/").status_code == 302

    csrf = sign_in(client)
    assert client.post("/console/sign-out", data={"csrf_token": csrf}).status_code == 303
    assert client.get("/console/").status_code == 302


def test_behind_an_https_proxy_under_a_prefix(services: Services) -> None:
    """The chart's ingress (or any proxy) in front: Secure cookies, links under its prefix."""
    app = create_app(services=replace(services, settings=replace(services.settings, proxy_hops=1)))
    client = app.test_client()
    https = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "relay.example.org",
        "X-Forwarded-Prefix": "/relay",
    }
    first = client.get("/console/jobs", headers=https)
    assert first.headers["Location"] == "/relay/console/sign-in?next=/relay/console/jobs"
    page = client.get("/console/sign-in", headers=https).get_data(as_text=True)
    assert 'href="/relay/console/static/vendor/pico-2.1.1.min.css"' in page
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert csrf
    referer = {"Referer": "https://relay.example.org/relay/console/sign-in"}
    data = {"api_key": API_KEY, "csrf_token": csrf.group(1), "next": "/relay/console/jobs"}
    response = client.post("/console/sign-in", headers=https | referer, data=data)
    assert response.status_code == 303 and response.headers["Location"] == "/relay/console/jobs"
    assert "Secure" in response.headers["Set-Cookie"]


def test_sessions_survive_another_replica_with_the_same_settings(
    client: FlaskClient, services: Services
) -> None:
    sign_in(client)
    other = create_app(services=services).test_client()  # another process, same settings
    other.set_cookie("cirelay_console", client.get_cookie("cirelay_console").value)  # type: ignore[union-attr]
    assert other.get("/console/audit").status_code == 200


def test_a_key_removed_from_the_settings_ends_its_sessions(
    client: FlaskClient, services: Services
) -> None:
    sign_in(client)
    cookie = client.get_cookie("cirelay_console")
    assert cookie is not None
    rotated = replace(services.settings, api_keys=("another-admin-key-0123456789",))
    other = create_app(services=replace(services, settings=rotated)).test_client()
    other.set_cookie("cirelay_console", cookie.value)
    assert other.get("/console/audit").status_code == 302


def test_the_offending_element_is_marked_in_the_body() -> None:
    body = (CORPUS / "notification/invalid/state-not-in-enum.xml").read_bytes()
    lines = bodies.pretty_lines(body, "application/xml", ["/Response/JobsDetail/State"])
    (marked,) = [line for line in lines if line.marked]
    assert marked.text.strip().startswith("<State>")
    nested = bodies.pretty_lines(body, "text/xml", ["/Response/JobsDetail[1]/Input"])
    inputs = [line.text.strip() for line in nested if line.marked]
    assert inputs[0] == "<Input>" and inputs[-1] == "</Input>"
    broken = bodies.pretty_lines(b"<Response><Jobs", "application/xml", ["/Response"])
    assert [line.text for line in broken] == ["<Response><Jobs"]
    data = bodies.pretty_lines(b'{"Response": {"JobsDetail": {"State": "Done"}}}',
                               "application/json", ["/Response/JobsDetail/State"])  # fmt: skip
    assert [line.text.strip() for line in data if line.marked] == ['"State": "Done"']
    assert not any(line.marked for line in bodies.pretty_lines(body, "application/xml",
                                                               ["/Response/x')]|//*"]))  # fmt: skip


def test_a_broker_url_s_credentials_are_masked_and_an_unchanged_edit_keeps_them(
    client: FlaskClient, engine: Engine
) -> None:
    from app import store

    url = "amqp://app:s3cret-pass@127.0.0.1:5672/%2F?exchange=media"
    created = client.post("/v1/subscriptions", json={"url": url},
                          headers={"Authorization": f"Bearer {API_KEY}"})  # fmt: skip
    assert created.status_code == 201, created.json
    ident = created.json["id"]
    csrf = sign_in(client)
    for page in ("/console/subscriptions", f"/console/subscriptions/{ident}"):
        text = client.get(page).get_data(as_text=True)
        assert "s3cret-pass" not in text and "amqp://app:***@127.0.0.1" in text
    masked = "amqp://app:***@127.0.0.1:5672/%2F?exchange=media"
    form = {"url": masked, "description": "media", "csrf_token": csrf}
    edited = client.post(f"/console/subscriptions/{ident}/edit", data=form)
    assert edited.status_code == 303, edited.get_data(as_text=True)[:300]
    with engine.connect() as conn:
        kept = store.get_subscription(conn, ident)
    assert kept is not None and kept.url == url and kept.description == "media"
    test_event = client.post(f"/v1/subscriptions/{ident}/test",
                             headers={"Authorization": f"Bearer {API_KEY}"})  # fmt: skip
    assert test_event.status_code == 409 and "broker" in test_event.json["message"]
