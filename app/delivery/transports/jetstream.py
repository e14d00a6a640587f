"""NATS JetStream: each event published to ``<prefix>.<type>`` with ``Nats-Msg-Id`` = the
event id and the stream named in the URL expected (``Nats-Expected-Stream``), and the
stream's PubAck awaited. A redelivery (a worker that died before the ack, a replay) carries
the same ``Nats-Msg-Id``, so within the stream's duplicate window it is acknowledged without
being stored twice.

Structured mode of the CloudEvents NATS binding: the payload is the event in JSON
(``application/cloudevents+json``, the same bytes a webhook gets), with the Standard Webhooks
headers (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) as NATS headers.
"""

from __future__ import annotations

import asyncio
import logging

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client

from app.delivery.transports.broker import BrokerSender, Rejected
from app.subscriptions import BrokerTarget

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/cloudevents+json"


class NatsSender(BrokerSender[Client]):
    transport = "nats"

    async def _connect(
        self, target: BrokerTarget, address: str, user: str | None, password: str | None,
        on_lost: asyncio.Event,
    ) -> Client:  # fmt: skip
        async def lost() -> None:
            on_lost.set()

        failures: list[Exception] = []

        async def error(exc: Exception) -> None:
            failures.append(exc)
            log.debug("nats %s: %s", target.broker, type(exc).__name__)

        host = f"[{address}]" if ":" in address else address
        login: dict[str, str] = {}
        if user is not None and password is None:
            login["token"] = user
        elif user is not None:
            login = {"user": user, "password": password or ""}
        # reconnecting is ours (BrokerSender._keep_connected), so every connect is checked;
        # servers the cluster announces are never tried. nats-py tries a server at least
        # twice (max_reconnect_attempts=1: once more after reconnect_time_wait), even the
        # first time: that is quick, and then says why.
        try:
            return await nats.connect(
                servers=[f"nats://{host}:{target.port}"], name="cirelay-worker",
                allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.1,
                connect_timeout=self.timeout, disconnected_cb=lost, closed_cb=lost,
                error_cb=error, **login,
            )  # fmt: skip
        except nats.errors.NoServersError:
            if failures:
                raise failures[-1] from None
            raise

    async def _publish(
        self, connection: Client, target: BrokerTarget, topic: str, body: bytes,
        headers: dict[str, str],
    ) -> None:  # fmt: skip
        try:
            await connection.jetstream().publish(
                topic, body, timeout=self.timeout,
                stream=target.destination,
                headers={"Nats-Msg-Id": headers["webhook-id"], "content-type": CONTENT_TYPE,
                         **headers},
            )  # fmt: skip
        except nats.js.errors.NoStreamResponseError:
            raise Rejected(f"no JetStream stream takes subject {topic}") from None
        except nats.js.errors.APIError as exc:
            raise Rejected(
                f"JetStream refused it: {exc.description or ''} (code {exc.err_code})"
            ) from None

    async def _close(self, connection: Client) -> None:
        await connection.close()
