"""RabbitMQ (AMQP 0-9-1): each event published to the URL's exchange with routing key
``<prefix>.<type>``, persistent, ``message_id`` = the event id, ``mandatory`` set, on a
channel with publisher confirms: the attempt succeeds on the broker's ack; a nack, or a
message returned as unroutable (no queue bound for its key), or an exchange that does not
exist, is a failed attempt (``rejected``), retried and visible in the deliveries API.

Structured mode of the CloudEvents binding: the body is the event in JSON, ``content_type``
``application/cloudevents+json`` (read it with ``cloudevents.core.bindings.rabbitmq``), and
the Standard Webhooks headers (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``)
in the message's headers.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.connection import make_url

from app.delivery.transports.broker import BrokerSender, Rejected
from app.subscriptions import BrokerTarget

CONTENT_TYPE = "application/cloudevents+json"


class _Connection:
    """A connection and a confirming channel per exchange: the broker closes a channel on
    an error (a publish to an exchange that does not exist), which then fails only that
    exchange's publishes; it is opened again on the next."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self._channels: dict[str, AbstractChannel] = {}
        self._lock = asyncio.Lock()

    async def channel(self, exchange: str) -> AbstractChannel:
        async with self._lock:
            channel = self._channels.get(exchange)
            if channel is None or channel.is_closed:
                channel = self._channels[exchange] = await self.connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
            return channel


class AmqpSender(BrokerSender[_Connection]):
    transport = "amqp"

    async def _connect(
        self, target: BrokerTarget, address: str, user: str | None, password: str | None,
        on_lost: asyncio.Event,
    ) -> _Connection:  # fmt: skip
        tls = target.scheme == "amqps"
        url = make_url(
            host=target.host if tls else address, port=target.port, login=user or "guest",
            password=password or "guest", virtualhost=target.vhost, ssl=tls,
            client_properties={"connection_name": "cirelay-worker"},
        )  # fmt: skip
        # not aio_pika.connect: a connection that failed to open is closed here, on the loop,
        # rather than by its __del__ on whichever thread collects it (which cannot)
        connection: AbstractConnection = aio_pika.Connection(url)
        try:
            await connection.connect(timeout=self.timeout)
        except BaseException:
            await connection.close()
            raise
        connection.close_callbacks.add(lambda *_: on_lost.set())
        return _Connection(connection)

    async def _publish(
        self, connection: _Connection, target: BrokerTarget, topic: str, body: bytes,
        headers: dict[str, str],
    ) -> None:  # fmt: skip
        channel = await connection.channel(target.destination)
        exchange = await channel.get_exchange(target.destination, ensure=False)
        message = aio_pika.Message(
            body, content_type=CONTENT_TYPE, delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=headers["webhook-id"],
            headers=dict(headers),
        )  # fmt: skip
        try:
            await exchange.publish(message, topic, mandatory=True, timeout=self.timeout)
        except aiormq.exceptions.DeliveryError as exc:  # returned (unroutable), or nacked
            frame = exc.frame
            reason = getattr(frame, "reply_text", None) or type(frame).__name__
            raise Rejected(
                f"returned by the broker: {reason} (exchange {target.destination!r}, "
                f"routing key {topic!r})"
            ) from None
        except (aiormq.exceptions.ChannelNotFoundEntity,
                aiormq.exceptions.ChannelAccessRefused) as exc:  # fmt: skip
            raise Rejected(str(exc)) from None

    async def _close(self, connection: _Connection) -> None:
        await connection.connection.close()
