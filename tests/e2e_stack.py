"""The whole cirelay stack as real processes on loopback, for the end-to-end tests.

    with Stack.start(tmp_path) as stack:      # emulator, `cirelay serve`, `cirelay worker`
        job = stack.submit(job_json())
        done = stack.wait_final(job["id"])

Every process writes its stdout and stderr to ``<dir>/<name>.log``; :meth:`Stack.tails` gives
the end of each (the tests print it when they fail). :meth:`Stack.stop` sends SIGTERM, kills
after a timeout and closes everything it opened.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import requests
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app import store

CIRELAY = [sys.executable, "-m", "app.cli"]
API_KEY = "e2e-api-key-0123456789abcdef"
CALLBACK_KEY = "e2e-callback-key-0123456789abcdef"
QUEUE_SECRET = "e2e-queue-secret-0123456789abcdef"
SECRET_ID = "AKIDe2e0123456789abcdef0123456789ab"
SECRET_KEY = "e2e-ci-secret-key-0123456789abcdef"
BUCKET = "media-1250000000"
REGION = "ap-guangzhou"
TERMINAL = ("Success", "Failed", "Cancel")
TERMINAL_EVENTS = ("com.cirelay.job.succeeded", "com.cirelay.job.failed",
                   "com.cirelay.job.cancelled")  # fmt: skip
#: how long any one thing may take to happen before a poll gives up
DEADLINE = 30.0

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sample_sum(text: str, sample: str) -> float:
    """In a text exposition, the sum of the samples ``sample`` names (``name`` or
    ``name{label="value",…}``) over the labels it does not give: 0 when none is exposed."""
    name, _, rest = sample.partition("{")
    wanted = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    total = 0.0
    for line in text.splitlines():
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if match and match.group(1) == name:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if wanted.items() <= labels.items():
                total += float(match.group(3))
    return total


def children_of(parent: int) -> set[int]:
    """The live pids whose parent is ``parent`` (gunicorn's workers, for its arbiter), from
    /proc. A killed child stays a zombie until its parent reaps it: it is not counted."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # the process ended meanwhile
            continue
        if int(fields[1]) == parent and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def poll(
    what: str, probe: Callable[[], T | None], *, deadline: float = DEADLINE, every: float = 0.1
) -> T:
    """``probe()`` until it returns something other than ``None`` (or ``False``)."""
    end = time.monotonic() + deadline
    last: Any = None
    while True:
        last = probe()
        if last is not None and last is not False:
            return last
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline:g}s waiting for {what}")
        time.sleep(every)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes]

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        try:
            if self.popen.poll() is None:
                self.popen.send_signal(sig)
                try:
                    self.popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait()
        finally:
            self.log.close()

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def spawn(name: str, command: list[str], env: dict[str, str], directory: Path,
          **popen: Any) -> Process:  # fmt: skip
    log_path = directory / f"{name}.log"
    log = log_path.open("ab")
    try:
        process = subprocess.Popen(  # our own commands
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            **popen,
        )  # fmt: skip
    except BaseException:
        log.close()
        raise
    return Process(name, process, log_path, log)


def stack_env(directory: Path, service_port: int, emulator_port: int) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CIRELAY_")}
    return {
        **base,
        "CIRELAY_DATABASE_URL": f"sqlite:///{directory / 'cirelay.db'}",
        "CIRELAY_API_KEYS": API_KEY,
        "CIRELAY_CALLBACK_KEYS": CALLBACK_KEY,
        "CIRELAY_QUEUE_CALLBACK_SECRET": QUEUE_SECRET,
        "CIRELAY_CI_SECRET_ID": SECRET_ID,
        "CIRELAY_CI_SECRET_KEY": SECRET_KEY,
        "CIRELAY_CI_BUCKET": BUCKET,
        "CIRELAY_CI_REGION": REGION,
        "CIRELAY_CI_ENDPOINT": f"http://127.0.0.1:{emulator_port}",
        "CIRELAY_PUBLIC_URL": f"http://127.0.0.1:{service_port}",
        "CIRELAY_EMULATOR_JOB_SECONDS": "0.5",
        "CIRELAY_EMULATOR_CALLBACK_RETRIES": "0.2,0.4,0.8,1.6",
        "CIRELAY_RECONCILE_AFTER_SECONDS": "2",
        "CIRELAY_CI_TIMEOUT_SECONDS": "2",
        "CIRELAY_RECONCILE_INTERVAL_SECONDS": "1",
        "PROMETHEUS_MULTIPROC_DIR": str(directory / "prometheus"),
    }


def wait_http(what: str, url: str, process: Process, deadline: float = DEADLINE) -> None:
    def ready() -> bool:
        if not process.alive():
            raise AssertionError(f"{process.name} exited with {process.popen.returncode}")
        try:
            return requests.get(url, timeout=1).status_code == 200
        except requests.RequestException:  # not listening yet
            return False

    poll(what, ready, deadline=deadline)


