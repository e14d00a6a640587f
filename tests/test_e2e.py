"""End to end, through the real stack: the CI emulator, ``cirelay serve`` (gunicorn, two
workers) and ``cirelay worker`` as processes of their own on loopback, SQLite in a temp dir.

Every test talks to cirelay through its public HTTP API (``POST/GET /v1/jobs``, ``/metrics``)
and checks, besides the final state, that exactly one terminal state change was recorded
(the ``events`` outbox) and that quarantine holds only what it should. The emulator's faults
are switched per test through its admin API (``POST /_emulator/faults``), reset before and
after each test; what it actually sent is read from ``GET /_emulator/deliveries``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import job_json
from tests.e2e_stack import BUCKET, CALLBACK_KEY, CIRELAY, REGION, Stack, free_port, poll, spawn

pytestmark = pytest.mark.slow

SUCCEEDED = ["com.cirelay.job.succeeded"]
FAILED = ["com.cirelay.job.failed"]
MD5 = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack.start(tmp_path_factory.mktemp("e2e")) as stack:
        try:
            yield stack
        finally:
            print(stack.tails())  # shown by pytest only when something failed


@pytest.fixture
def stack(running_stack: Stack) -> Iterator[Stack]:
    """The module's stack with every fault off, before and after the test."""
    running_stack.check_alive()
    running_stack.faults({"reset": True})
    try:
        yield running_stack
    finally:
        running_stack.faults({"reset": True})
        running_stack.flush()
        print(running_stack.tails())  # shown by pytest only when the test failed


def settled(stack: Stack, job: dict[str, Any]) -> list[dict[str, Any]]:
    """The job's deliveries once the emulator has nothing left to send for it: read the job
    after this, and nothing arriving later can change what the test sees."""
    return stack.wait_deliveries_settled(job["ci_job_id"])


def callbacks(job: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(n["state"], n["source"], n["outcome"]) for n in job["notifications"]]


def submit_many(stack: Stack, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(stack.submit, jobs))


# --- the plain path -----------------------------------------------------------------------


def test_xml_callback_brings_the_job_to_success_with_its_results(stack: Stack) -> None:
    submitted = stack.submit(job_json())
    assert submitted["state"] == "Submitted"
    ci_job_id = submitted["ci_job_id"]

    done = stack.wait_final(submitted["id"])
    (delivery,) = settled(stack, submitted)
    done = stack.job(submitted["id"])

    assert done["state"] == "Success"
    assert callbacks(done) == [("Success", "callback", "accepted")]
    assert done["notifications"][0]["wire_format"] == "xml"
    assert delivery["format"] == "XML" and delivery["outcome"] == "delivered"
    files = {f["object"]: f for f in done["result_files"]}
    assert set(files) == {f"stems/{ci_job_id}/bgm.mp3", f"stems/{ci_job_id}/vocal.mp3"}
    assert all(MD5.fullmatch(f["md5"]) for f in files.values()), files
    assert done["output"]["object"] == f"stems/{ci_job_id}/bgm.mp3"
    assert stack.events(submitted["id"]) == ["com.cirelay.job.submitted", *SUCCEEDED]
    assert stack.quarantined(submitted["id"]) == []
    # found by CI's JobId too
    assert stack.job(ci_job_id)["id"] == submitted["id"]


def test_json_callback_brings_the_job_to_success(stack: Stack) -> None:
    submitted = stack.submit(job_json(callback_format="JSON"))
    stack.wait_final(submitted["id"])
    (delivery,) = settled(stack, submitted)
    done = stack.job(submitted["id"])

    assert delivery["format"] == "JSON"
    assert done["state"] == "Success"
    assert callbacks(done) == [("Success", "callback", "accepted")]
    assert done["notifications"][0]["wire_format"] == "json"
    assert len(done["result_files"]) == 2
    assert stack.terminal_events(submitted["id"]) == SUCCEEDED
    assert stack.quarantined(submitted["id"]) == []


def test_a_job_ci_fails_ends_failed_with_cis_code_and_message(stack: Stack) -> None:
    submitted = stack.submit(job_json(input={"object": "songs/fail-me.wav"}))
    stack.wait_final(submitted["id"])
    settled(stack, submitted)
    done = stack.job(submitted["id"])

    assert done["state"] == "Failed"
    assert done["error"]["code"] == "1007"
    assert done["error"]["message"]
    assert callbacks(done) == [("Failed", "callback", "accepted")]
    assert stack.terminal_events(submitted["id"]) == FAILED
    assert stack.quarantined(submitted["id"]) == []


