"""Two ``cirelay serve`` instances behind nginx, one PostgreSQL database, two workers, a
subscriber; one instance is SIGKILLed (gunicorn master and workers) and restarted on the same
port in the middle of the load. Everything is started and stopped here (``tests/fleet.py``).

The emulator sends every finished job's notification four times (its ``duplicate`` fault) and,
for a tenth of the jobs, a stale ``Running`` one after it (``reorder``/``stale``): more than
5,000 notifications, all through nginx, which sends a request the dead instance did not answer
to the other one (POSTs too: see the nginx configuration in ``tests/fleet.py``). Jobs are
submitted through nginx from several threads, each with an ``Idempotency-Key``, sent again
with the same key when nginx answers 5xx or the connection breaks.

Afterwards, from the database and the APIs:

- every job is in the final state the emulator gives it, and reached CI exactly once. A job
  whose instance died after storing it and before calling CI did not reach CI then; the
  Idempotency-Key replay answers 201 with it, still ``Submitting``, and the reconciler sends
  it once CI's job list shows it absent (``submit_error.code = "resubmitted"``). The figures
  count those (``resubmitted``);
- no notification is lost: each one the emulator saw answered 2xx is in ``notifications``;
- no event is recorded twice: at most one per job and type, exactly one terminal event per job;
- the subscriber got every event (deduplicated by ``webhook-id``), signed, in order per job;
- no delivery was attempted twice at once; a copy the subscriber got twice must follow a
  failed attempt (at-least-once); their number is in the figures.

The figures (duration, notifications, throughput…) are printed on one ``fleet:`` line.
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from app import store
from tests.conftest import job_json
from tests.e2e_stack import TERMINAL, TERMINAL_EVENTS, poll
from tests.fleet import NGINX, Fleet
from tests.subscriber import Subscriber

pytestmark = [pytest.mark.slow, pytest.mark.postgresql]

ADMIN_URL = os.environ.get("CIRELAY_TEST_DATABASE_URL")
JOBS = 1300
COPIES = 4  # each notification is sent this many times: 5,200, plus the stale ones
CLIENTS = 6  # submitting threads
KILL_AFTER = 0.35  # of the jobs answered
DOWN_SECONDS = 2.0
EMULATOR_HISTORY = 10_000  # the emulator forgets deliveries beyond this many

ENV = {
    "CIRELAY_EMULATOR_JOB_SECONDS": "0.3",
    "CIRELAY_EMULATOR_CALLBACK_RETRIES": "0.2,0.5,1,2,4,8",
    "CIRELAY_EMULATOR_FAULTS": json.dumps(
        {
            "seed": 7,
            "duplicate": {"probability": 1.0, "copies": COPIES},
            "reorder": {"probability": 0.1, "mode": "stale"},
        }
    ),
    "CIRELAY_CI_TIMEOUT_SECONDS": "10",
    # orphans (see above) are looked for at CI, then sent, after one silence: 3 s
    "CIRELAY_RECONCILE_AFTER_SECONDS": "3",
    "CIRELAY_RECONCILE_INTERVAL_SECONDS": "1",
    "CIRELAY_DELIVERY_ALLOWED_NETWORKS": "127.0.0.0/8",
    "CIRELAY_DELIVERY_TIMEOUT_SECONDS": "5",  # a lease: 10 s
    "CIRELAY_DELIVERY_RETRY_SCHEDULE": "0.5,1,1,1,1,1,1,1,1,1",
}

Rows = list[dict[str, Any]]


@pytest.mark.skipif(not ADMIN_URL, reason="CIRELAY_TEST_DATABASE_URL is not set")
def test_a_fleet_behind_nginx_loses_nothing_when_an_instance_is_killed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ADMIN_URL
    assert Path(NGINX).exists(), f"nginx is not installed ({NGINX}): run `make system-deps`"
    began = time.monotonic()
    with Subscriber() as hook, Fleet.start(tmp_path, ADMIN_URL, ENV) as fleet:
        try:
            figures = run_and_check(fleet, hook)
        except BaseException:
            print(fleet.tails())  # shown by pytest when the test failed
            raise
    figures["duration_s"] = round(time.monotonic() - began, 1)
    with capsys.disabled():
        print("\nfleet:", json.dumps(figures))


def run_and_check(fleet: Fleet, hook: Subscriber) -> dict[str, Any]:
    secret = subscribe(fleet, hook.url())["secret"]
    load = Load(fleet)
    load.run()
    deliveries = wait_until_settled(fleet)
    load_seconds = time.monotonic() - load.began
    fleet.check_alive()

    orphans = check_final_states(fleet, load.submissions)
    recorded = check_no_notification_lost(fleet, deliveries)
    events = check_no_event_twice(fleet)
    check_api_agrees(fleet, events)
    check_subscriber_got_everything_in_order(hook, secret, events)
    figures = check_workers_sent_nothing_twice_at_once(fleet, hook, events)

    error_log = (fleet.directory / "nginx" / "error.log").read_text(errors="replace")
    upstream_errors = [line for line in error_log.splitlines() if "[error]" in line]
    return {
        "jobs": JOBS,
        "submitted_in_s": round(load.submitted_in, 1),
        "jobs_per_s": round(JOBS / load.submitted_in, 1),
        "client_resends": sum(len(s.retries) for s in load.submissions),
        # nginx sent the POST again after the instance died: answered by Idempotency-Key
        "replayed_by_key": [s.job["state"] for s in load.submissions if s.replayed],
        "killed_after_s": round(load.killed_after, 1),
        "back_after_s": round(load.back_after, 1),
        "notifications_sent": len(deliveries),
        "callback_attempts": sum(len(d["attempts"]) for d in deliveries),
        "load_s": round(load_seconds, 1),
        "notifications_per_s": round(len(deliveries) / load_seconds, 1),
        "recorded": {
            "rows": len(recorded),
            **Counter(r["source"] for r in recorded),
            **Counter(r["outcome"] for r in recorded),
        },
        "resubmitted": len(orphans),
        "events": len(events),
        **figures,
        # requests nginx sent to the other instance: in flight when it died, or refused
        "nginx_resent": {
            "in_flight": sum("while reading response header" in e for e in upstream_errors),
            "refused": sum("while connecting to upstream" in e for e in upstream_errors),
        },
    }


# --- the load -----------------------------------------------------------------------------


@dataclass
class Submission:
    n: int
    input_object: str  # distinct: how the emulator's job is found again
    expected: str  # the state the emulator will give it
    job: dict[str, Any] = field(default_factory=dict)  # cirelay's 201 answer
    retries: list[str] = field(default_factory=list)  # why the client sent it again
    replayed: bool = False  # answered from an earlier request with the same key


class Load:
    """Jobs submitted through nginx from several threads; instance ``a`` killed and
    restarted once a third of them are answered."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.run_id = os.urandom(4).hex()
        self.submissions: list[Submission] = []
        self.answered = 0
        self.began = self.submitted_in = self.killed_after = self.back_after = 0.0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._sessions: list[requests.Session] = []

    def run(self) -> None:
        self.began = time.monotonic()
        try:
            with ThreadPoolExecutor(CLIENTS) as pool:
                futures = [pool.submit(self.submit, n) for n in range(JOBS)]

                def third() -> bool:
                    failed = any(f.done() and f.exception() for f in futures)
                    return failed or self.answered >= JOBS * KILL_AFTER

                poll("a third of the jobs to be answered", third, deadline=120)
                self.fleet.check_alive()
                killed = time.monotonic()
                self.killed_after = killed - self.began
                self.fleet.kill("a")
                time.sleep(DOWN_SECONDS)
                self.fleet.restart("a")
                self.back_after = time.monotonic() - killed
                self.submissions = [f.result() for f in futures]
            self.submitted_in = time.monotonic() - self.began
        finally:
            for session in self._sessions:
                session.close()

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            with self._lock:
                self._sessions.append(session)
        return session

    def submit(self, n: int) -> Submission:
        failing = n % 50 == 7
        item = Submission(
            n, f"songs/fleet-{n:05d}{'-fail' if failing else ''}.wav",
            "Failed" if failing else "Success",
        )  # fmt: skip
        body = job_json(
            input={"object": item.input_object},
            user_data=f"fleet-{n}",
            callback_format="JSON" if n % 2 else "XML",
        )
        headers = self.fleet.auth | {"Idempotency-Key": f"fleet-{self.run_id}-{n}"}
        for _ in range(10):
            try:
                response = self._session().post(
                    f"{self.fleet.base}/v1/jobs", json=body, headers=headers, timeout=60
                )
            except requests.RequestException as exc:
                item.retries.append(type(exc).__name__)
            else:
                if response.status_code == 201:
                    item.job = response.json()
                    item.replayed = response.headers.get("Idempotent-Replayed") == "true"
                    with self._lock:
                        self.answered += 1
                    return item
                assert response.status_code in (502, 503, 504), (n, response.text)
                item.retries.append(str(response.status_code))
            time.sleep(0.5)
        raise AssertionError(f"job {n} not accepted: {item.retries}")


