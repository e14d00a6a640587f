"""What the NATS and AMQP senders share: one long-lived connection per broker (per worker),
kept up by a task that reconnects with backoff, its health for ``/readyz``, and one attempt
as an :class:`~app.delivery.sender.AttemptReport` like a webhook's.

A connection is opened by the first publish to its broker (which waits for it). When it is
lost, or cannot be opened, the broker is *down*: a task reconnects after 0.5 s, 1 s, 2 s …
(at most :data:`MAX_BACKOFF_SECONDS`, with jitter), and publishes meanwhile fail at once as
connection errors (retried on the delivery schedule) instead of each waiting out its timeout:
a broker that is down holds no delivery slot, and affects only its own subscriptions.

The broker's address is checked by the SSRF rule (``CIRELAY_DELIVERY_ALLOWED_NETWORKS``) at
every connect, and the connection goes to the checked address (for ``amqps``, to the host
name, which TLS verifies).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

from app.delivery.sender import EXCERPT_BYTES, AttemptReport
from app.delivery.transports.loop import BrokerLoop
from app.models import AttemptResult
from app.subscriptions import (
    BrokerTarget,
    ForbiddenAddress,
    Login,
    Resolver,
    allowed_address,
    resolve,
)

log = logging.getLogger(__name__)

C = TypeVar("C")

FIRST_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 30.0
#: a broker that is down and that no publish has asked for this long is forgotten (its
#: subscriptions were deleted or disabled): its reconnect task ends
FORGET_AFTER_SECONDS = 600.0


class BrokerUnavailable(Exception):
    """The broker is down and its connection is being retried: fail the attempt at once."""


class Rejected(Exception):
    """The broker took the message and refused it (unroutable, no such stream or exchange,
    nacked): a failed attempt, retried like one."""


@dataclass(eq=False)
class Link(Generic[C]):
    """One broker's connection and its health."""

    broker: str
    transport: str
    connection: C | None = None
    state: str = "connecting"  # connecting | up | down
    since: datetime = field(default_factory=lambda: datetime.now(UTC))
    error: str | None = None
    failures: int = 0
    used_at: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    lost: asyncio.Event = field(default_factory=asyncio.Event)

    def set_state(self, state: str, error: str | None = None) -> None:
        if state != self.state:
            self.since = datetime.now(UTC)
            if state == "down":
                log.warning("%s broker %s down: %s", self.transport, self.broker, error)
            elif state == "up":
                log.info("%s broker %s connected", self.transport, self.broker)
        self.state, self.error = state, error

    def view(self) -> dict[str, Any]:
        return {
            "transport": self.transport,
            "broker": self.broker,
            "state": self.state,
            "since": self.since.isoformat().replace("+00:00", "Z"),
            "error": self.error,
        }


