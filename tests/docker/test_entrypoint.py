"""docker/entrypoint.sh run for real, outside a container: `serve` (gunicorn, the metrics
directory, graceful SIGTERM), `db upgrade`, pass-through, and the Dockerfile's HEALTHCHECK
command against the running service."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sysconfig
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import requests

from app import store
from tests.docker.dockerfile import REPO, Dockerfile, Healthcheck

ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
SH = shutil.which("sh") or "/bin/sh"
#: where `pip install` put cirelay's and gunicorn's commands (.venv/bin): /opt/venv/bin in the
#: image, first on PATH there too
SCRIPTS = sysconfig.get_path("scripts")
#: gunicorn's graceful_timeout (app/serving/gunicorn_conf.py)
GRACEFUL_TIMEOUT = 30
STARTUP_DEADLINE = 30.0

API_KEY = "docker-test-api-key-0123456789"
CALLBACK_KEY = "docker-test-callback-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment a container would get: no CIRELAY_* or PROMETHEUS_* of the caller's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIRELAY_", "PROMETHEUS_"))}
    env["PATH"] = SCRIPTS + os.pathsep + env.get("PATH", "/usr/bin:/bin")
    env.update(
        CIRELAY_DATABASE_URL=f"sqlite:///{tmp_path / 'cirelay.db'}",
        CIRELAY_API_KEYS=API_KEY,
        CIRELAY_CALLBACK_KEYS=CALLBACK_KEY,
        # the image sets CIRELAY_SCHEMA_DIR to its copy of schemas/ (test_dockerfile.py)
        CIRELAY_SCHEMA_DIR=str(REPO / "schemas"),
    )
    env.update(extra)
    return env


def entrypoint(
    env: dict[str, str], *args: str, cwd: Path, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SH, str(ENTRYPOINT), *args],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    base: str
    port: int
    metrics_dir: Path
    log_path: Path
    log: IO[bytes]

    def log_tail(self, lines: int = 40) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def get(self, path: str) -> requests.Response:
        return requests.get(f"{self.base}{path}", timeout=5)

    def wait_for(self, path: str) -> requests.Response:
        deadline = time.monotonic() + STARTUP_DEADLINE
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"entrypoint exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                response = self.get(path)
                if response.status_code == 200:
                    return response
            except requests.RequestException:  # not listening yet
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} never answered 200:\n{self.log_tail()}")
            time.sleep(0.1)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """`sh docker/entrypoint.sh serve` with a stale file in its metrics directory."""
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"stale")
    (metrics_dir / "leftover").mkdir()
    (metrics_dir / "leftover" / "gauge_live_999999.db").write_bytes(b"stale")
    port = free_port()
    env = base_env(
        tmp_path,
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        CIRELAY_BIND=f"127.0.0.1:{port}",
        CIRELAY_WORKERS="2",
    )
    log_path = tmp_path / "serve.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [SH, str(ENTRYPOINT), "serve"],
        env=env, cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the teardown can stop every worker
    )  # fmt: skip
    try:
        yield Served(process, f"http://127.0.0.1:{port}", port, metrics_dir, log_path, log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def wait_until(what: str, probe: Callable[[], bool], deadline: float = STARTUP_DEADLINE) -> None:
    end = time.monotonic() + deadline
    while not probe():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def healthcheck_command(port: int) -> list[str]:
    """The Dockerfile's HEALTHCHECK command, pointed at ``port`` instead of 8080."""
    instruction = Dockerfile.read().final.last("HEALTHCHECK")
    assert instruction is not None
    command = Healthcheck.parse(instruction.value).command
    assert command is not None
    url = "http://127.0.0.1:8080/healthz"
    assert sum(arg.count(url) for arg in command) == 1
    return [arg.replace(url, f"http://127.0.0.1:{port}/healthz") for arg in command]


def run_healthcheck(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=10, check=False)


