"""The ``cirelay`` command line as a user runs it: real processes, real HTTP on loopback."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask import Flask

from app import store
from tests.conftest import (
    CALLBACK_KEYS,
    QUEUE_SECRET,
    callback_path,
    ci_job_id,
    notification_xml,
    queue_path,
)

API_KEY = "cli-test-api-key-0123456789"
XML = {"Content-Type": "application/xml"}
CIRELAY = [sys.executable, "-m", "app.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(base: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}")
        try:
            if requests.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except requests.RequestException:  # not listening yet, or workers still booting
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready")


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CIRELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'cirelay.db'}",
        "CIRELAY_API_KEYS": API_KEY,
        "CIRELAY_CALLBACK_KEYS": ",".join(CALLBACK_KEYS),
        "CIRELAY_QUEUE_CALLBACK_SECRET": QUEUE_SECRET,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }


def cirelay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CIRELAY, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def server(env: dict[str, str]) -> Iterator[str]:
    """``cirelay serve`` with two gunicorn workers."""
    port = free_port()
    process = subprocess.Popen(
        [*CIRELAY, "serve", "--port", str(port), "--workers", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process)
        yield base
    finally:
        stop(process)


def metric(base: str, name: str, labels: str = "") -> float:
    text = requests.get(f"{base}/metrics", timeout=5).text
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{labels} not exposed"
    return float(match.group(1))


@pytest.mark.slow
def test_serve_records_notifications_and_metrics_total_over_workers(server: str) -> None:
    session = requests.Session()
    n = 40
    for i in range(n):  # new connections spread the requests over both workers
        response = requests.post(
            f"{server}{queue_path()}", data=notification_xml(ci_job_id(i)), headers=XML, timeout=5
        )
        assert response.status_code == 200, response.text
    bad = session.post(f"{server}{queue_path()}", data="<Response/>", headers=XML, timeout=5)
    assert bad.status_code == 400

    assert metric(server, "cirelay_notifications_total", '{outcome="accepted"}') == n
    assert metric(server, "cirelay_notifications_total", '{outcome="schema_violation"}') == 1
    assert metric(server, "cirelay_quarantine_size") == 1
    jobs = session.get(
        f"{server}/v1/jobs?limit=200", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5
    ).json()["jobs"]
    assert len(jobs) == n and {j["state"] for j in jobs} == {"Success"}


@pytest.mark.slow
def test_serve_answers_per_job_callbacks_from_the_real_process(
    server: str, env: dict[str, str]
) -> None:
    # A job cirelay does not know: the token is valid, the job is not — 404 like a bad token.
    response = requests.post(
        f"{server}{callback_path('job_nobody')}", data=notification_xml(), headers=XML, timeout=5
    )
    assert response.status_code == 404


def test_db_upgrade_creates_the_schema(env: dict[str, str], tmp_path: Path) -> None:
    result = cirelay(env, "db", "upgrade")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cirelay.db").exists()
    again = cirelay(env, "db", "upgrade")
    assert again.returncode == 0


def test_routes_lists_every_route_of_the_service_without_settings(app: Flask) -> None:
    """Every rule the running service has, the callback lane's among them, from a bare
    environment (no CIRELAY_* settings, no database)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRELAY_")}
    result = subprocess.run([*CIRELAY, "routes"], env=env, capture_output=True, text=True,
                            timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    listed = {tuple(line.split()[::2]) for line in result.stdout.splitlines()}
    expected = {(r.rule, r.endpoint) for r in app.url_map.iter_rules() if r.endpoint != "static"}
    assert listed == expected
    assert ("/callbacks/ci/<job_id>/<token>", "callbacks.job") in listed


def test_missing_configuration_is_reported_in_full(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRELAY_")}
    result = run_in(tmp_path, env, "serve", "--port", str(free_port()))
    assert result.returncode == 2
    assert "CIRELAY_API_KEYS" in result.stderr and "CIRELAY_CALLBACK_KEYS" in result.stderr


@pytest.mark.slow
def test_quarantine_list_show_replay(server: str, env: dict[str, str]) -> None:
    good = notification_xml(ci_job_id(1))
    requests.post(f"{server}{queue_path()}", data=b"<Response>", headers=XML, timeout=5)
    requests.post(f"{server}{queue_path()}", data="<Request/>", headers=XML, timeout=5)

    listed = cirelay(env, "quarantine", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 3 and "malformed" in lines[1] and "schema_violation" in lines[2]

    shown = cirelay(env, "quarantine", "show", "2")
    assert shown.returncode == 0
    assert '"error": "schema_violation"' in shown.stdout and "<Request/>" in shown.stdout

    replayed = cirelay(env, "quarantine", "replay")
    assert replayed.returncode == 1  # both are still invalid
    assert "replayed 2, 0 recorded, 2 still invalid" in replayed.stdout
    pending = cirelay(env, "quarantine", "list", "--pending")
    assert len(pending.stdout.splitlines()) == 1
    assert requests.post(f"{server}{queue_path()}", data=good, headers=XML, timeout=5).ok
    audit = requests.get(f"{server}/v1/audit", headers={"Authorization": f"Bearer {API_KEY}"},
                         timeout=5).json()["audit"]  # fmt: skip
    replays = [a for a in audit if a["action"] == "quarantine replayed"]
    assert [(a["via"], a["subject"]) for a in replays] == [("cli", "2"), ("cli", "1")]


@pytest.mark.slow
def test_up_prints_the_api_key_serves_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRELAY_")}
    # a file, not a pipe: the three processes log there, and a pipe nobody drains would
    # block them once full
    output = (tmp_path / "up.log").open("wb")
    process = subprocess.Popen(
        [*CIRELAY, "up", "--port", str(port), "--emulator-port", str(free_port()),
         "--data-dir", str(tmp_path / "var")],
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        banner = read_until(tmp_path / "up.log", b"Ctrl-C stops everything.", process)
        key = re.search(rb"API key\s+(\S+)", banner)
        assert key
        response = requests.get(
            f"{base}/v1/jobs",
            headers={"Authorization": f"Bearer {key.group(1).decode()}"},
            timeout=5,
        )
        assert response.status_code == 200
        assert (tmp_path / "var" / "cirelay.db").exists()
    finally:
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # fail this test, leave nothing for the next
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise
        finally:
            output.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{base}/healthz", timeout=2)
    text = (tmp_path / "up.log").read_text()
    assert text.splitlines()[-1] == "cirelay up: stopped"
    assert "a process exited" not in text and "Traceback" not in text
    assert re.search(r"^\d{4}-\d\d-\d\d [\d:,]+ INFO gunicorn.error ", text, re.MULTILINE)


@pytest.mark.slow
def test_event_stream_works_under_gunicorn(server: str) -> None:
    requests.post(
        f"{server}{queue_path()}", data=notification_xml(ci_job_id(5)), headers=XML, timeout=5
    )
    with requests.get(
        f"{server}/v1/events/stream",
        headers={"Authorization": f"Bearer {API_KEY}"},
        stream=True,
        timeout=10,
    ) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        lines = response.iter_lines(decode_unicode=True)
        event = next(line for line in lines if line and line.startswith("event:"))
    assert event == "event: com.cirelay.job.succeeded"


@pytest.mark.slow
def test_subscriptions_replay_follows_the_deliveries_on_a_progress_bar(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Events recorded, a subscriber subscribed; `cirelay subscriptions replay --since` queues
    them again and follows `cirelay worker` delivering them, on a tqdm bar."""
    from datetime import UTC, datetime, timedelta

    from app import build_services, create_app, store
    from app.config import Settings
    from app.migrations import upgrade
    from tests.conftest import make_job
    from tests.subscriber import Subscriber

    env = {**env, "CIRELAY_DELIVERY_ALLOWED_NETWORKS": "127.0.0.0/8"}
    env.pop("PROMETHEUS_MULTIPROC_DIR")
    settings = Settings.from_env(env)
    engine = store.create_engine(settings.database_url)
    upgrade(engine)
    client = create_app(services=build_services(settings, engine=engine)).test_client()
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with Subscriber() as hook:
        body = {"url": hook.url(), "event_types": ["com.cirelay.job.*"]}
        sub = client.post("/v1/subscriptions", json=body, headers=auth).json
        for n in range(3):
            path = make_job(engine, f"job_{n}", datetime.now(UTC), ci_job_id(n))
            client.post(path, data=notification_xml(ci_job_id(n), "Success"), headers=XML)
        worker = subprocess.Popen([*CIRELAY, "worker"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            hook.wait_for(3)
            since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
            done = cirelay(env, "subscriptions", "replay", sub["id"], "--since", since)
            listed = cirelay(env, "subscriptions", "list")
        finally:
            stop(worker)
        engine.dispose()
        assert done.returncode == 0, done.stderr
        assert "3 deliveries" in done.stdout and "delivered 3, failed 0" in done.stdout
        assert "delivered: 100%" in done.stderr and "3/3" in done.stderr  # tqdm's bar
        ids = [r.webhook_id for r in hook.accepted()]
        assert len(ids) == 6 and sorted(ids[:3]) == sorted(ids[3:])
        assert sub["id"] in listed.stdout and "enabled" in listed.stdout
        refused = cirelay(env, "subscriptions", "replay", sub["id"], "--since", "yesterday")
        assert refused.returncode == 2 and "RFC 3339" in refused.stderr
        unknown = cirelay(env, "subscriptions", "replay", "sub_nope", "--event", "evt_x")
        assert unknown.returncode == 1 and "not_found" in unknown.stderr


@pytest.mark.slow
def test_sigterm_lets_notifications_in_flight_finish(env: dict[str, str]) -> None:
    """Graceful shutdown: a notification whose body is still arriving when gunicorn gets
    SIGTERM is read to the end, recorded and answered 200; then the service exits 0."""
    from datetime import UTC, datetime

    from app import store
    from app.migrations import upgrade
    from tests.conftest import make_job

    engine = store.create_engine(env["CIRELAY_DATABASE_URL"])
    upgrade(engine)
    path = make_job(engine, "job_inflight", datetime.now(UTC), ci_job_id(7))
    body = notification_xml(ci_job_id(7), "Success").encode()
    port = free_port()
    command = [*CIRELAY, "serve", "--port", str(port), "--workers", "1"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}", process)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/xml\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")  # fmt: skip
            sock.sendall(head.encode() + body[:100])
            time.sleep(0.5)  # a worker thread is reading the body
            process.send_signal(signal.SIGTERM)
            time.sleep(1.0)
            assert process.poll() is None  # waiting for the request in flight
            sock.sendall(body[100:])
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert process.wait(timeout=30) == 0
    finally:
        stop(process)
    with engine.connect() as conn:
        job = store.get_job(conn, "job_inflight")
    engine.dispose()
    assert job is not None and job.state == "Success"


@pytest.mark.slow
def test_worker_stops_on_two_signals_in_a_row(env: dict[str, str], tmp_path: Path) -> None:
    """Ctrl-C in a terminal and then `cirelay up`'s SIGTERM reach the worker back to back.
    (A second signal landing while the first handler held the stop event's lock used to
    deadlock the worker; that timing is rare here, so this is a smoke test of the path, and
    `cirelay up`'s Ctrl-C test above is where the hang showed.)"""
    from app import store
    from app.migrations import upgrade

    upgrade(store.create_engine(env["CIRELAY_DATABASE_URL"]))
    env = {k: v for k, v in env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    for attempt in range(3):
        log = tmp_path / f"worker-{attempt}.log"
        with log.open("wb") as out:
            worker = subprocess.Popen([*CIRELAY, "worker"], env=env, stdout=out,
                                      stderr=subprocess.STDOUT)  # fmt: skip
            try:
                deadline = time.monotonic() + 30
                while b"worker: reconciling" not in log.read_bytes():
                    assert time.monotonic() < deadline and worker.poll() is None, "no start"
                    time.sleep(0.05)
                worker.send_signal(signal.SIGINT)
                worker.send_signal(signal.SIGTERM)
                assert worker.wait(timeout=10) == 0
            finally:
                stop(worker, signal.SIGKILL)


@pytest.mark.slow
def test_ctrl_c_under_load_stops_gunicorn_promptly(env: dict[str, str]) -> None:
    """Ctrl-C reaches gunicorn's master and workers while requests keep arriving. gthread's
    own quit handler could deadlock in the middle of handing a request to its thread pool
    (CPython issue 121649), and the master then waited 30 s; the config's post_worker_init
    makes quitting graceful instead. Repeated, since the deadlock needs the signal to land at
    the wrong moment."""
    import threading

    for _ in range(3):
        port = free_port()
        process = subprocess.Popen(
            [*CIRELAY, "serve", "--port", str(port), "--workers", "2"], env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        done = threading.Event()

        def hammer(base: str = base, done: threading.Event = done) -> None:
            while not done.is_set():
                with contextlib.suppress(requests.RequestException):
                    requests.get(f"{base}/healthz", timeout=1)

        try:
            wait_ready(base, process)
            threads = [threading.Thread(target=hammer) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            os.killpg(process.pid, signal.SIGINT)
            started = time.monotonic()
            process.wait(timeout=20)
            assert time.monotonic() - started < 10
        finally:
            done.set()
            stop(process, signal.SIGKILL)


# --- issue 14 §1: the front door ----------------------------------------------------------


def bare_env(**extra: str) -> dict[str, str]:
    """The environment of a user who has set nothing."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("CIRELAY_")}, **extra}


def run_in(directory: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CIRELAY, *args], cwd=directory, env={**env, "PYTHONPATH": ROOT},
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


ROOT = str(Path(__file__).resolve().parent.parent)


def test_dev_secrets_are_created_owner_only_without_a_chmod(tmp_path: Path) -> None:
    """0600 from the moment the file exists, whatever the umask: never written readable by
    others and narrowed afterwards (os.chmod would show in the audit log)."""
    from app.config import Settings

    chmods: list[object] = []
    target = str(tmp_path / "var" / "dev-secrets")
    sys.addaudithook(lambda event, args: event == "os.chmod" and chmods.append(args[0]))
    old = os.umask(0)
    try:
        Settings.dev(tmp_path / "var", {})
    finally:
        os.umask(old)
    assert oct(os.stat(target).st_mode & 0o777) == "0o600"
    assert not [p for p in chmods if str(p) == target]


def test_dev_secrets_written_before_are_narrowed_to_the_owner(tmp_path: Path) -> None:
    from app.config import Settings

    (tmp_path / "var").mkdir()
    old = tmp_path / "var" / "dev-secrets"
    old.write_text("CIRELAY_API_KEYS=0123456789abcdef0123\n")
    old.chmod(0o644)
    settings = Settings.dev(tmp_path / "var", {})
    assert oct(old.stat().st_mode & 0o777) == "0o600"
    assert settings.api_keys == ("0123456789abcdef0123",)  # kept


def all_parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    from app.cli import build_parser

    todo = [("cirelay", build_parser())]
    while todo:
        name, parser = todo.pop()
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [(f"{name} {n}", p) for n, p in action.choices.items()]


def test_every_command_and_option_has_help_showing_its_default() -> None:
    missing = []
    for name, parser in all_parsers():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            text = formatter._expand_help(action) if action.help else ""
            if not text or (action.option_strings and "default" not in text):
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
        assert parser.description, name
    assert not missing, missing


def test_help_lists_every_command_without_markup() -> None:
    from app.cli import build_parser

    text = build_parser().format_help()
    commands = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    ).choices
    assert {"up", "subscriptions", "routes", "quarantine", "submit"} <= set(commands)
    listed = re.findall(r"^    (\S+)\s", text, re.MULTILINE)
    assert listed == list(commands)
    assert "``" not in text and ":func:" not in text


def test_make_help_columns_fit_the_longest_target() -> None:
    result = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60, check=True)  # fmt: skip
    rows = [re.match(r"  make (\S+)( +)(\S.*)", line) for line in result.stdout.splitlines()]
    assert rows and all(rows)
    starts = {m.start(3) for m in rows if m}
    names = {m.group(1) for m in rows if m}
    assert len(starts) == 1 and {"bench-delivery", "system-deps", "run", "test"} <= names


@pytest.fixture
def after_make_run(tmp_path: Path) -> Path:
    """A project directory as `make run` leaves it: var/dev-secrets and the database, with
    one quarantined notification and one subscription."""
    from app import build_services, create_app
    from app.config import Settings
    from app.migrations import upgrade

    settings = Settings.dev(tmp_path / "var", {"CIRELAY_DELIVERY_ALLOWED_NETWORKS": "127.0.0.0/8"})
    engine = store.create_engine(settings.database_url)
    upgrade(engine)
    client = create_app(services=build_services(settings, engine=engine)).test_client()
    secret = settings.queue_callback_secret
    client.post(f"/callbacks/ci/queue/{secret}", data="<Request/>", headers=XML)
    auth = {"Authorization": f"Bearer {settings.api_keys[0]}"}
    body = {"url": "http://127.0.0.1:9/hook", "event_types": ["*"]}
    assert client.post("/v1/subscriptions", json=body, headers=auth).status_code == 201
    engine.dispose()
    return tmp_path


@pytest.mark.parametrize(
    "args",
    [
        ("quarantine", "list"),
        ("quarantine", "show", "1"),
        ("quarantine", "replay"),
        ("subscriptions", "list"),
        ("db", "upgrade"),
    ],
)
def test_commands_read_dev_secrets_when_the_environment_sets_nothing(
    after_make_run: Path, args: tuple[str, ...]
) -> None:
    result = run_in(after_make_run, bare_env(), *args)
    assert "CIRELAY_" not in result.stderr, result.stderr
    assert result.returncode == (1 if args[-1] == "replay" else 0), result.stderr  # still bad
    assert "Traceback" not in result.stderr


def test_listing_the_quarantine_needs_only_the_database(after_make_run: Path) -> None:
    database = f"sqlite:///{after_make_run / 'var' / 'cirelay.db'}"
    (after_make_run / "var" / "dev-secrets").unlink()
    result = run_in(after_make_run, bare_env(CIRELAY_DATABASE_URL=database), "quarantine", "list")
    assert result.returncode == 0, result.stderr
    assert "schema_violation" in result.stdout


def test_a_deployment_environment_never_mixes_with_dev_secrets(tmp_path: Path) -> None:
    from app.config import Settings, command_environ

    Settings.dev(tmp_path / "var", {})
    env = {"CIRELAY_DATABASE_URL": "postgresql://db/prod"}
    assert command_environ(env, tmp_path / "var" / "dev-secrets") == env


@pytest.fixture
def listener() -> Iterator[int]:
    """Something else holding a port, as a first `make run` does."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("command", ["up", "serve", "emulator"])
def test_a_taken_port_is_said_first_and_only_and_nothing_starts(
    tmp_path: Path, listener: int, command: str
) -> None:
    args = [command, "--port", str(listener)]
    if command == "up":
        args += ["--emulator-port", str(free_port()), "--data-dir", str(tmp_path / "var")]
    result = run_in(tmp_path, bare_env(), *args)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {listener} (--port) is in use by pid {os.getpid()}" in lines[0]
    assert not (tmp_path / "var").exists()  # no database, no secrets, nothing


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("submit", "songs/a.wav", "--api-key", "k" * 20, "--url", "http://127.0.0.1:{port}"),
         "could not reach http://127.0.0.1:{port}/v1/jobs (connection refused)"),
        (("quarantine", "list"), "the database postgresql://postgres:***@127.0.0.1:{port}/x"),
        (("subscriptions", "list"), "the database postgresql://postgres:***@127.0.0.1:{port}/x"),
        (("db", "upgrade"), "the database postgresql://postgres:***@127.0.0.1:{port}/x failed"),
    ],
)  # fmt: skip
def test_a_network_error_is_one_line_saying_what_was_tried(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    port = free_port()  # nothing listens there
    env = bare_env(CIRELAY_DATABASE_URL=f"postgresql://postgres:pw@127.0.0.1:{port}/x")
    result = run_in(tmp_path, env, *(a.format(port=port) for a in args))
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert expected.format(port=port) in result.stderr
    assert "pw" not in result.stderr


def read_until(path: Path, needle: bytes, process: subprocess.Popen[bytes]) -> bytes:
    deadline = time.monotonic() + 120
    while needle not in (text := path.read_bytes()):
        assert process.poll() is None and time.monotonic() < deadline, text.decode()
        time.sleep(0.05)
    return text


@pytest.mark.slow
def test_up_answers_only_once_all_three_are_ready_and_logs_json_lines(tmp_path: Path) -> None:
    """The first request to reach the service finds the emulator there: a job submitted the
    moment /healthz answers is accepted by CI (it got 502 ci_unavailable when the service
    started before the emulator). The banner comes after the emulator and the worker said
    they run; with --log-format json every other line is a JSON object."""
    port = free_port()
    log = tmp_path / "up.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*CIRELAY, "up", "--port", str(port), "--emulator-port", str(free_port()),
             "--data-dir", str(tmp_path / "var"), "--log-format", "json"],
            env=bare_env(), stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            while True:
                assert process.poll() is None, log.read_text()
                with contextlib.suppress(requests.ConnectionError):
                    if requests.get(f"{base}/healthz", timeout=60).status_code == 200:
                        break
                time.sleep(0.02)
            key = re.search(r"CIRELAY_API_KEYS=(\S+)", (tmp_path / "var/dev-secrets").read_text())
            assert key
            audio = {"codec": "mp3", "samplerate": 44100, "bitrate": 128, "channels": 2}
            job = {
                "input": {"object": "songs/a.wav"},
                "voice_separate": {"audio_mode": "AudioAndBackground", "audio_config": audio},
                "output": {"object": "o/${jobid}.${ext}", "au_object": "v/${jobid}.${ext}",
                           "bucket": "media-1250000000", "region": "ap-guangzhou"},
            }  # fmt: skip
            answer = requests.post(f"{base}/v1/jobs", json=job, timeout=30,
                                   headers={"Authorization": f"Bearer {key.group(1)}"})  # fmt: skip
            assert answer.status_code == 201, answer.text
            text = read_until(log, b"Ctrl-C stops everything.", process).decode()
        finally:
            os.killpg(process.pid, signal.SIGINT)
            assert process.wait(timeout=60) == 0
    before, banner = text.split("cirelay up: ready\n")
    assert "cirelay emulator listening" in before and "worker: reconciling" in before
    lines = log.read_text().splitlines()
    assert lines[-1] == "cirelay up: stopped"
    banner_lines = set(banner.split("Ctrl-C stops everything.")[0].splitlines())
    others = [line for line in lines[1:-1] if line not in banner_lines and
              line not in ("cirelay up: ready", "  Ctrl-C stops everything.")]  # fmt: skip
    assert others
    for line in others:
        assert isinstance(json.loads(line), dict), line
