"""Wakes event streams and the deliverer when events are committed: PostgreSQL's LISTEN on the
channel :func:`app.store.hold_events_lock` notifies (:class:`EventWaker`); on SQLite, the
worker's :class:`CommitWatcher`. Threads, not SQL, so they live outside the store."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable
from typing import Protocol

from app.store.engine import EVENTS_CHANNEL, listening_connection

log = logging.getLogger(__name__)


class Waker(Protocol):
    """What the deliverer needs of a waker."""

    @property
    def active(self) -> bool:
        """Whether it wakes at all (else the deliverer polls often)."""
        ...

    def on_events(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the waker's thread) when something may have been committed."""
        ...


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


#: how often the commit watcher asks SQLite whether anything was committed: each ask takes a
#: few microseconds, so every 2 ms costs about 2 % of a core (reading the outbox every 10 ms,
#: as an idle worker did before, cost it 8-14 %)
COMMIT_POLL_SECONDS = 0.002


class CommitWatcher:
    """Wakes the worker when anything is committed to a SQLite database, by any process.
    SQLite has no NOTIFY, but ``PRAGMA data_version`` changes whenever another connection
    has committed, and asking it looks only at the WAL index in shared memory: a thread asks
    every :data:`COMMIT_POLL_SECONDS` on a connection of its own, and wakes the worker when
    the answer changes. The worker's own commits wake it too; its loop tells those wakes by
    its own connection's data version, which they leave as it was, and waits on. If the
    watcher's connection fails, it is opened again a second later; meanwhile
    the worker still looks every quarter second.

    Started by the first :meth:`on_events`; :meth:`close` stops it."""

    active = True

    def __init__(self, path: str, interval: float = COMMIT_POLL_SECONDS) -> None:
        self.path = path
        self.interval = interval
        self._callbacks: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_events(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="commit-watcher", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self._follow()
            except Exception as exc:  # never silently gone: the worker would poll slowly
                log.warning("commit watcher: %s; looking again in 1 s", exc)
                self._stop.wait(1.0)

    def _follow(self) -> None:
        # mode=rw: never create a database that is not there
        uri = f"file:{urllib.parse.quote(os.path.abspath(self.path))}?mode=rw"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        with contextlib.closing(conn):
            seen = None  # the first answer wakes too: what was committed before is seen now
            while not self._stop.is_set():
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != seen:
                    seen = version
                    for callback in self._callbacks:
                        callback()
                self._stop.wait(self.interval)
