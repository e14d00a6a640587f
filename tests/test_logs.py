"""Logs: JSON lines on stdout with the request id on every line of a request; no secrets."""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

import pytest
import requests

from app import logs
from app.tokens import sign_job
from tests.conftest import ci_job_id, make_job, notification_xml
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
        # every other spelling of a callback path, as gunicorn hands over the raw path
        ("/callbacks/ci/queue%2Fs3cr3t-queue-secret", "/callbacks/ci/queue/***"),
        ("/callbacks/ci/queue%2fs3cr3t-queue-secret", "/callbacks/ci/queue/***"),
        ("/callbacks/ci//queue/s3cr3t-queue-secret", "/callbacks/ci/queue/***"),
        ("/callbacks/ci/queue//s3cr3t-queue-secret", "/callbacks/ci/queue/***"),
        ("//callbacks//ci/queue/s3cr3t-queue-secret/", "/callbacks/ci/queue/***"),
        ("/callbacks/ci/queue%252Fs3cr3t-queue-secret", "/callbacks/ci/queue/***"),
        ("/%63allbacks/ci/queue/s3cr3t-queue-secret", "/callbacks/ci/queue/***"),
        ("/Callbacks/CI/queue/s3cr3t-queue-secret", "/callbacks/ci/queue/***"),
        ("/callbacks/ci/job_01ABC/4f9a0c/more", "/callbacks/ci/job_01ABC/***"),
        ("/callbacks/ci/job_01ABC%2F4f9a0c", "/callbacks/ci/job_01ABC/***"),
        ("/callbacks/ci/s3cr3t-queue-secret", "/callbacks/ci/***"),
        ("/callbacks/ci/s3cr3t-queue-secret/x", "/callbacks/ci/***"),
        ("/callbacks/ci/queue", "/callbacks/ci/queue"),
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
        keyed = requests.get(f"{base}/v1/jobs", timeout=5, headers={
            "Authorization": f"Bearer {env['CIRELAY_API_KEYS']}", "X-Request-ID": "keyed-1"})
        assert keyed.status_code == 200
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
    (listed,) = [line for line in access if line["request_id"] == "keyed-1"]
    assert listed["api_key"] == "key1"  # the key's name, never the key
    text = serve.log_path.read_text()
    token = path.rsplit("/", 1)[1]
    for secret in (token, CALLBACK_KEY, env["CIRELAY_API_KEYS"], env["CIRELAY_CI_SECRET_KEY"]):
        assert secret not in text


def test_a_callback_path_quoted_in_gunicorns_messages_is_redacted() -> None:
    text = "Invalid HTTP request line: 'POST /callbacks/ci/queue%2Fs3cr3t-queue-secret'"
    assert logs.redact_text(text) == "Invalid HTTP request line: 'POST /callbacks/ci/queue/***'"
    assert logs.redact_text("Invalid HTTP Version: 'HTTP/1.1 x'") == (
        "Invalid HTTP Version: 'HTTP/1.1 x'"
    )


#: requests gunicorn answers itself, before any application code: (raw bytes, status)
REFUSED_BY_GUNICORN = [
    (b"GARBAGE\r\n\r\n", None),  # no request read: gunicorn logs no access line
    (b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n", 400),
    (b"GET /x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"POST /callbacks/ci/queue/{secret} HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n"
     b"Content-Length: 2\r\n\r\n", 400),
    (b"POST /callbacks/ci/queue/{secret} HTTP/1.1 x\r\n\r\n", None),
    (b"POST /callbacks/ci/queue%2F{secret}\r\n\r\n", None),
]  # fmt: skip


def _exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        return sock.recv(200).split(b"\r\n", 1)[0]


@pytest.mark.slow
def test_under_gunicorn_no_secret_reaches_the_log_and_refused_requests_are_logged(
    tmp_path: Path,
) -> None:
    """Real gunicorn (``cirelay serve``), raw sockets: the queue secret spelt as
    ``queue%2F<secret>`` (which the service accepts) and ``//queue/<secret>`` (404), and
    requests gunicorn refuses itself (bad framing, a duplicate Content-Length, a broken request
    line), leave neither the secret nor an "access log failed" traceback; each refused request
    that gunicorn logs gets its access line with its status."""
    port = free_port()
    env = stack_env(tmp_path, port, free_port())
    secret = env["CIRELAY_QUEUE_CALLBACK_SECRET"]
    serve = spawn("serve", [*CIRELAY, "serve", "--port", str(port), "--workers", "1"], env,
                  tmp_path)  # fmt: skip
    try:
        wait_http("the service", f"http://127.0.0.1:{port}/readyz", serve)
        body = notification_xml(ci_job_id(7), "Running").encode()
        accepted = _exchange(port, b"POST /callbacks/ci/queue%2F" + secret.encode()
                             + b" HTTP/1.1\r\nHost: a\r\nContent-Type: application/xml\r\n"
                             + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
        assert accepted == b"HTTP/1.1 200 OK"
        missed = _exchange(port, b"POST /callbacks/ci//queue/" + secret.encode()
                           + b" HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")  # fmt: skip
        assert missed.startswith(b"HTTP/1.1 404")
        for raw, _status in REFUSED_BY_GUNICORN:
            answer = _exchange(port, raw.replace(b"{secret}", secret.encode()))
            assert answer.startswith(b"HTTP/1.1 4"), (raw, answer)
        time.sleep(0.3)  # the access lines of the last requests
    finally:
        serve.stop()
    text = serve.log_path.read_text()
    assert secret not in text
    assert "access log failed" not in text and "Traceback" not in text
    lines = [json.loads(line) for line in text.splitlines() if line]
    access = [line for line in lines if line["logger"] == "gunicorn.access"]
    # the chunked one is answered 404 by the app, then refused when gunicorn reads the rest
    assert [line["status"] for line in access if line["path"] == "/x"].count(400) == 2
    # queue%2F<secret> accepted, //queue/<secret> not found, a duplicate Content-Length refused
    queue = [line["status"] for line in access if line["path"] == "/callbacks/ci/queue/***"]
    assert sorted(queue) == [200, 400, 404]
