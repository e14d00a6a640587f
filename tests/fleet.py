"""A fleet of real processes for the load-balancer test (``tests/test_fleet.py``): two
``cirelay serve`` instances behind nginx, sharing one PostgreSQL database of their own, two
``cirelay worker`` processes and the CI emulator, all on loopback.

    with Fleet.start(tmp_path, admin_url) as fleet:   # a fresh database, migrated
        fleet.kill("a")                               # SIGKILL: gunicorn master and workers
        fleet.restart("a")                            # the same port again

Every process writes to ``<dir>/<name>.log`` (nginx to ``<dir>/nginx/error.log``);
:meth:`Fleet.tails` gives the end of each. :meth:`Fleet.stop` ends every process (SIGTERM to
its process group, SIGKILL after a timeout) and drops the database.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from app import store
from tests.e2e_stack import (
    API_KEY,
    CIRELAY,
    Process,
    _wait_log,
    free_port,
    sample_sum,
    spawn,
    stack_env,
    wait_http,
)

#: nginx as the Debian package installs it (``make system-deps``)
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"

#: ``@NAME@`` placeholders are filled in by :func:`nginx_conf`.
NGINX_CONF = """\
# cirelay behind nginx: two instances, either may die at any moment
worker_processes 1;
@USER@
pid @PREFIX@/nginx.pid;
error_log @PREFIX@/error.log warn;

events { worker_connections 1024; }