def subscribe(fleet: Fleet, url: str) -> dict[str, Any]:
    body = {"url": url, "event_types": ["com.cirelay.job.*"]}
    response = requests.post(
        f"{fleet.base}/v1/subscriptions", json=body, headers=fleet.auth, timeout=30
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def wait_until_settled(fleet: Fleet) -> Rows:
    """Until CI has finished every job and sent everything, every job is final in cirelay and
    every event has been delivered; the emulator's deliveries."""

    def emulator_settled() -> Rows | None:
        if any(j["state"] not in TERMINAL for j in fleet.emulator_get("jobs")):
            return None
        found: Rows = fleet.emulator_get("deliveries")
        busy = [d for d in found if d["outcome"] in ("pending", "held")]
        return found if not busy else None

    deliveries = poll("the emulator's callbacks", emulator_settled, deadline=120, every=0.5)
    unfinished = "SELECT count(*) FROM jobs WHERE state NOT IN ('Success', 'Failed', 'Cancel')"
    poll("every job to finish", lambda: fleet.scalar(unfinished) == 0, deadline=90, every=0.5)
    backlog = (
        "SELECT count(*) FROM deliveries WHERE state = 'pending'"
        " OR (SELECT min(fanout_seq) FROM subscriptions)"
        " < (SELECT coalesce(max(seq), 0) FROM events)"
    )
    poll("every event to be delivered", lambda: fleet.scalar(backlog) == 0, deadline=90, every=0.5)
    return deliveries


# --- the checks ---------------------------------------------------------------------------


def check_final_states(fleet: Fleet, submissions: list[Submission]) -> list[str]:
    """Each job as the emulator says, submitted to CI exactly once; returns those the
    reconciler had to send (their instance died between storing them and calling CI)."""
    at_ci: dict[str, Rows] = defaultdict(list)
    for ci_job in fleet.emulator_get("jobs"):
        at_ci[ci_job["input_object"]].append(ci_job)
    twice = {k: [j["job_id"] for j in v] for k, v in at_ci.items() if len(v) > 1}
    assert not twice, f"submitted to CI more than once: {twice}"
    assert set(at_ci) <= {s.input_object for s in submissions}
    j = store.jobs.c
    with fleet.engine.connect() as conn:
        query = sa.select(j.id, j.ci_job_id, j.state, j.code, j.detail, j.submit_error)
        jobs = {row.id: row for row in conn.execute(query)}
    assert len(jobs) == JOBS, f"{len(jobs)} jobs recorded for {JOBS} submitted"
    orphans = []
    for item in submissions:
        row = jobs[item.job["id"]]
        assert row.detail["input"]["object"] == item.input_object, (row, item)
        (ci_job,) = at_ci.get(item.input_object) or [None]
        assert ci_job is not None, f"never reached CI: {row}"
        if (row.submit_error or {}).get("code") == "resubmitted":
            orphans.append(row.id)
        assert (row.ci_job_id, row.state) == (ci_job["job_id"], ci_job["state"]), (row, ci_job)
        assert row.state == item.expected, (row, item)
    return orphans


def check_no_notification_lost(fleet: Fleet, deliveries: Rows) -> Rows:
    """Every notification the emulator sent was answered 2xx and is recorded (once per job
    and content: a copy is a duplicate of it); returns the notifications table."""
    assert len(deliveries) < EMULATOR_HISTORY, "the emulator's history overflowed"
    assert len(deliveries) >= 5000, len(deliveries)
    outcomes = Counter(d["outcome"] for d in deliveries)
    assert outcomes == {"delivered": len(deliveries)}, outcomes
    recorded = fleet.rows("SELECT ci_job_id, state, source, outcome FROM notifications")
    have = {(r["ci_job_id"], r["state"]) for r in recorded}
    lost = [d for d in deliveries if (d["job_id"], d["state"]) not in have]
    assert not lost, f"{len(lost)} notifications answered 2xx but not recorded: {lost[:3]}"
    return recorded


def check_no_event_twice(fleet: Fleet) -> Rows:
    """At most one event per job and type, exactly one terminal one; returns the events."""
    twice = fleet.rows(
        "SELECT job_id, type, count(*) AS n FROM events GROUP BY job_id, type HAVING count(*) > 1"
    )
    assert not twice, twice
    events = fleet.rows("SELECT seq, id, job_id, type FROM events ORDER BY seq")
    types = Counter(e["type"] for e in events)
    assert all(t.startswith("com.cirelay.job.") for t in types), types
    terminal = Counter(e["job_id"] for e in events if e["type"] in TERMINAL_EVENTS)
    assert len(terminal) == JOBS and set(terminal.values()) == {1}, terminal.most_common(3)
    assert fleet.scalar("SELECT count(*) FROM quarantined_notifications") == 0
    return events


def check_api_agrees(fleet: Fleet, events: Rows) -> None:
    """``GET /v1/events`` through nginx pages through the same events, in sequence order."""
    seen: list[int] = []
    after = 0
    with requests.Session() as http:
        while True:
            response = http.get(
                f"{fleet.base}/v1/events",
                params={"after": after, "limit": 500},
                headers=fleet.auth,
                timeout=30,
            )
            assert response.status_code == 200, response.text
            page = response.json()
            if not page["events"]:
                break
            seen += [int(e["sequence"]) for e in page["events"]]
            after = page["next_after"]
    assert seen == [e["seq"] for e in events]


def check_subscriber_got_everything_in_order(hook: Subscriber, secret: str, events: Rows) -> None:
    received = hook.verified(secret)  # every signature checked, parsed as CloudEvents
    first: dict[str, Any] = {}
    for event in received:
        first.setdefault(event["id"], event)
    missing = {e["id"] for e in events} - set(first)
    assert not missing and len(first) == len(events), f"{len(missing)} events never arrived"
    arrived: dict[str, list[int]] = defaultdict(list)
    for event in first.values():
        arrived[event.data["id"]].append(int(event["sequence"]))
    recorded: dict[str, list[int]] = defaultdict(list)
    for e in events:
        recorded[e["job_id"]].append(int(e["seq"]))
    out_of_order = {k: v for k, v in arrived.items() if v != recorded[k]}
    assert not out_of_order, list(out_of_order.items())[:5]


def check_workers_sent_nothing_twice_at_once(
    fleet: Fleet, hook: Subscriber, events: Rows
) -> dict[str, Any]:
    """One delivery per event; its attempts never overlap; a copy the subscriber got twice
    follows a failed attempt; each worker counted what it delivered. Returns figures."""
    fanned_twice = fleet.rows(
        "SELECT subscription_id, event_seq, count(*) AS n FROM deliveries"
        " WHERE origin = 'fanout' GROUP BY 1, 2 HAVING count(*) > 1"
    )
    assert not fanned_twice, fanned_twice
    states = fleet.rows("SELECT state, count(*) AS n FROM deliveries GROUP BY state")
    assert states == [{"state": "succeeded", "n": len(events)}], states
    attempts = fleet.rows(
        "SELECT e.id AS event_id, a.delivery_id, a.started_at, a.duration_ms, a.result"
        " FROM delivery_attempts a JOIN deliveries d ON d.id = a.delivery_id"
        " JOIN events e ON e.seq = d.event_seq ORDER BY a.delivery_id, a.started_at"
    )
    by_delivery: dict[int, Rows] = defaultdict(list)
    by_event: dict[str, Rows] = defaultdict(list)
    for attempt in attempts:
        by_delivery[attempt["delivery_id"]].append(attempt)
        by_event[attempt["event_id"]].append(attempt)
    overlapping = [
        (before, after)
        for tried in by_delivery.values()
        for before, after in itertools.pairwise(tried)
        if after["started_at"].timestamp()
        < before["started_at"].timestamp() + before["duration_ms"] / 1000 - 0.001
    ]
    assert not overlapping, f"a delivery attempted twice at once: {overlapping[:3]}"
    copies = Counter(r.webhook_id for r in hook.accepted())
    duplicates = {k: v for k, v in copies.items() if v > 1}
    unexplained = {
        k: (v, [a["result"] for a in by_event[k]])
        for k, v in duplicates.items()
        if sum(a["result"] != "success" for a in by_event[k]) < v - 1
    }
    assert not unexplained, f"delivered twice without a failed attempt: {unexplained}"
    # a delivery is counted by the worker that recorded it while holding its lease
    delivered = 'cirelay_deliveries_total{outcome="delivered"}'
    by_worker = {w.name: int(fleet.worker_metric(w.name, delivered)) for w in fleet.workers}
    assert sum(by_worker.values()) == len(events) and all(by_worker.values()), by_worker
    return {
        "webhooks_received": len(hook.accepted()),
        "webhook_duplicates": sum(v - 1 for v in duplicates.values()),
        "delivery_attempts": len(attempts),
        "delivered_by": by_worker,
    }