# --- each delivery fault ------------------------------------------------------------------


def test_duplicate_callbacks_are_answered_200_and_recorded_once(stack: Stack) -> None:
    before = stack.metric("cirelay_notifications_total", '{outcome="duplicate"}')
    stack.faults({"duplicate": {"next": 1, "copies": 3}})

    submitted = stack.submit(job_json())
    stack.wait_final(submitted["id"])
    deliveries = settled(stack, submitted)
    done = stack.job(submitted["id"])

    assert [d["kind"] for d in deliveries] == ["final", "duplicate", "duplicate"]
    assert all(d["attempts"][-1]["status"] == 200 for d in deliveries), deliveries
    assert done["state"] == "Success"
    assert callbacks(done) == [("Success", "callback", "accepted")]
    assert stack.metric("cirelay_notifications_total", '{outcome="duplicate"}') >= before + 2
    assert stack.terminal_events(submitted["id"]) == SUCCEEDED
    assert stack.quarantined(submitted["id"]) == []


def test_a_stale_running_after_success_is_kept_but_does_not_move_the_job(stack: Stack) -> None:
    before = stack.metric("cirelay_notifications_total", '{outcome="stale"}')
    stack.faults({"reorder": {"next": 1, "mode": "stale"}})

    submitted = stack.submit(job_json())
    stack.wait_final(submitted["id"])
    deliveries = settled(stack, submitted)
    done = stack.job(submitted["id"])

    assert [(d["kind"], d["state"]) for d in deliveries] == [
        ("final", "Success"),
        ("stale", "Running"),
    ]
    assert all(d["outcome"] == "delivered" for d in deliveries)
    assert done["state"] == "Success"
    assert callbacks(done) == [
        ("Success", "callback", "accepted"),
        ("Running", "callback", "stale"),
    ]
    assert stack.metric("cirelay_notifications_total", '{outcome="stale"}') >= before + 1
    assert stack.terminal_events(submitted["id"]) == SUCCEEDED
    assert "com.cirelay.job.running" not in stack.events(submitted["id"])
    assert stack.quarantined(submitted["id"]) == []


def test_notifications_released_newest_first_still_finish_every_job(stack: Stack) -> None:
    n = 3
    stack.faults({"reorder": {"next": n, "mode": "reverse", "batch": n, "hold_seconds": 20.0}})

    submitted = []
    for i in range(n):  # one at a time, so that the order they are held in is known
        job = stack.submit(job_json(user_data=f"rev-{i}"))
        submitted.append(job)
        if i < n - 1:
            poll(f"job {i} to be held", lambda job=job: any(
                d["outcome"] == "held" for d in stack.deliveries(job["ci_job_id"])))  # fmt: skip
    for job in submitted:
        stack.wait_final(job["id"])
    deliveries = [d for job in submitted for d in settled(stack, job)]

    assert all("reorder:reverse" in d["faults"] for d in deliveries)
    assert all(d["outcome"] == "delivered" for d in deliveries)
    sent_at = [d["attempts"][0]["at"] for d in deliveries]  # in the order they were held
    assert sent_at == sorted(sent_at, reverse=True), "released newest first"
    for job in submitted:
        done = stack.job(job["id"])
        assert done["state"] == "Success"
        assert stack.terminal_events(job["id"]) == SUCCEEDED
        assert stack.quarantined(job["id"]) == []


def test_a_delayed_callback_still_brings_success(stack: Stack) -> None:
    stack.faults({"delay": {"next": 1, "seconds": 1.0}})

    submitted = stack.submit(job_json())
    stack.wait_final(submitted["id"])
    (delivery,) = settled(stack, submitted)
    done = stack.job(submitted["id"])

    assert delivery["faults"] == ["delay"]
    assert delivery["attempts"][0]["waited"] == 1.0
    assert done["state"] == "Success"
    assert ("Success", "callback", "accepted") in callbacks(done)
    assert stack.terminal_events(submitted["id"]) == SUCCEEDED
    assert stack.quarantined(submitted["id"]) == []


