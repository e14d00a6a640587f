"""Wakes event streams and the deliverer when events are committed: PostgreSQL's LISTEN on the
channel :func:`app.store.hold_events_lock` notifies. A thread, not SQL, so it lives outside the
store."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from app.store.engine import EVENTS_CHANNEL, listening_connection


class EventWaker:
    """Wakes whoever waits for new events the moment they are committed: PostgreSQL's
    LISTEN/NOTIFY on one connection per process. On SQLite (or while the listening connection
    is down) :meth:`wait` simply times out, and callers poll as before.

    The listening thread starts on first use, so it is made in the process that uses it (a
    gunicorn worker, after the fork)."""

    def __init__(self, url: str) -> None:
        self.url = url if url.startswith("postgresql") else None
        self._cond = threading.Condition()
        self._generation = 0
        self._pid = 0
        self._callbacks: list[Callable[[], None]] = []

    @property
    def active(self) -> bool:
        return self.url is not None

    def wait(self, timeout: float) -> bool:
        """Until events are committed (True) or ``timeout`` seconds pass (False)."""
        self._ensure_thread()
        with self._cond:
            seen = self._generation
            return self._cond.wait_for(lambda: self._generation != seen, timeout)

    def on_events(self, callback: Callable[[], None]) -> None:
        """Also call ``callback`` (from the listening thread) whenever events are committed."""
        self._callbacks.append(callback)
        self._ensure_thread()

    def _ensure_thread(self) -> None:
        if self.url is None or self._pid == os.getpid():
            return
        with self._cond:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                threading.Thread(target=self._listen, name="event-waker", daemon=True).start()

    def _listen(self) -> None:
        assert self.url is not None
        while True:
            try:
                with listening_connection(self.url) as conn:
                    conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    self._wake()  # anything committed while not listening is seen now
                    for _ in conn.notifies():
                        self._wake()
            except Exception:  # the database went away: wait() times out meanwhile
                time.sleep(1.0)

    def _wake(self) -> None:
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
        for callback in self._callbacks:
            callback()