http {
    access_log off;
    client_body_temp_path @PREFIX@/client_body;
    proxy_temp_path @PREFIX@/proxy;
    fastcgi_temp_path @PREFIX@/fastcgi;
    uwsgi_temp_path @PREFIX@/uwsgi;
    scgi_temp_path @PREFIX@/scgi;
    client_max_body_size 2m;

    upstream cirelay {
        # a failed instance sits out 1 s, then gets tried again (it may be back)
        server 127.0.0.1:@PORT_A@ max_fails=1 fail_timeout=1s;
        server 127.0.0.1:@PORT_B@ max_fails=1 fail_timeout=1s;
        keepalive 32;
        keepalive_timeout 4s;  # below gunicorn's keepalive (5 s): nginx closes first
    }

    server {
        listen 127.0.0.1:@PORT@;

        location / {
            proxy_pass http://cirelay;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_connect_timeout 2s;
            proxy_read_timeout 60s;
            # POSTs too (non_idempotent): a notification is deduplicated by its content, a
            # job submission carries an Idempotency-Key, so sending either again to the
            # other instance after this one died mid-request records nothing twice
            proxy_next_upstream error timeout http_502 http_503 non_idempotent;
            proxy_next_upstream_tries 4;
            proxy_next_upstream_timeout 30s;
        }
    }
}
"""


def nginx_conf(prefix: Path, port: int, upstreams: tuple[int, int]) -> str:
    # as root, nginx's workers would switch to `nobody`, who cannot enter pytest's tmp dirs
    user = "user root root;" if os.geteuid() == 0 else ""
    text = NGINX_CONF
    for name, value in {
        "USER": user,
        "PREFIX": str(prefix),
        "PORT": str(port),
        "PORT_A": str(upstreams[0]),
        "PORT_B": str(upstreams[1]),
    }.items():
        text = text.replace(f"@{name}@", value)
    return text


# --- a database of our own ------------------------------------------------------------------


def create_database(admin_url: str, name: str | None = None) -> str:
    """A new, empty database on the server of ``admin_url``, named ``name`` (one left by
    an earlier run is dropped first) or a fresh name; its URL."""
    name = name or f"cirelay_fleet_{secrets.token_hex(4)}"
    engine = sa.create_engine(_driver_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, url: str) -> None:
    name = make_url(url).database
    engine = sa.create_engine(_driver_url(admin_url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        engine.dispose()


def _driver_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return url


# --- the fleet --------------------------------------------------------------------------------


@dataclass
class Fleet:
    directory: Path
    admin_url: str
    database_url: str
    port: int  # nginx
    serve_ports: dict[str, int]  # "a", "b"
    emulator_port: int
    worker_ports: dict[str, int]  # each worker's /metrics
    env: dict[str, str]
    processes: list[Process] = field(default_factory=list)
    serve: dict[str, Process] = field(default_factory=dict)
    #: the processes that lead a process group of their own (started in a new session)
    groups: set[str] = field(default_factory=set)
    _restarts: dict[str, int] = field(default_factory=dict)
    _engine: Engine | None = None

    @classmethod
    @contextmanager
    def start(
        cls, directory: Path, admin_url: str, env: dict[str, str] | None = None
    ) -> Iterator[Fleet]:
        directory.mkdir(parents=True, exist_ok=True)
        database_url = create_database(admin_url)
        port, emulator = free_port(), free_port()
        serve_ports = {"a": free_port(), "b": free_port()}
        environment = stack_env(directory, port, emulator) | {
            "CIRELAY_DATABASE_URL": database_url,
            "CIRELAY_PROXY_HOPS": "1",
        } | (env or {})  # fmt: skip
        worker_ports = {f"worker-{n}": free_port() for n in (1, 2)}
        fleet = cls(
            directory, admin_url, database_url, port, serve_ports, emulator, worker_ports,
            environment,
        )  # fmt: skip
        try:
            try:
                fleet._boot()
            except BaseException:
                print(fleet.tails())  # shown by pytest when the start fails
                raise
            yield fleet
        finally:
            fleet.stop()

    def _boot(self) -> None:
        self._migrate()
        emulator = self._spawn("emulator", ["emulator", "--port", str(self.emulator_port)])
        for name in self.serve_ports:
            self._start_serve(name)
        self._start_nginx()
        workers = [
            self._spawn(name, ["worker", "--metrics-port", str(metrics_port)])
            for name, metrics_port in self.worker_ports.items()
        ]
        wait_http("the emulator", f"{self.emulator}/_emulator/health", emulator)
        for name in self.serve_ports:
            self.wait_ready(name)
        for worker in workers:
            _wait_log(worker, "worker: reconciling")
        wait_http("nginx", f"{self.base}/readyz", self.nginx)

    # --- processes ---------------------------------------------------------------------------

    def _env_for(self, name: str) -> dict[str, str]:
        """Each ``serve`` its own Prometheus multiprocess directory: it empties its own at
        start, which must not pull the files from under another instance. Workers serve
        their own registry (``--metrics-port``), with no such directory."""
        if name in self.worker_ports:
            return {k: v for k, v in self.env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        metrics = self.directory / f"prometheus-{name}"
        metrics.mkdir(exist_ok=True)
        return self.env | {"PROMETHEUS_MULTIPROC_DIR": str(metrics)}

    def _spawn(self, name: str, args: list[str], **popen: Any) -> Process:
        base = name.split("#")[0]
        process = spawn(name, [*CIRELAY, *args], self._env_for(base), self.directory, **popen)
        self.processes.append(process)
        return process

    def _migrate(self) -> None:
        done = subprocess.run(
            [*CIRELAY, "db", "upgrade"], env=self.env, capture_output=True, text=True,
            timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

    def _start_serve(self, name: str) -> Process:
        n = self._restarts.get(name, 0)
        self._restarts[name] = n + 1
        label = f"serve-{name}" + (f"#{n}" if n else "")
        # a session of its own: gunicorn's master and workers form one process group
        process = self._spawn(
            label,
            ["serve", "--port", str(self.serve_ports[name]), "--workers", "2"],
            start_new_session=True,
        )
        self.serve[name] = process
        self.groups.add(label)
        return process

    def _start_nginx(self) -> None:
        prefix = self.directory / "nginx"
        prefix.mkdir(exist_ok=True)
        conf = prefix / "nginx.conf"
        ports = (self.serve_ports["a"], self.serve_ports["b"])
        conf.write_text(nginx_conf(prefix, self.port, ports))
        command = [NGINX, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr
        process = spawn("nginx", command, self.env, self.directory, start_new_session=True)
        self.processes.append(process)
        self.groups.add("nginx")

    @property
    def nginx(self) -> Process:
        return next(p for p in self.processes if p.name == "nginx")

    @property
    def workers(self) -> list[Process]:
        return [p for p in self.processes if p.name.startswith("worker-")]

    def wait_ready(self, name: str, deadline: float = 60) -> None:
        port = self.serve_ports[name]
        wait_http(f"serve {name}", f"http://127.0.0.1:{port}/readyz", self.serve[name], deadline)

    def kill(self, name: str) -> None:
        """SIGKILL one instance's whole process group: gunicorn's master and its workers, in
        the middle of whatever they were doing."""
        process = self.serve[name]
        os.killpg(process.popen.pid, signal.SIGKILL)
        process.popen.wait(timeout=10)
        _wait_group_gone(process.popen.pid)

    def restart(self, name: str) -> None:
        self._start_serve(name)
        self.wait_ready(name)

    def stop(self) -> None:
        for process in reversed(self.processes):
            _stop(process, group=process.name in self.groups)
        if self._engine is not None:
            self._engine.dispose()
        with suppress(Exception):  # the test reports its own failure, not a clean-up one
            drop_database(self.admin_url, self.database_url)

    def tails(self, lines: int = 30) -> str:
        parts = [f"----- {p.name} ({p.log_path}) -----\n{p.tail(lines)}" for p in self.processes]
        error_log = self.directory / "nginx" / "error.log"
        if error_log.exists():
            text = "\n".join(error_log.read_text(errors="replace").splitlines()[-lines:])
            parts.append(f"----- nginx error.log -----\n{text}")
        return "\n".join(parts)

    def check_alive(self) -> None:
        current = [*self.serve.values(), self.nginx, *self.workers]
        dead = [p.name for p in current if not p.alive()]
        assert not dead, f"processes exited: {dead}"

    # --- APIs ----------------------------------------------------------------------------------

    @property
    def base(self) -> str:
        """nginx: what clients and CI (the emulator) talk to."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def emulator(self) -> str:
        return f"http://127.0.0.1:{self.emulator_port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def emulator_get(self, path: str) -> Any:
        response = requests.get(f"{self.emulator}/_emulator/{path}", timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = store.create_engine(self.database_url, pool_size=2)
        return self._engine

    def worker_metric(self, name: str, sample: str) -> float:
        """One sample of one worker's own /metrics, e.g.
        ``worker_metric("worker-1", 'cirelay_deliveries_total{outcome="delivered"}')``."""
        url = f"http://127.0.0.1:{self.worker_ports[name]}/metrics"
        return sample_sum(requests.get(url, timeout=10).text, sample)

    def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(m) for m in conn.execute(sa.text(sql), params).mappings()]

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar_one()


def _wait_group_gone(pgid: int, timeout: float = 10) -> None:
    """Until no process of the group is left (its workers may outlive the master briefly)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process group {pgid} still alive after SIGKILL")


def _stop(process: Process, group: bool, timeout: float = 15) -> None:
    """SIGTERM (to the process group when it leads one), SIGKILL after ``timeout``."""
    pid = process.popen.pid
    try:
        if process.popen.poll() is None or group:
            _signal(pid, signal.SIGTERM, group)
            try:
                process.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal(pid, signal.SIGKILL, group)
                process.popen.wait()
            if group:  # a worker its master left behind
                _signal(pid, signal.SIGKILL, group)
    finally:
        process.log.close()


def _signal(pid: int, sig: int, group: bool) -> None:
    with suppress(ProcessLookupError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
