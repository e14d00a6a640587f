"""The sender interface and its three implementations: a subscription's URL scheme picks
one, and the deliverer's loop (fan-out, claims, leases, per-job order, retries, health,
replays, metrics) is the same for all of them.

- ``http``/``https``: :class:`app.delivery.sender.Sender`, a signed POST (webhooks);
- ``nats``: :class:`~app.delivery.transports.jetstream.NatsSender`, JetStream;
- ``amqp``/``amqps``: :class:`~app.delivery.transports.rabbitmq.AmqpSender`, RabbitMQ.

Each takes the same body (the CloudEvent in JSON structured mode) and the same Standard
Webhooks headers, and returns once the target has acknowledged it (a 2xx, a JetStream PubAck,
a publisher confirm): the next event of the job is claimed only after that. The broker
senders share one asyncio loop (:class:`~app.delivery.transports.loop.BrokerLoop`) per worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from app.delivery.sender import AttemptReport, Sender
from app.delivery.transports.broker import BrokerSender
from app.delivery.transports.jetstream import NatsSender
from app.delivery.transports.loop import BrokerLoop
from app.delivery.transports.rabbitmq import AmqpSender
from app.subscriptions import Login, transport_of


class Transport(Protocol):
    """The sender interface: one attempt at handing an event to a subscription's target."""

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> AttemptReport: ...


class Transports:
    """A :class:`Transport` that hands each attempt to the sender of its URL's scheme."""

    def __init__(self, http: Transport, brokers: Sequence[BrokerSender[Any]] = ()) -> None:
        self.senders: dict[str, Transport] = {"http": http}
        self.brokers = tuple(brokers)
        self.senders.update({b.transport: b for b in self.brokers})

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> AttemptReport:
        return self.senders[transport_of(url)].post(url, body, headers)

    def health(self) -> list[dict[str, Any]]:
        """Every broker connection of this worker, and its state (``/readyz``)."""
        return [link for broker in self.brokers for link in broker.health()]

    def close(self) -> None:
        """Close every broker connection, then stop the loop thread they shared."""
        for broker in self.brokers:
            broker.close()
        for loop in {id(b.loop): b.loop for b in self.brokers}.values():
            loop.close()


def build_transports(
    http: Sender, *, allowed_networks: Sequence[str], timeout: float,
    logins: dict[str, Login],
) -> Transports:  # fmt: skip
    """HTTP, and the broker senders on one loop thread (started now, idle until a broker
    subscription's first delivery)."""
    loop = BrokerLoop()
    brokers = [
        kind(loop, allowed_networks=allowed_networks, timeout=timeout, logins=logins)
        for kind in (NatsSender, AmqpSender)
    ]
    return Transports(http, brokers)


__all__ = [
    "AmqpSender",
    "BrokerLoop",
    "BrokerSender",
    "NatsSender",
    "Transport",
    "Transports",
    "build_transports",
]