@dataclass
class Stack:
    directory: Path
    service_port: int
    emulator_port: int
    env: dict[str, str]
    processes: list[Process] = field(default_factory=list)
    http: requests.Session = field(default_factory=requests.Session)
    _engine: Engine | None = None

    # --- life ------------------------------------------------------------------------------

    @classmethod
    @contextmanager
    def start(cls, directory: Path, env: dict[str, str] | None = None) -> Iterator[Stack]:
        directory.mkdir(parents=True, exist_ok=True)
        service, emulator = free_port(), free_port()
        environment = stack_env(directory, service, emulator) | (env or {})
        stack = cls(directory, service, emulator, environment)
        try:
            emu = stack._spawn("emulator", ["emulator", "--port", str(emulator)])
            serve = stack._spawn("serve", ["serve", "--port", str(service), "--workers", "2"])
            # `cirelay serve` migrates the database before gunicorn listens: the worker
            # may start then
            _wait_log(serve, "Listening at")
            worker = stack._spawn("worker", ["worker"])
            wait_http("the emulator", f"{stack.emulator}/_emulator/health", emu)
            wait_http("the service", f"{stack.base}/readyz", serve)
            _wait_log(worker, "worker: reconciling")
            yield stack
        finally:
            stack.stop()

    def _spawn(self, name: str, args: list[str]) -> Process:
        process = spawn(name, [*CIRELAY, *args], self.env, self.directory)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in reversed(self.processes):  # worker, service, emulator
            process.stop()
        self.http.close()
        if self._engine is not None:
            self._engine.dispose()

    def tails(self, lines: int = 40) -> str:
        return "\n".join(
            f"----- {p.name} ({p.log_path}) -----\n{p.tail(lines)}" for p in self.processes
        )

    def check_alive(self) -> None:
        dead = [p.name for p in self.processes if not p.alive()]
        assert not dead, f"processes exited: {dead}"

    # --- cirelay's public API ---------------------------------------------------------------

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.service_port}"

    @property
    def emulator(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def post_job(self, job: dict[str, Any], timeout: float = 30) -> requests.Response:
        # a session of its own: safe to call from several threads at once
        with requests.Session() as session:
            return session.post(f"{self.base}/v1/jobs", json=job, headers=self.auth,
                                timeout=timeout)  # fmt: skip

    def submit(self, job: dict[str, Any]) -> dict[str, Any]:
        response = self.post_job(job)
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def job(self, ident: str) -> dict[str, Any]:
        response = self.http.get(f"{self.base}/v1/jobs/{ident}", headers=self.auth, timeout=10)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_final(self, ident: str, deadline: float = DEADLINE) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            job = self.job(ident)
            return job if job["state"] in TERMINAL else None

        return poll(f"job {ident} to finish", final, deadline=deadline)

    def metrics_text(self) -> str:
        return self.http.get(f"{self.base}/metrics", timeout=10).text

    def metric(self, name: str, labels: str = "") -> float:
        """A sample's value (0 when not exposed yet), summed over the labels not given, e.g.
        ``metric("cirelay_notifications_total", '{outcome="duplicate"}')``."""
        return sample_sum(self.metrics_text(), name + labels)

    def terminal_transitions(self) -> float:
        text = self.metrics_text()
        pattern = r"^cirelay_job_state_transitions_total\{([^}]*)\} (\S+)$"
        return sum(
            float(value)
            for labels, value in re.findall(pattern, text, re.MULTILINE)
            if any(f'to_state="{state}"' in labels for state in TERMINAL)
        )

    # --- the emulator's admin API -----------------------------------------------------------

    def faults(self, changes: dict[str, Any]) -> dict[str, Any]:
        response = self.http.post(f"{self.emulator}/_emulator/faults", json=changes, timeout=5)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def fault_status(self) -> dict[str, Any]:
        """Settings, ``next`` counters left and how often each fault fired."""
        response = self.http.get(f"{self.emulator}/_emulator/faults", timeout=5)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def flush(self) -> None:
        """Release the notifications a ``reorder`` fault holds back."""
        response = self.http.post(f"{self.emulator}/_emulator/flush", timeout=5)
        assert response.status_code == 200, response.text

    def deliveries(self, ci_job_id: str | None = None) -> list[dict[str, Any]]:
        params = {"job_id": ci_job_id} if ci_job_id else {}
        response = self.http.get(f"{self.emulator}/_emulator/deliveries", params=params,
                                 timeout=5)  # fmt: skip
        assert response.status_code == 200, response.text
        body: list[dict[str, Any]] = response.json()
        return body

    def wait_deliveries_settled(self, ci_job_id: str) -> list[dict[str, Any]]:
        """The job's deliveries once none is pending or held any more."""

        def settled() -> list[dict[str, Any]] | None:
            found = self.deliveries(ci_job_id)
            busy = [d for d in found if d["outcome"] in ("pending", "held")]
            return found if found and not busy else None

        return poll(f"the deliveries of {ci_job_id} to settle", settled)

    def ci_jobs(self) -> list[dict[str, Any]]:
        response = self.http.get(f"{self.emulator}/_emulator/jobs", timeout=5)
        assert response.status_code == 200, response.text
        body: list[dict[str, Any]] = response.json()
        return body

    # --- the database, read-only ------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = store.create_engine(self.env["CIRELAY_DATABASE_URL"])
        return self._engine

    def events(self, job_id: str) -> list[str]:
        """The types of the events recorded for one job, oldest first."""
        query = (
            sa.select(store.events.c.type)
            .where(store.events.c.job_id == job_id)
            .order_by(store.events.c.seq)
        )
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def terminal_events(self, job_id: str) -> list[str]:
        return [t for t in self.events(job_id) if t in TERMINAL_EVENTS]

    def quarantined(self, job_id: str | None = None) -> list[dict[str, Any]]:
        table = store.quarantined_notifications
        query = sa.select(table.c.id, table.c.job_id, table.c.error, table.c.source)
        if job_id is not None:
            query = query.where(table.c.job_id == job_id)
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query.order_by(table.c.id))]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CIRELAY, *args], env=self.env, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip


def _wait_log(process: Process, text: str) -> None:
    def logged() -> bool:
        if text in process.tail(200):
            return True
        if not process.alive():
            raise AssertionError(f"{process.name} exited with {process.popen.returncode}")
        return False

    poll(f"{process.name} to log {text!r}", logged)