# --- serve ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_serve_runs_gunicorn_in_place_and_stops_gracefully(served: Served) -> None:
    # held open: should the directory be removed (and maybe recreated), this one is unlinked
    directory = os.open(served.metrics_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        check_serve(served, directory)
    finally:
        os.close(directory)


def check_serve(served: Served, directory: int) -> None:
    assert served.wait_for("/healthz").json() == {"status": "ok"}
    assert served.wait_for("/readyz").json()["status"] == "ready"
    metrics = served.wait_for("/metrics").text
    assert "cirelay_" in metrics

    # the directory was emptied at start: nothing stale is summed into /metrics; emptied in
    # place, so that it may be a mount point
    assert not (served.metrics_dir / "counter_999999.db").exists()
    assert not (served.metrics_dir / "leftover").exists()
    assert os.fstat(directory).st_nlink > 0
    assert os.fstat(directory).st_ino == served.metrics_dir.stat().st_ino
    assert any(served.metrics_dir.glob("*.db")), "the workers write their metrics there"

    # exec: the entrypoint's process *is* gunicorn's master (PID 1 in the container), with
    # CIRELAY_WORKERS workers
    cmdline = Path(f"/proc/{served.process.pid}/cmdline").read_bytes().split(b"\0")
    assert any(b"gunicorn" in arg for arg in cmdline), cmdline
    wait_until("2 gunicorn workers", lambda: len(children(served.process.pid)) == 2)

    started = time.monotonic()
    served.process.send_signal(signal.SIGTERM)
    try:
        code = served.process.wait(timeout=GRACEFUL_TIMEOUT + 5)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no exit after SIGTERM:\n{served.log_tail()}") from None
    assert code == 0, served.log_tail()
    assert time.monotonic() - started < GRACEFUL_TIMEOUT
    assert "Shutting down: Master" in served.log_tail()


@pytest.mark.slow
def test_the_dockerfile_healthcheck_against_the_service(served: Served, tmp_path: Path) -> None:
    served.wait_for("/healthz")
    env = base_env(tmp_path)
    alive = run_healthcheck(healthcheck_command(served.port), env)
    assert alive.returncode == 0, alive.stderr

    closed = run_healthcheck(healthcheck_command(free_port()), env)
    # Docker: 0 healthy, 1 unhealthy (2 is reserved)
    assert closed.returncode == 1, closed.stderr
    assert "Connection refused" in closed.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args", [["serve"], [], ["--workers", "1"]], ids=["serve", "none", "-"])
def test_serve_stops_at_once_on_a_bad_configuration(tmp_path: Path, args: list[str]) -> None:
    # no arguments, and gunicorn options alone, mean serve too
    env = base_env(tmp_path, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "m"))
    del env["CIRELAY_API_KEYS"]
    result = entrypoint(env, *args, cwd=tmp_path)
    assert result.returncode == 2
    assert (tmp_path / "m").is_dir()
    assert "CIRELAY_API_KEYS: required" in result.stderr
    assert "gunicorn" not in result.stderr.lower()


def test_serve_refuses_to_empty_the_root_directory(tmp_path: Path) -> None:
    # stand-ins first on PATH: if the guard ever failed, these would run, not the real ones
    fake = tmp_path / "bin"
    fake.mkdir()
    for name in ("mkdir", "find", "cirelay", "gunicorn"):
        (fake / name).write_text("#!/bin/sh\nexit 99\n")
        (fake / name).chmod(0o755)
    env = base_env(tmp_path, PROMETHEUS_MULTIPROC_DIR="/")
    env["PATH"] = f"{fake}{os.pathsep}{env['PATH']}"
    result = entrypoint(env, "serve", cwd=tmp_path)
    assert result.returncode == 2
    assert "refusing" in result.stderr


# --- other commands -------------------------------------------------------------------------


@pytest.mark.slow
def test_db_upgrade_creates_the_tables(tmp_path: Path) -> None:
    database = tmp_path / "fresh.db"
    env = base_env(tmp_path, CIRELAY_DATABASE_URL=f"sqlite:///{database}")
    result = entrypoint(env, "db", "upgrade", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "latest revision" in result.stdout
    with sqlite3.connect(database) as conn:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    conn.close()
    assert set(store.metadata.tables) | {"alembic_version"} <= tables


@pytest.mark.slow
@pytest.mark.parametrize("command", ["worker", "db", "quarantine", "submit", "emulator"])
def test_cirelay_commands_go_to_cirelay(tmp_path: Path, command: str) -> None:
    result = entrypoint(base_env(tmp_path), command, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: cirelay {command}")


def test_anything_else_runs_as_given(tmp_path: Path) -> None:
    result = entrypoint(base_env(tmp_path), "sh", "-c", "echo hi; echo $0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hi\nsh\n"
    failed = entrypoint(base_env(tmp_path), "sh", "-c", "exit 7", cwd=tmp_path)
    assert failed.returncode == 7


def test_the_entrypoint_parses() -> None:
    result = subprocess.run([SH, "-n", str(ENTRYPOINT)], capture_output=True, text=True,
                            timeout=10, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
