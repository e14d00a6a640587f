"""README's two consumers, run as written (only the names made unique, and the secret put
in) as processes of their own, against events the worker's own deliverer published to the
real NATS JetStream and RabbitMQ. A README consumer that does not work fails here."""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import aio_pika
from flask.testing import FlaskClient
from sqlalchemy.engine import Engine

from app.delivery import Deliverer
from tests.brokers.brokers import RABBIT, Exchange, JetStream
from tests.conftest import Clock, ci_job_id
from tests.test_delivery import notify, subscribe

README = Path(__file__).resolve().parents[2] / "README.md"
EXPECTED = [
    f"com.cirelay.job.running {ci_job_id(1)} Running",
    f"com.cirelay.job.succeeded {ci_job_id(1)} Success",
    f"com.cirelay.job.running {ci_job_id(2)} Running",
]


def consumers() -> dict[str, str]:
    """The python blocks of README's broker section, by the broker their first line names."""
    text = README.read_text()
    section = text.split("\n## Delivery to NATS JetStream and RabbitMQ\n", 1)[1]
    blocks = re.findall(r"^```python\n(.*?)^```$", section.split("\n## ", 1)[0],
                        re.MULTILINE | re.DOTALL)  # fmt: skip
    return {("nats" if "JetStream" in b.splitlines()[0] else "amqp"): b for b in blocks}


def assert_printed(lines: list[str]) -> None:
    """Every event printed once, each job's in order (jobs may interleave)."""
    assert sorted(lines) == sorted(EXPECTED)
    assert [line for line in lines if ci_job_id(1) in line] == EXPECTED[:2]


def command(script: str, secret: str) -> list[str]:
    return [sys.executable, "-c", f"SECRET = {secret!r}\n{script}"]


def events(client: FlaskClient, engine: Engine, clock: Clock, deliverer: Deliverer) -> None:
    notify(client, engine, clock, 1, "Running", "Success")
    notify(client, engine, clock, 2, "Running")
    deliverer.wait_idle()


def test_the_nats_consumer_reads_verifies_and_acks(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer, stream: JetStream,
) -> None:  # fmt: skip
    # the test's stream takes the subjects under its own prefix: the README's, renamed
    script = consumers()["nats"].replace('"MEDIA"', repr(stream.name)).replace(
        "cirelay.events.job.>", f"{stream.prefix}.job.>")  # fmt: skip
    sub = subscribe(client, auth, stream.url())
    events(client, engine, clock, deliverer)
    done = subprocess.run(command(script, sub["secret"]), capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_printed(done.stdout.splitlines())


def test_the_rabbitmq_consumer_reads_verifies_and_acks(
    client: FlaskClient, auth: dict[str, str], engine: Engine, clock: Clock,
    deliverer: Deliverer,
) -> None:  # fmt: skip
    queue = f"catalogue-{secrets.token_hex(4)}"
    with Exchange.make(bound=False) as exchange:
        script = consumers()["amqp"].replace('"media.events"', repr(exchange.name)).replace(
            '"catalogue"', repr(queue))  # fmt: skip
        sub = subscribe(client, auth, exchange.url())
        with subprocess.Popen(command(script, sub["secret"]), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True) as consumer:  # fmt: skip
            watchdog = threading.Timer(60, consumer.kill)  # readline never waits forever
            watchdog.start()
            try:
                _wait_bound(queue)
                events(client, engine, clock, deliverer)
                lines = _lines(consumer, len(EXPECTED))
            finally:
                watchdog.cancel()
                consumer.kill()
                asyncio.run(_delete(queue))
    assert_printed(lines)


def _wait_bound(queue: str, deadline: float = 30.0) -> None:
    async def exists() -> bool:
        conn = await aio_pika.connect(f"amqp://guest:guest@{RABBIT[0]}:{RABBIT[1]}/")
        try:
            await (await conn.channel()).declare_queue(queue, passive=True)
            return True
        except aio_pika.exceptions.ChannelClosed:
            return False
        finally:
            await conn.close()

    end = time.monotonic() + deadline
    while not asyncio.run(exists()):
        assert time.monotonic() < end, "the README consumer never declared its queue"
        time.sleep(0.2)
    time.sleep(0.3)  # declared, then bound


def _lines(process: subprocess.Popen[str], count: int) -> list[str]:
    assert process.stdout is not None
    return [process.stdout.readline().rstrip("\n") for _ in range(count)]


async def _delete(queue: str) -> None:
    conn = await aio_pika.connect(f"amqp://guest:guest@{RABBIT[0]}:{RABBIT[1]}/")
    await (await conn.channel()).queue_delete(queue)
    await conn.close()
