"""Logs: JSON lines on stdout with the request id on every line of a request; no secrets."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import requests

from app import logs
from app.tokens import sign_job
from tests.conftest import make_job
from tests.e2e_stack import CALLBACK_KEY, CIRELAY, free_port, spawn, stack_env, wait_http


def test_a_proxys_request_id_is_kept_when_sane_and_replaced_otherwise() -> None:
    assert logs.bind_request_id("edge-7f3a.01") == "edge-7f3a.01"
    for bad in (None, "", "x" * 129, "a b", "id\nforged-line", '{"json":1}'):
        made = logs.bind_request_id(bad)
        assert made != bad and len(made) == 24 and logs.REQUEST_ID.get() == made


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/callbacks/ci/job_01ABC/4f9a0c", "/callbacks/ci/job_01ABC/***"),
        ("/callbacks/ci/queue/s3cr3t-queue-secret", "/callbacks/ci/queue/***"),
        ("/v1/jobs/job_01ABC", "/v1/jobs/job_01ABC"),
    ],
)
def test_secrets_are_cut_out_of_logged_paths(path: str, logged: str) -> None:
    assert logs.redact_path(path) == logged


def test_a_json_line_carries_the_request_id(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "json")
    try:
        logs.bind_request_id("req-1")
        logging.getLogger("app.test").warning("hello %s", "there", extra={"job_id": "job_1"})
    finally:
        logging.getLogger().handlers = []
    line = json.loads(capsys.readouterr().out)
    assert line["message"] == "hello there" and line["request_id"] == "req-1"
    assert line["level"] == "WARNING" and line["logger"] == "app.test"
    assert line["job_id"] == "job_1" and line["time"]


@pytest.mark.slow
def test_under_gunicorn_every_line_is_json_and_a_requests_lines_share_its_id(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = stack_env(tmp_path, port, free_port())
    from datetime import UTC, datetime

    from app import store
    from app.migrations import upgrade

    engine = store.create_engine(env["CIRELAY_DATABASE_URL"])
    upgrade(engine)
    make_job(engine, "job_01LOGS", datetime.now(UTC), "j" + "0" * 32)
    engine.dispose()
    path = f"/callbacks/ci/job_01LOGS/{sign_job('job_01LOGS', (CALLBACK_KEY,))}"
    serve = spawn("serve", [*CIRELAY, "serve", "--port", str(port), "--workers", "2"], env,
                  tmp_path)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_http("the service", f"{base}/readyz", serve)
        ok = requests.get(f"{base}/healthz", headers={"X-Request-ID": "probe-1"}, timeout=5)
        assert ok.headers["X-Request-ID"] == "probe-1"
        bad = requests.post(f"{base}{path}", data=b"<Response><Oops/></Response>",
                            headers={"Content-Type": "application/xml"}, timeout=5)  # fmt: skip
        assert bad.status_code == 400
        rid = bad.headers["X-Request-ID"]
        assert len(rid) == 24
    finally:
        serve.stop()
    lines = [json.loads(line) for line in serve.log_path.read_text().splitlines() if line]
    assert lines, "nothing logged"
    access = [line for line in lines if line["logger"] == "gunicorn.access"]
    assert {"probe-1", rid} <= {line["request_id"] for line in access}
    (quarantined,) = [line for line in lines if line["message"] == "notification quarantined"]
    assert quarantined["request_id"] == rid and quarantined["job_id"] == "job_01LOGS"
    (answer,) = [line for line in access if line["request_id"] == rid]
    assert answer["status"] == 400 and answer["path"] == "/callbacks/ci/job_01LOGS/***"
    text = serve.log_path.read_text()
    token = path.rsplit("/", 1)[1]
    for secret in (token, CALLBACK_KEY, env["CIRELAY_API_KEYS"], env["CIRELAY_CI_SECRET_KEY"]):
        assert secret not in text