def test_dropped_callbacks_are_recovered_by_the_workers_reconciler(stack: Stack) -> None:
    n = 4
    stack.faults({"drop": {"next": n}})
    objects = ["songs/a.wav", "songs/b.wav", "songs/c.wav", "songs/fail.wav"]

    submitted = submit_many(stack, [job_json(input={"object": o}) for o in objects])
    finals = [stack.wait_final(job["id"]) for job in submitted]

    assert [job["state"] for job in finals] == ["Success", "Success", "Success", "Failed"]
    for job in submitted:
        (delivery,) = settled(stack, job)
        assert delivery["outcome"] == "dropped" and delivery["attempts"] == []
        done = stack.job(job["id"])
        assert {n["source"] for n in done["notifications"]} == {"poll"}
        assert (done["state"], "poll", "accepted") in callbacks(done)
        expected = SUCCEEDED if done["state"] == "Success" else FAILED
        assert stack.terminal_events(job["id"]) == expected
        assert stack.quarantined(job["id"]) == []
    assert len(finals[0]["result_files"]) == 2  # the poll brought the results too


@pytest.mark.parametrize(("kind", "error"), [("truncated", "malformed"),
                                             ("invalid", "schema_violation")])  # fmt: skip
def test_a_malformed_first_attempt_is_quarantined_and_the_retry_succeeds(
    stack: Stack, kind: str, error: str
) -> None:
    stack.faults({"malformed": {"next": 1, "kind": kind}})

    submitted = stack.submit(job_json())
    stack.wait_final(submitted["id"])
    (delivery,) = settled(stack, submitted)
    done = stack.job(submitted["id"])

    first, *rest = delivery["attempts"]
    assert first["malformed"] and first["status"] == 400
    assert rest and rest[-1]["status"] == 200
    assert done["state"] == "Success"
    assert callbacks(done) == [("Success", "callback", "accepted")]
    assert stack.terminal_events(submitted["id"]) == SUCCEEDED
    (row,) = stack.quarantined(submitted["id"])
    assert row["error"] == error and row["source"] == "callback"
    listed = stack.cli("quarantine", "list")
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"^\s*{row['id']}\s.*\s{error}\s", listed.stdout, re.MULTILINE), listed.stdout


# --- the create faults --------------------------------------------------------------------


def test_ci_unavailable_at_create_is_502_and_the_job_failed(stack: Stack) -> None:
    at_ci = len(stack.ci_jobs())
    stack.faults({"create_5xx": {"next": 1}})

    response = stack.post_job(job_json())

    assert response.status_code == 502, response.text
    body = response.json()
    assert body["error"] == "ci_unavailable"
    assert body["ci"]["code"] == "ServiceUnavailable" and body["ci"]["status"] == 503
    job_id = next(d["job_id"] for d in body["details"] if "job_id" in d)
    job = stack.job(job_id)
    assert job["state"] == "Failed"
    assert job["error"]["code"] == "ServiceUnavailable"
    assert job["ci_job_id"] is None
    assert len(stack.ci_jobs()) == at_ci
    assert stack.events(job_id) == FAILED
    assert stack.quarantined(job_id) == []


def test_ci_timeout_at_create_is_504_and_the_jobs_own_callback_binds_it(stack: Stack) -> None:
    """The stack's CI read timeout is 2 s (CIRELAY_CI_TIMEOUT_SECONDS): CI creates the job
    but answers only after 3 s; its callback is held back (delay) until
    after cirelay has answered 504, then binds the job."""
    before = {j["job_id"] for j in stack.ci_jobs()}
    stack.faults({
        "create_timeout": {"next": 1, "seconds": 3.0, "creates_job": True},
        "delay": {"next": 1, "seconds": 5.0},
    })  # fmt: skip

    response = stack.post_job(job_json(), timeout=60)

    assert response.status_code == 504, response.text
    assert response.json()["error"] == "ci_timeout"
    job_id = next(d["job_id"] for d in response.json()["details"] if "job_id" in d)
    waiting = stack.job(job_id)
    assert waiting["submit_error"]["ambiguous"] is True
    # the job was created 3 s ago, past the reconciler's 2 s: it may already be bound
    assert waiting["state"] in ("Submitting", "Success")

    done = stack.wait_final(job_id)
    (created,) = [j for j in stack.ci_jobs() if j["job_id"] not in before]  # one, never two
    assert done["state"] == "Success"
    assert done["ci_job_id"] == created["job_id"]
    assert done["error"] is None
    # bound by whichever came first: its own callback, or the reconciler finding it at CI
    accepted = [n for n in callbacks(done) if n[2] == "accepted"]
    assert accepted in ([("Success", "callback", "accepted")], [("Success", "poll", "accepted")])
    assert stack.terminal_events(job_id) == SUCCEEDED
    assert stack.quarantined(job_id) == []


