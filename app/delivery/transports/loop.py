"""One asyncio event loop on a thread of its own, owning a worker's broker connections.

The deliverer sends from a pool of threads (one attempt per thread, as for webhooks); the
broker clients (nats-py, aio-pika) are asyncio libraries whose connections belong to one
loop. :meth:`BrokerLoop.call` hands a coroutine to the loop from any thread and waits for its
result: every delivery thread shares the loop's one connection per broker, the clients'
own concurrency (many publishes in flight on one connection, each awaiting its ack) is used
as designed, and the deliverer's loop is the same for every transport.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class BrokerLoop:
    """An event loop running on a daemon thread; :meth:`call` runs a coroutine on it."""

    def __init__(self, name: str = "brokers") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop (thread-safe); its result as a future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """``coro``'s result, or ``TimeoutError`` after ``timeout`` seconds (the coroutine is
        then cancelled)."""
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no answer within {timeout:g} s") from None

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop and its thread (close the connections on it first)."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
