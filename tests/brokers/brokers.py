"""The real brokers of the machine (NATS JetStream on 127.0.0.1:4222, RabbitMQ on
127.0.0.1:5672, guest/guest), as a consumer team sees them: a stream or an exchange with a
queue, made for one test under a unique name and removed after it, read with the broker's own
client and the ``cloudevents`` SDK.

    with JetStream.make() as stream:            # stream CIRELAY_T<hex>, subjects <prefix>.>
        url = stream.url()                      # nats://127.0.0.1:4222/<stream>?subject_prefix=
        stream.messages()                       # every stored message, in stream order
    with Exchange.make() as exchange:           # topic exchange, and a queue bound to # (or not)
        url = exchange.url()                    # amqp://guest:guest@…/%2F?exchange=<name>
        exchange.take(3)                        # the next 3 messages of the queue (acked)
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aio_pika
import nats
from cloudevents.core.bindings import rabbitmq
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from nats.js.api import StreamConfig
from standardwebhooks.webhooks import Webhook

NATS = ("127.0.0.1", 4222)
RABBIT = ("127.0.0.1", 5672)


@dataclass(frozen=True)
class Received:
    """One message as a consumer gets it: where it went, its headers and body."""

    topic: str  # subject or routing key
    headers: dict[str, str]
    body: bytes
    message_id: str | None = None
    content_type: str | None = None
    persistent: bool | None = None
    #: when the stream stored it (JetStream's own time, seconds since the epoch)
    stored: float | None = None

    def event(self) -> CloudEvent:
        """The CloudEvent, read with the SDK: the RabbitMQ binding for AMQP, the JSON format
        (what the NATS binding's structured mode carries) for NATS."""
        if self.content_type is not None:
            message = rabbitmq.RabbitMQMessage(self.headers, self.content_type, self.body)
            return rabbitmq.from_rabbitmq_event(message)
        event = JSONFormat().read(CloudEvent, self.body)
        assert isinstance(event, CloudEvent)
        return event

    def verify(self, secret: str) -> dict[str, Any]:
        """The Standard Webhooks signature checked with the subscription's secret."""
        verified: dict[str, Any] = Webhook(secret).verify(self.body, self.headers)
        return verified


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


class JetStream:
    def __init__(self, name: str, prefix: str, port: int = NATS[1]) -> None:
        self.name, self.prefix, self.port = name, prefix, port

    @classmethod
    @contextmanager
    def make(cls, duplicate_window: float = 120.0) -> Iterator[JetStream]:
        tag = secrets.token_hex(4)
        stream = cls(f"CIRELAY_T{tag}", f"cirelay.t{tag}")

        async def create() -> None:
            nc = await nats.connect(f"nats://{NATS[0]}:{NATS[1]}")
            await nc.jetstream().add_stream(StreamConfig(
                name=stream.name, subjects=[f"{stream.prefix}.>"],
                duplicate_window=duplicate_window,
            ))  # fmt: skip
            await nc.close()

        async def delete() -> None:
            nc = await nats.connect(f"nats://{NATS[0]}:{NATS[1]}")
            await nc.jetstream().delete_stream(stream.name)
            await nc.close()

        _run(create())
        try:
            yield stream
        finally:
            _run(delete())

    def url(self, port: int | None = None, **query: str) -> str:
        params = "&".join(f"{k}={v}" for k, v in {"subject_prefix": self.prefix, **query}.items())
        return f"nats://127.0.0.1:{port or self.port}/{self.name}?{params}"

    def messages(self) -> list[Received]:
        """Every message the stream holds, in order."""

        async def read() -> list[Received]:
            nc = await nats.connect(f"nats://{NATS[0]}:{NATS[1]}")
            js = nc.jetstream()
            info = await js.stream_info(self.name)
            found = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                if not info.state.messages:
                    break
                msg = await js.get_msg(self.name, seq)
                stored = msg.time.timestamp() if msg.time else None
                found.append(Received(msg.subject or "", dict(msg.headers or {}), msg.data or b"",
                                      stored=stored))  # fmt: skip
            await nc.close()
            return found

        result: list[Received] = _run(read())
        return result

    def wait_for(self, count: int, deadline: float = 30.0) -> list[Received]:
        return _wait(f"{count} messages in {self.name}", self.messages, count, deadline)


class Exchange:
    def __init__(self, name: str, queue: str | None) -> None:
        self.name, self.queue = name, queue
        self._taken: list[Received] = []

    @classmethod
    @contextmanager
    def make(cls, bound: bool = True) -> Iterator[Exchange]:
        """A topic exchange and (``bound``) a durable queue bound to every key; without a
        queue, whatever is published to the exchange is unroutable."""
        tag = secrets.token_hex(4)
        exchange = cls(f"cirelay-t{tag}", f"cirelay-t{tag}-q" if bound else None)

        async def create() -> None:
            conn = await aio_pika.connect(f"amqp://guest:guest@{RABBIT[0]}:{RABBIT[1]}/")
            channel = await conn.channel()
            ex = await channel.declare_exchange(exchange.name, aio_pika.ExchangeType.TOPIC)
            if exchange.queue:
                queue = await channel.declare_queue(exchange.queue, durable=True)
                await queue.bind(ex, "#")
            await conn.close()

        async def delete() -> None:
            conn = await aio_pika.connect(f"amqp://guest:guest@{RABBIT[0]}:{RABBIT[1]}/")
            channel = await conn.channel()
            if exchange.queue:
                await channel.queue_delete(exchange.queue)
            await channel.exchange_delete(exchange.name)
            await conn.close()

        _run(create())
        try:
            yield exchange
        finally:
            _run(delete())

    def url(self, port: int | None = None, login: str = "guest:guest@", **query: str) -> str:
        params = "&".join(f"{k}={v}" for k, v in {"exchange": self.name, **query}.items())
        return f"amqp://{login}127.0.0.1:{port or RABBIT[1]}/%2F?{params}"

    def _drain(self) -> list[Received]:
        async def read() -> list[Received]:
            conn = await aio_pika.connect(f"amqp://guest:guest@{RABBIT[0]}:{RABBIT[1]}/")
            channel = await conn.channel()
            queue = await channel.get_queue(self.queue or "", ensure=False)
            found = []
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                found.append(Received(
                    message.routing_key or "",
                    {k: str(v) for k, v in (message.headers or {}).items()},
                    message.body, message.message_id, message.content_type,
                    message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT,
                ))  # fmt: skip
            await conn.close()
            return found

        self._taken += _run(read())
        return self._taken

    def messages(self) -> list[Received]:
        """Every message the queue has had (taken off it as they are read), in order."""
        return list(self._drain())

    def wait_for(self, count: int, deadline: float = 30.0) -> list[Received]:
        return _wait(f"{count} messages in {self.queue}", self.messages, count, deadline)


def _wait(what: str, read: Any, count: int, deadline: float) -> list[Received]:
    end = time.monotonic() + deadline
    while True:
        found: list[Received] = read()
        if len(found) >= count or time.monotonic() > end:
            assert len(found) >= count, f"waited {deadline} s for {what}: {len(found)}"
            return found
        time.sleep(0.1)
