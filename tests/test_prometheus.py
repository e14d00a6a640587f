"""Prometheus metrics of real processes, checked with Prometheus' own tools.

``cirelay serve --workers 2`` runs gunicorn with prometheus_client in multiprocess mode: each
worker writes its samples to files in ``PROMETHEUS_MULTIPROC_DIR`` (set and emptied by
``cirelay serve``), ``/metrics`` sums them, and gunicorn's ``child_exit`` hook calls
``mark_process_dead`` so a dead worker's *live* gauges stop counting. These tests show, with
real processes on loopback and SQLite in a temp dir:

- files left in the directory by an earlier run are removed, not summed;
- ``/metrics`` gives the totals over both workers (each worker's own file is read too, to
  show that both served notifications);
- ``promtool check metrics`` accepts the exposition of the service and of ``cirelay worker
  --metrics-port``, with no lint warning;
- a worker killed with SIGKILL keeps its counts in the totals, while its share of
  ``cirelay_sse_clients`` (``livesum``) is dropped;
- a real Prometheus server scrapes the service and a ``cirelay worker`` (which runs *without*
  ``PROMETHEUS_MULTIPROC_DIR`` and serves its own registry) and its queries give the exact
  totals, nothing counted twice.

A plain sum over two workers (queue notifications, read from ``/metrics`` only) is also in
``tests/test_cli.py``; this module sends signed per-job callbacks and reads the workers'
files as well.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from app import store
from tests.conftest import CALLBACK_KEYS, callback_path, ci_job_id, make_job, notification_xml
from tests.e2e_stack import (
    API_KEY,
    CIRELAY,
    Process,
    children_of,
    free_port,
    poll,
    spawn,
    stack_env,
    wait_http,
)
from tests.prometheus_server import Prometheus, running_prometheus, tool
from tests.subscriber import Subscriber

pytestmark = pytest.mark.slow

XML = {"Content-Type": "application/xml", "Connection": "close"}
AUTH = {"Authorization": f"Bearer {API_KEY}"}
ACCEPTED = ("cirelay_notifications_total", {"outcome": "accepted"})
#: what the stale files left in the multiprocess directory claim
STALE_PID = 99999
STALE_ACCEPTED = 1000.0
STALE_SSE_CLIENTS = 7.0
#: notifications sent per round while spreading them over the workers
BATCH = 20


# --- reading an exposition ------------------------------------------------------------------


def sample(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of the sample ``name{labels}`` (labels matched exactly) in a text exposition."""
    wanted = labels or {}
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == wanted:
                return float(found.value)
    return None


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample called ``name`` in a text exposition, with its labels."""
    return [(dict(found.labels), float(found.value))
            for family in text_string_to_metric_families(text)
            for found in family.samples if found.name == name]  # fmt: skip


def eventually(what: str, read: Callable[[], object], expected: object) -> None:
    """Poll until ``read() == expected``; on timeout fail with the last value read."""
    last: list[object] = []

    def probe() -> bool:
        last[:] = [read()]
        return last[0] == expected

    try:
        poll(what, probe)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: last {last!r}, expected {expected!r}") from None


def per_pid(directory: Path, kind: str, name: str, labels: dict[str, str]) -> dict[int, float]:
    """One process's value of a sample, for each ``<kind>_<pid>.db`` file in the multiprocess
    directory (``kind``: ``counter`` or ``gauge_livesum``), read as the collector reads it."""
    values: dict[int, float] = {}
    for path in sorted(directory.glob(f"{kind}_*.db")):
        pid = int(path.stem.rsplit("_", 1)[1])
        for family in MultiProcessCollector.merge([str(path)]):  # type: ignore[no-untyped-call]
            for found in family.samples:
                # gauges of mode all/liveall keep a pid label; livesum ones are summed
                found_labels = {k: v for k, v in found.labels.items() if k != "pid"}
                if found.name == name and found_labels == labels:
                    values[pid] = values.get(pid, 0.0) + float(found.value)
    return values


# --- the service ----------------------------------------------------------------------------


@dataclass
class Service:
    """``cirelay serve --workers 2`` and what a test needs to drive and read it."""

    process: Process
    port: int
    env: dict[str, str]
    metrics_dir: Path
    engine: Engine
    sent: int = 0  # jobs made so far; the next one is job_<sent>

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def scrape(self) -> str:
        response = requests.get(f"{self.base}/metrics", timeout=10)
        assert response.status_code == 200, response.text
        return response.text

    def value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return sample(self.scrape(), name, labels)

    def workers(self) -> set[int]:
        """The pids of gunicorn's workers (``cirelay serve`` execs gunicorn in its own pid)."""
        return children_of(self.process.popen.pid)

    def accepted_by_pid(self) -> dict[int, float]:
        return per_pid(self.metrics_dir, "counter", "cirelay_notifications_total",
                       {"outcome": "accepted"})  # fmt: skip

    def send(self, count: int) -> None:
        """``count`` new jobs, then one Success callback each on its own signed URL, eight at a
        time, each on a connection of its own (a new connection may go to either worker)."""
        now = datetime.now(UTC)
        numbers = range(self.sent, self.sent + count)
        paths = [make_job(self.engine, f"job_{i:05d}", now, ci_job_id(i)) for i in numbers]
        self.sent += count

        def post(item: tuple[int, str]) -> None:
            number, path = item
            response = requests.post(f"{self.base}{path}", data=notification_xml(ci_job_id(number)),
                                     headers=XML, timeout=30)  # fmt: skip
            assert response.status_code == 200, response.text
            assert response.json()["results"][0]["outcome"] == "accepted", response.text

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(post, zip(numbers, paths, strict=True)))

    def send_to_both_workers(self) -> int:
        """Send notifications in rounds until both workers have accepted some; returns how
        many were sent in all."""
        for _ in range(10):
            self.send(BATCH)
            served = {pid for pid, n in self.accepted_by_pid().items() if n > 0}
            if len(served) >= 2:
                assert served <= self.workers(), (served, self.workers())
                return self.sent
        raise AssertionError(f"one worker took all {self.sent} notifications: {served}")


