"""Broker delivery end to end, as real processes (the emulator runs jobs, ``cirelay serve``
records them, ``cirelay worker`` publishes) into the real NATS JetStream and RabbitMQ, each
reached through a TCP proxy the test starts and cuts (never the system service):

- a worker SIGKILLed while a publish is in flight (sent, its ack held back by the proxy):
  after its lease lapses another worker publishes it again with the same ``Nats-Msg-Id``;
  no event is missing and the stream holds no duplicate;
- RabbitMQ unreachable, then back: every event arrives after, in order per job; the worker's
  ``/readyz`` shows the broker down (the worker still ready: degraded) and up again.
"""

from __future__ import annotations

import signal
from typing import Any

import pytest
import requests

from tests.brokers.brokers import NATS, RABBIT, Exchange, JetStream, Received
from tests.conftest import job_json
from tests.e2e_stack import CIRELAY, Stack, free_port, poll, sample_sum, spawn, wait_http
from tests.tcp_proxy import TcpProxy
from tests.test_delivery_e2e import subscribe

pytestmark = pytest.mark.slow


def recorded(stack: Stack, ci_job_ids: list[str]) -> dict[str, list[str]]:
    """Each job's event ids, in the order cirelay recorded them."""
    log = stack.http.get(f"{stack.base}/v1/events?limit=500", headers=stack.auth).json()
    return {j: [e["id"] for e in log["events"] if e["subject"] == j] for j in ci_job_ids}


def arrived(messages: list[Received]) -> dict[str, list[str]]:
    """Each job's event ids, in the order the broker holds them (first copies)."""
    found: dict[str, list[str]] = {}
    for m in messages:
        event = m.event()
        ids = found.setdefault(event.get_subject() or "", [])
        if event.get_id() not in ids:
            ids.append(event.get_id())
    return found


def everything_arrived(
    stack: Stack, read: Any, ci_job_ids: list[str], deadline: float = 60
) -> list[Received]:
    def complete() -> list[Received] | None:
        messages: list[Received] = read()
        want = recorded(stack, ci_job_ids)
        got = arrived(messages)
        return messages if all(len(got.get(j, [])) >= len(ids) for j, ids in want.items()) else None

    return poll("every event at the broker", complete, deadline=deadline)


def test_a_worker_killed_mid_publish_leaves_nothing_missing_and_no_duplicate(
    stack: Stack,
) -> None:
    with JetStream.make() as stream, TcpProxy(*NATS) as proxy:
        sub = subscribe(stack, stream.url(port=proxy.port))
        first = stack.wait_final(stack.submit(job_json())["id"])
        everything_arrived(stack, stream.messages, [first["ci_job_id"]])

        proxy.silence()
        second = stack.submit(job_json(user_data="order-2"))
        assert proxy.held.wait(30), "no publish started"  # sent; the ack cannot come back
        worker = next(p for p in stack.processes if p.name == "worker")
        worker.popen.send_signal(signal.SIGKILL)
        worker.popen.wait()
        proxy.resume()  # the dead worker's publish reaches the stream now
        before = len(recorded(stack, [first["ci_job_id"]])[first["ci_job_id"]])
        in_flight = stream.wait_for(before + 1)[before].event().get_id()
        stack._spawn("worker-2", ["worker"])
        done = stack.wait_final(second["id"])
        jobs = [first["ci_job_id"], done["ci_job_id"]]
        messages = everything_arrived(stack, stream.messages, jobs)

    ids = [m.headers["Nats-Msg-Id"] for m in messages]
    assert len(ids) == len(set(ids)), "JetStream holds a duplicate"
    assert arrived(messages) == recorded(stack, jobs)  # nothing missing, in order per job
    assert all(m.headers["Nats-Msg-Id"] == m.event().get_id() for m in messages)
    # the event in flight was stored before worker-2 started, yet its delivery is done: by
    # worker-2, after the lease lapsed, publishing it again (acked as a duplicate)
    assert in_flight == recorded(stack, jobs)[jobs[1]][0]
    path = f"{stack.base}/v1/subscriptions/{sub['id']}/deliveries?limit=200"
    rows = stack.http.get(path, headers=stack.auth).json()["deliveries"]
    assert {d["state"] for d in rows} == {"succeeded"}
    assert len(rows) == len(ids)


def test_rabbitmq_unreachable_then_back_gets_everything_after_in_order(stack: Stack) -> None:
    # a worker with its own metrics port (so /readyz): it replaces the stack's worker
    next(p for p in stack.processes if p.name == "worker").stop()
    port = free_port()
    env = {k: v for k, v in stack.env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    worker = spawn("worker-m", [*CIRELAY, "worker", "--metrics-port", str(port)], env,
                   stack.directory)  # fmt: skip
    stack.processes.append(worker)
    wait_http("the worker's metrics", f"http://127.0.0.1:{port}/healthz", worker)

    def ready() -> tuple[int, dict[str, Any]]:
        response = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        return response.status_code, response.json()

    with Exchange.make() as exchange, TcpProxy(*RABBIT) as proxy:
        subscribe(stack, exchange.url(port=proxy.port))
        first = stack.wait_final(stack.submit(job_json())["id"])
        everything_arrived(stack, exchange.messages, [first["ci_job_id"]])
        status, body = ready()
        assert status == 200 and body["status"] == "ready"
        assert [(b["transport"], b["state"]) for b in body["brokers"]] == [("amqp", "up")]
        assert "guest" not in str(body)

        proxy.cut()
        jobs = [stack.submit(job_json(user_data=f"order-{n}")) for n in range(3)]
        finished = [stack.wait_final(job["id"]) for job in jobs]
        poll("the broker seen down", lambda: ready()[1]["brokers"][0]["state"] == "down")
        status, body = ready()
        assert status == 200 and body["status"] == "degraded"

        def failed_attempts() -> bool:
            text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            sample = 'cirelay_delivery_attempts_total{result="connection_error",transport="amqp"}'
            return sample_sum(text, sample) >= 1

        poll("failed attempts while the broker is unreachable", failed_attempts)
        proxy.restore()
        ids = [first["ci_job_id"], *(f["ci_job_id"] for f in finished)]
        messages = everything_arrived(stack, exchange.messages, ids)
        assert arrived(messages) == recorded(stack, ids)
        poll("the broker seen up", lambda: ready()[1]["brokers"][0]["state"] == "up")