def test_a_job_stored_by_a_process_that_died_before_calling_ci_is_sent_by_the_reconciler(
    stack: Stack,
) -> None:
    """The service stored the job (and a retry with the same Idempotency-Key was answered from
    it) but died before calling CI. The worker finds no such job in CI's list and submits it;
    it runs once and finishes."""
    from datetime import UTC, datetime

    from app import store
    from app.submission import _new_job_values, request_from_json
    from app.tokens import sign_job

    before = {j["job_id"] for j in stack.ci_jobs()}
    request, bucket, region = request_from_json(
        job_json(user_data="orphaned"), default_bucket=BUCKET, default_region=REGION
    )
    now = datetime.now(UTC)
    job_id = "job_01ORPHANED0000000000000000"
    callback = f"{stack.base}/callbacks/ci/{job_id}/{sign_job(job_id, (CALLBACK_KEY,))}"
    sent = {**request, "CallBack": callback, "CallBackType": "Url"}
    with store.transaction(stack.engine) as conn:
        store.insert_job(conn, _new_job_values(job_id, sent, bucket, region, now))

    done = stack.wait_final(job_id)

    (created,) = [j for j in stack.ci_jobs() if j["job_id"] not in before]
    assert done["state"] == "Success" and done["ci_job_id"] == created["job_id"]
    assert done["submit_error"]["code"] == "resubmitted"
    assert stack.terminal_events(job_id) == SUCCEEDED


def test_a_timed_out_create_whose_callback_is_dropped_still_reaches_its_final_state(
    stack: Stack,
) -> None:
    """§4 (drop: every job still reaches its final state) with the create answer lost too."""
    before = {j["job_id"] for j in stack.ci_jobs()}
    stack.faults({
        "create_timeout": {"next": 1, "seconds": 2.5, "creates_job": True},
        "drop": {"next": 1},
    })  # fmt: skip

    response = stack.post_job(job_json(), timeout=60)

    assert response.status_code == 504, response.text
    job_id = next(d["job_id"] for d in response.json()["details"] if "job_id" in d)
    (created,) = [j for j in stack.ci_jobs() if j["job_id"] not in before]
    assert created["state"] == "Success"  # CI finished it; its callback was dropped
    # the reconciler asks about jobs silent for 2 s, every second: ample time
    done = stack.wait_final(job_id, deadline=10)
    assert done["state"] == "Success"
    assert done["ci_job_id"] == created["job_id"]
    assert stack.terminal_events(job_id) == SUCCEEDED


# --- everything at once -------------------------------------------------------------------