def write_stale_files(directory: Path) -> None:
    """Files as a worker of an earlier run (pid 99999) would have left them: 1000 notifications
    accepted and 7 SSE clients connected."""
    directory.mkdir(parents=True)
    stale = [
        ("counter", "cirelay_notifications", "cirelay_notifications_total", {"outcome": "accepted"},
         "CI notifications received, by outcome.", STALE_ACCEPTED),
        ("gauge_livesum", "cirelay_sse_clients", "cirelay_sse_clients", {},
         "Clients connected to GET /v1/events/stream.", STALE_SSE_CLIENTS),
    ]  # fmt: skip
    for kind, family, name, labels, help_text, value in stale:
        key = mmap_key(family, name, list(labels), list(labels.values()), help_text)
        values = MmapedDict(str(directory / f"{kind}_{STALE_PID}.db"))  # type: ignore[no-untyped-call]
        values.write_value(key, value, 0.0)  # type: ignore[no-untyped-call]
        values.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    """``cirelay serve --workers 2`` on SQLite in ``tmp_path``, its multiprocess directory
    holding stale files of an earlier run when it starts. Prints its log at the end (shown
    by pytest when the test failed)."""
    port = free_port()
    env = stack_env(tmp_path, port, free_port()) | {
        "CIRELAY_CALLBACK_KEYS": ",".join(CALLBACK_KEYS),  # what tests.conftest signs with
        "CIRELAY_DELIVERY_ALLOWED_NETWORKS": "127.0.0.0/8",  # a subscriber on loopback
        "CIRELAY_RECONCILE_AFTER_SECONDS": "3600",  # no CI here: never ask it
    }
    metrics_dir = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    write_stale_files(metrics_dir)
    # they are files the collector reads: left there, they would be summed
    files = [str(p) for p in metrics_dir.iterdir()]
    stale = MultiProcessCollector.merge(files)  # type: ignore[no-untyped-call]
    assert {s.name: s.value for f in stale for s in f.samples} == {
        "cirelay_notifications_total": STALE_ACCEPTED,
        "cirelay_sse_clients": STALE_SSE_CLIENTS,
    }
    engine = store.create_engine(env["CIRELAY_DATABASE_URL"])  # connects on first use
    process = spawn("serve", [*CIRELAY, "serve", "--port", str(port), "--workers", "2"], env,
                    tmp_path)  # fmt: skip
    try:
        running = Service(process, port, env, metrics_dir, engine)
        wait_http("the service", f"{running.base}/readyz", process)
        poll("both gunicorn workers", lambda: len(running.workers()) == 2)
        yield running
    finally:
        process.stop()
        engine.dispose()
        print(f"----- serve ({process.log_path}) -----\n{process.tail(80)}")


@pytest.fixture
def worker(service: Service, tmp_path: Path) -> Iterator[tuple[Process, int]]:
    """``cirelay worker --metrics-port <port>`` on the service's database, *without*
    ``PROMETHEUS_MULTIPROC_DIR``: it serves its own registry, and its counters are not in
    the service's files (sharing them, the service's /metrics would report the worker's
    counts too, and a Prometheus scraping both would count them twice)."""
    port = free_port()
    env = {k: v for k, v in service.env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    process = spawn("worker", [*CIRELAY, "worker", "--metrics-port", str(port)], env, tmp_path)
    try:
        wait_http("the worker's /metrics", f"http://127.0.0.1:{port}/metrics", process)
        yield process, port
    finally:
        process.stop()
        print(f"----- worker ({process.log_path}) -----\n{process.tail(80)}")


def promtool_check(exposition: bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), "check", "metrics"], input=exposition.decode(), capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip


# --- multiprocess mode under gunicorn -------------------------------------------------------


def test_metrics_are_the_totals_over_both_workers_and_stale_files_are_gone(
    service: Service,
) -> None:
    """``cirelay serve`` emptied the directory (the stale files, claiming 1000 accepted and 7
    SSE clients, are gone and not summed); with both workers having accepted notifications,
    ``/metrics`` reports exactly the number sent, as the sum of the workers' own files."""
    assert not (service.metrics_dir / f"counter_{STALE_PID}.db").exists()
    assert not (service.metrics_dir / f"gauge_livesum_{STALE_PID}.db").exists()

    sent = service.send_to_both_workers()

    by_pid = service.accepted_by_pid()
    assert STALE_PID not in by_pid
    assert sum(1 for n in by_pid.values() if n > 0) == 2, by_pid
    assert sum(by_pid.values()) == sent
    text = service.scrape()
    assert sample(text, *ACCEPTED) == sent
    transitions = {"from_state": "Submitted", "to_state": "Success"}
    assert sample(text, "cirelay_job_state_transitions_total", transitions) == sent
    assert sample(text, "cirelay_ci_job_duration_seconds_count", {"state": "Success"}) == sent
    assert sample(text, "cirelay_notification_processing_seconds_count",
                  {"wire_format": "xml"}) == sent  # fmt: skip
    assert sample(text, "cirelay_sse_clients") == 0


def test_requests_commits_and_each_workers_cpu_and_memory_are_exposed(service: Service) -> None:
    """Every request answered is counted by method and code and timed; every notification
    is in one group commit's batch; the scrape reports CPU and memory of each gunicorn worker
    (label ``pid``: both, whichever answered the scrape); no connection stays checked out."""
    sent = service.send_to_both_workers()
    text = service.scrape()
    assert sample(text, "cirelay_http_requests_total", {"method": "POST", "code": "200"}) == sent
    assert (sample(text, "cirelay_http_request_duration_seconds_count") or 0) >= sent
    assert sample(text, "cirelay_commit_batch_size_sum") == sent
    assert 1 <= (sample(text, "cirelay_commit_batch_size_count") or 0) <= sent
    assert sample(text, "cirelay_db_connections_in_use") == 0
    pids = {str(pid) for pid in service.workers()}
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes"):
        reported = {labels["pid"]: value for labels, value in samples(text, name)}
        assert set(reported) == pids, name
        assert all(value > 0 for value in reported.values()), name


def test_service_exposition_passes_promtool_check_metrics(service: Service) -> None:
    """The service's ``/metrics`` (multiprocess, after accepted, duplicate, forged and
    quarantined notifications) passes ``promtool check metrics`` with no lint warning."""
    service.send_to_both_workers()
    first = notification_xml(ci_job_id(0))
    again = requests.post(f"{service.base}{callback_path('job_00000')}", data=first,
                          headers=XML, timeout=10)  # fmt: skip
    assert again.json()["results"][0]["outcome"] == "duplicate", again.text
    forged = requests.post(f"{service.base}/callbacks/ci/job_00000/{'x' * 43}", data=first,
                           headers=XML, timeout=10)  # fmt: skip
    assert forged.status_code == 404  # a bad token: unauthenticated
    path = make_job(service.engine, "job_00000_again", datetime.now(UTC), None)
    invalid = requests.post(f"{service.base}{path}", data="<Response/>", headers=XML, timeout=10)
    assert invalid.status_code == 400  # quarantined: schema_violation
    response = requests.get(f"{service.base}/metrics", timeout=10)
    assert response.headers["Content-Type"].startswith("text/plain;")
    for outcome in ("duplicate", "unauthenticated", "schema_violation"):
        assert sample(response.text, "cirelay_notifications_total", {"outcome": outcome}) == 1
    assert sample(response.text, "cirelay_quarantine_size") == 1

    checked = promtool_check(response.content)

    assert checked.returncode == 0, f"{checked.stdout}{checked.stderr}"
    assert checked.stdout + checked.stderr == "", "promtool lint warnings"