class BrokerSender(ABC, Generic[C]):
    """Publishes to one kind of broker; :meth:`post` is the sender interface the deliverer
    calls, from any thread."""

    transport: ClassVar[str]

    def __init__(
        self,
        loop: BrokerLoop,
        *,
        allowed_networks: Sequence[str],
        timeout: float,
        logins: Mapping[str, Login] | None = None,
        resolver: Resolver = resolve,
    ) -> None:
        self.loop = loop
        self.allowed_networks = tuple(allowed_networks)
        self.timeout = timeout
        self.logins = dict(logins or {})
        self.resolver = resolver
        #: (broker, user, password) -> its link; touched only on the loop's thread
        self._links: dict[tuple[str, str | None, str | None], Link[C]] = {}
        self._rng = random.Random()  # noqa: S311 - jitter, not a secret

    # what a subclass does

    @abstractmethod
    async def _connect(
        self, target: BrokerTarget, address: str, user: str | None, password: str | None,
        on_lost: asyncio.Event,
    ) -> C:  # fmt: skip
        """A new connection to ``address``; set ``on_lost`` when it goes."""

    @abstractmethod
    async def _publish(
        self, connection: C, target: BrokerTarget, topic: str, body: bytes,
        headers: dict[str, str],
    ) -> None:  # fmt: skip
        """Publish to ``topic`` (subject or routing key) and wait for the broker's
        acknowledgement; :class:`Rejected` if it refuses."""

    @abstractmethod
    async def _close(self, connection: C) -> None: ...

    # the sender interface

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> AttemptReport:
        """One attempt: publish ``body`` with ``headers`` to the broker ``url`` names, and
        wait for its acknowledgement, at most the delivery timeout."""
        started = time.perf_counter()
        target = BrokerTarget.parse(url)
        try:
            secrets_ = [s for s in target.login(self.logins) if s]
        except KeyError:
            secrets_ = []
        try:
            topic = target.topic(json.loads(body)["type"])
            self.loop.call(self._post(target, topic, body, headers), self.timeout)
            report = AttemptReport(AttemptResult.SUCCESS)
        except TimeoutError:
            report = AttemptReport(
                AttemptResult.TIMEOUT, error=f"no acknowledgement within {self.timeout:g} s"
            )
        except ForbiddenAddress as exc:
            report = AttemptReport(AttemptResult.FORBIDDEN_ADDRESS, error=str(exc))
        except Rejected as exc:
            report = AttemptReport(AttemptResult.REJECTED, error=_excerpt(exc, secrets_, False))
        except Exception as exc:  # the broker or the network: retried like a webhook's
            report = AttemptReport(AttemptResult.CONNECTION_ERROR, error=_excerpt(exc, secrets_))
        return replace(report, duration_ms=(time.perf_counter() - started) * 1000)

    def health(self) -> list[dict[str, Any]]:
        """Every broker this worker has connected to (or tried to), and its state."""
        return sorted((link.view() for link in list(self._links.values())),
                      key=lambda v: (v["transport"], v["broker"]))  # fmt: skip

    def close(self) -> None:
        """Close every connection (on the loop; at most a few seconds)."""
        with contextlib.suppress(TimeoutError, RuntimeError):
            self.loop.call(self._close_all(), 5.0)

    # on the loop

    async def _post(
        self, target: BrokerTarget, topic: str, body: bytes, headers: dict[str, str]
    ) -> None:
        connection = await self._connection(target)
        await self._publish(connection, target, topic, body, headers)

    async def _connection(self, target: BrokerTarget) -> C:
        try:
            user, password = target.login(self.logins)
        except KeyError as exc:
            raise BrokerUnavailable(str(exc.args[0])) from None
        key = (target.broker, user, password)
        link = self._links.get(key)
        if link is None:
            link = self._links[key] = Link(target.broker, self.transport)
        link.used_at = time.monotonic()
        if link.task is None or link.task.done():
            link.task = asyncio.create_task(self._keep_connected(link, target, user, password))
        if link.state == "connecting":
            await link.ready.wait()  # bounded by the attempt's timeout
        if link.state != "up" or link.connection is None:
            raise BrokerUnavailable(f"{link.broker} is down: {link.error}")
        return link.connection

    async def _keep_connected(
        self, link: Link[C], target: BrokerTarget, user: str | None, password: str | None
    ) -> None:
        """Connect; when the connection goes, reconnect after a backoff; until the broker
        has been down and unused for :data:`FORGET_AFTER_SECONDS`."""
        secrets_ = [s for s in (user, password) if s]
        while True:
            try:
                address = await asyncio.get_running_loop().run_in_executor(
                    None, allowed_address, target.host, target.port, self.allowed_networks,
                    self.resolver,
                )  # fmt: skip
                link.lost.clear()
                link.connection = await asyncio.wait_for(
                    self._connect(target, address, user, password, link.lost), self.timeout
                )
            except Exception as exc:
                link.failures += 1
                link.set_state("down", _excerpt(exc, secrets_))
            else:
                link.failures = 0
                link.set_state("up")
                link.ready.set()
                await link.lost.wait()
                link.set_state("down", "connection lost")
                link.failures = 1
            link.ready.set()  # wake publishes waiting on this attempt: they fail at once
            if link.connection is not None:
                await self._quietly_close(link.connection)
                link.connection = None
            if time.monotonic() - link.used_at > FORGET_AFTER_SECONDS:
                self._links = {k: v for k, v in self._links.items() if v is not link}
                return
            await asyncio.sleep(self._backoff(link.failures))

    def _backoff(self, failures: int) -> float:
        delay = min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** max(0, failures - 1))
        return float(delay * self._rng.uniform(0.8, 1.2))

    async def _quietly_close(self, connection: C) -> None:
        try:
            await asyncio.wait_for(self._close(connection), 2.0)
        except Exception:  # already gone
            log.debug("closing a %s connection failed", self.transport, exc_info=True)

    async def _close_all(self) -> None:
        tasks = [link.task for link in self._links.values() if link.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for link in list(self._links.values()):
            if link.connection is not None:
                await self._quietly_close(link.connection)
        self._links.clear()


def _excerpt(exc: BaseException, secrets_: Sequence[str], kind: bool = True) -> str:
    """An exception as an attempt's ``error`` (``kind``: with its type), with any credential
    in it masked."""
    text = f"{type(exc).__name__}: {exc}" if kind and str(exc) else str(exc) or repr(exc)
    for secret in secrets_:
        text = text.replace(secret, "***")
    return text[:EXCERPT_BYTES]