def test_many_jobs_under_every_delivery_fault_each_end_right_and_once(stack: Stack) -> None:
    n = 30
    transitions_before = stack.terminal_transitions()
    quarantine_before = {row["id"] for row in stack.quarantined()}
    fired_before = stack.fault_status()["fired"]
    stack.faults({
        "seed": 20241118,
        "duplicate": {"next": 1, "probability": 0.3, "copies": 2},
        "reorder": {"next": 1, "probability": 0.2, "mode": "stale"},
        "delay": {"next": 1, "probability": 0.2, "seconds": 0.5},
        "drop": {"next": 1, "probability": 0.1},
        "malformed": {"next": 1, "probability": 0.2, "kind": "truncated"},
    })  # fmt: skip
    objects = [f"songs/{'fail-' if i % 5 == 4 else ''}{i}.wav" for i in range(n)]

    submitted = submit_many(stack, [job_json(input={"object": o}) for o in objects])
    finals = [stack.wait_final(job["id"]) for job in submitted]
    deliveries = {job["id"]: settled(stack, job) for job in submitted}

    fired = stack.fault_status()["fired"]
    for fault in ("duplicate", "reorder", "delay", "drop", "malformed"):
        assert fired[fault] > fired_before[fault], (fault, fired)
    malformed_jobs = set()
    for job, final, obj in zip(submitted, finals, objects, strict=True):
        expected = "Failed" if "fail" in obj else "Success"
        assert final["state"] == expected, (obj, final)
        assert stack.job(job["id"])["state"] == expected
        assert stack.terminal_events(job["id"]) == (FAILED if "fail" in obj else SUCCEEDED)
        final_delivery = next(d for d in deliveries[job["id"]] if d["kind"] == "final")
        broken = "malformed" in final_delivery["faults"]
        malformed_jobs |= {job["id"]} if broken else set()
        assert len(stack.quarantined(job["id"])) == (1 if broken else 0), (job, final_delivery)
    assert malformed_jobs
    new_rows = [row for row in stack.quarantined() if row["id"] not in quarantine_before]
    assert sorted(row["job_id"] for row in new_rows) == sorted(malformed_jobs)
    assert all(row["error"] == "malformed" for row in new_rows)
    assert stack.terminal_transitions() == transitions_before + n
    assert stack.metric("cirelay_quarantine_size") == len(stack.quarantined())


# --- cirelay up ---------------------------------------------------------------------------


def test_a_job_submitted_to_cirelay_up_reaches_success_and_ctrl_c_stops_all(
    tmp_path: Path,
) -> None:
    port, emulator_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIRELAY_")}
    env["CIRELAY_EMULATOR_JOB_SECONDS"] = "0.5"
    command = [*CIRELAY, "up", "--port", str(port), "--emulator-port", str(emulator_port),
               "--data-dir", str(tmp_path / "var")]  # fmt: skip
    up = spawn("up", command, env, tmp_path, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        banner = poll("cirelay up's banner", lambda: _banner(up), deadline=60)
        key = re.search(r"API key\s+(\S+)", banner)
        assert key, banner
        poll("cirelay up to serve", lambda: _answers(f"{base}/readyz", up), deadline=60)
        poll("the emulator", lambda: _answers(
            f"http://127.0.0.1:{emulator_port}/_emulator/health", up))  # fmt: skip

        submitted = subprocess.run(
            [*CIRELAY, "submit", "songs/a.wav", "--url", base, f"--api-key={key.group(1)}",
             "--wait"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip

        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        # progress on stderr, the final job last on stdout
        job_id = re.search(r"^(job_\w+): Success$", submitted.stderr, re.MULTILINE)
        assert job_id, submitted.stderr
        assert f'"id": "{job_id.group(1)}"' in submitted.stdout.rsplit("\n{", 1)[-1]
        with requests.Session() as http:
            job = http.get(f"{base}/v1/jobs/{job_id.group(1)}", timeout=10,
                           headers={"Authorization": f"Bearer {key.group(1)}"}).json()  # fmt: skip
        assert job["state"] == "Success"
        assert [(n["source"], n["outcome"]) for n in job["notifications"]] == [
            ("callback", "accepted")
        ]
    except BaseException:
        print(up.tail(80))
        raise
    finally:
        if up.alive():
            os.killpg(up.popen.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
            with contextlib.suppress(subprocess.TimeoutExpired):
                up.popen.wait(timeout=40)
        up.stop()  # SIGTERM, then SIGKILL, only if Ctrl-C did not stop it; closes the log
    assert up.popen.returncode == 0, up.tail(80)
    # the whole group is gone: emulator, gunicorn (and its workers) and the worker
    poll("every process of the group to exit", lambda: _group_gone(up.popen.pid))
    for url in (f"{base}/healthz", f"http://127.0.0.1:{emulator_port}/_emulator/health"):
        with pytest.raises(requests.ConnectionError):
            requests.get(url, timeout=2)


def _banner(process: Any) -> str | None:
    text = process.log_path.read_text(errors="replace")
    if "Ctrl-C" in text:
        return str(text)
    if not process.alive():
        raise AssertionError(f"cirelay up exited with {process.popen.returncode}:\n{text}")
    return None


def _answers(url: str, process: Any) -> bool:
    if not process.alive():
        raise AssertionError(f"cirelay up exited:\n{process.tail(80)}")
    try:
        with requests.Session() as http:
            return http.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False