def test_worker_exposition_passes_promtool_check_metrics(
    service: Service, worker: tuple[Process, int]
) -> None:
    """``cirelay worker --metrics-port``'s ``/metrics`` in the Prometheus text format passes
    ``promtool check metrics`` with no lint warning. (promtool reads only that format: given
    OpenMetrics, it reports "no help text" for every counter, whose HELP line names the family
    without ``_total``. Prometheus itself asks for OpenMetrics, which the worker serves: the
    scrape in the last test covers that format.)"""
    _, port = worker
    response = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert response.headers["Content-Type"].startswith("text/plain;")
    assert sample(
        response.text, "cirelay_deliveries_total", {"outcome": "delivered", "transport": "http"}
    ) == 0

    checked = promtool_check(response.content)

    assert checked.returncode == 0, f"{checked.stdout}{checked.stderr}"
    assert checked.stdout + checked.stderr == "", "promtool lint warnings"


def test_a_killed_worker_keeps_its_counts_and_drops_its_live_gauge(service: Service) -> None:
    """SIGKILL the worker holding an SSE stream (so its ``finally`` never decrements the
    gauge): ``child_exit`` → ``mark_process_dead`` removes its live-gauge file and
    ``cirelay_sse_clients`` goes back to 0, while the notifications it counted stay in the
    totals; the worker gunicorn starts in its place counts on from there."""
    sent = service.send_to_both_workers()
    with requests.get(f"{service.base}/v1/events/stream", headers=AUTH, stream=True,
                      timeout=(5, 30)) as stream:  # fmt: skip
        assert stream.status_code == 200
        # kept referenced: an iterator garbage-collected half-way closes the connection
        lines = stream.iter_lines()
        assert next(lines) == b"retry: 2000"
        eventually("the SSE client counted", lambda: service.value("cirelay_sse_clients"), 1)
        holders = per_pid(service.metrics_dir, "gauge_livesum", "cirelay_sse_clients", {})
        (holder,) = (pid for pid, n in holders.items() if n == 1)
        assert holder in service.workers()
        assert service.accepted_by_pid()[holder] > 0  # counts that must survive it

        os.kill(holder, signal.SIGKILL)
        poll("a new worker", lambda: len(service.workers() - {holder}) == 2)
        eventually("the dead worker's SSE client dropped",
                   lambda: service.value("cirelay_sse_clients"), 0)  # fmt: skip

    assert not (service.metrics_dir / f"gauge_livesum_{holder}.db").exists()
    assert (service.metrics_dir / f"counter_{holder}.db").exists()
    assert service.value(*ACCEPTED) == sent

    service.send(BATCH)
    assert service.value(*ACCEPTED) == sent + BATCH


# --- a real Prometheus server ---------------------------------------------------------------


@pytest.fixture
def prometheus(
    service: Service, worker: tuple[Process, int], tmp_path: Path
) -> Iterator[Prometheus]:
    """A Prometheus server scraping the service (job ``cirelay``) and the worker (job
    ``cirelay-worker``) every second, running until all its targets are up."""
    _, worker_port = worker
    with running_prometheus({"cirelay": service.port, "cirelay-worker": worker_port},
                            tmp_path) as server:  # fmt: skip
        yield server


def test_prometheus_scrapes_the_service_and_the_worker(
    service: Service, worker: tuple[Process, int], prometheus: Prometheus
) -> None:
    """A real Prometheus scrapes both targets (``up`` is 1 for each), and its queries give
    the exact totals: the notifications both gunicorn workers accepted, and the deliveries
    the worker made, each counted once (the service's /metrics does not report the worker's
    counters, as it would if the worker shared its multiprocess directory)."""
    with Subscriber() as hook:
        body = {"url": hook.url(), "event_types": ["com.cirelay.job.succeeded"]}
        created = requests.post(f"{service.base}/v1/subscriptions", json=body, headers=AUTH,
                                timeout=10)  # fmt: skip
        assert created.status_code == 201, created.text
        sent = service.send_to_both_workers()
        eventually("distinct events delivered",
                   lambda: len({r.webhook_id for r in hook.requests}), sent)  # fmt: skip

    eventually("up", lambda: prometheus.by_job("up"), {"cirelay": 1, "cirelay-worker": 1})
    total = 'sum(cirelay_notifications_total{outcome="accepted"})'
    eventually(total, lambda: prometheus.by_job(total), {"": sent})
    delivered = 'sum by (job) (cirelay_deliveries_total{outcome="delivered"})'
    by_worker = {"cirelay": 0, "cirelay-worker": sent}
    eventually(delivered, lambda: prometheus.by_job(delivered), by_worker)
    accepted = 'sum by (job) (cirelay_notifications_total{outcome="accepted"})'
    assert prometheus.by_job(accepted) == {"cirelay": sent, "cirelay-worker": 0}
