"""Group commit: many threads' notifications, one transaction, one fsync.

A notification is answered only after it is durably committed. On SQLite with
``synchronous=FULL`` the commit waits for an fsync, and only one writer may hold the database
at a time, so one transaction per notification caps a node at one fsync per notification
however many cores it has. Databases solve this with
group commit; this is the same idea one level up:

    request threads ──run(item)──▶ queue ──▶ committer thread:
        ONE transaction; once it holds the lock all writers share (SQLite's writer lock;
        on PostgreSQL the events lock, see ``store.hold_events_lock``), which other
        processes may hold meanwhile, take everything queued (up to ``max_batch``),
        ``apply_batch(conn, items)`` (a handful of statements for the whole batch),
        COMMIT (one fsync), then hand each caller its own result or exception.

The committer keeps its database connection while batches follow each other (no pool
checkout, no pre-ping per batch: on PostgreSQL a round trip each) and gives it back to the
pool when a commit leaves nothing queued, before it answers the callers of that batch.

``apply_batch`` answers per item: a result, or the exception that rejects that item alone
(having written nothing of it). If it raises instead, the batch is rolled back and each item
is run again in a transaction of its own, so one bad item cannot fail the others. A
transient database failure (a dropped connection, a serialization failure or deadlock on
PostgreSQL) runs the whole batch again, twice at most; a database that stays unreachable fails
every item with that error (answered 503, so CI retries).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Generic, TypeVar

from sqlalchemy.engine import Connection, Engine

from app import store

#: seconds before the first retry of a transient failure (doubled for each next one)
RETRY_PAUSE = 0.05

I = TypeVar("I")  # noqa: E741 - the item type
R = TypeVar("R")


class GroupCommitter(Generic[I, R]):
    def __init__(
        self,
        engine: Engine,
        apply_batch: Callable[[Connection, Sequence[I]], Sequence[R | Exception]],
        *,
        max_batch: int = 64,
        retries: int = 2,
        begin: Callable[[Connection], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        #: told the size of each batch committed (the commit batch size histogram)
        self.on_batch = on_batch
        #: run first in each batch's transaction, before the queue is drained: a lock every
        #: writer needs (``store.hold_events_lock``), so what arrives while this process waits
        #: for the others joins the batch
        self.begin = begin
        self.retries = retries
        self.apply_batch = apply_batch
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[I, Future[R]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pid = 0
        self._connection = store.HeldConnection(engine)
        #: batches committed and items in them, for the tests and for tuning
        self.batches = 0
        self.items = 0

    def run(self, item: I) -> R:
        """Apply ``item`` in a shared transaction; return its result once committed."""
        self._ensure_thread()
        future: Future[R] = Future()
        self._queue.put((item, future))
        return future.result()

    def _ensure_thread(self) -> None:
        # Started lazily, and again in a forked gunicorn worker (threads do not survive fork).
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                self._queue = queue.SimpleQueue()
                # the committer's own connection (a forked worker must not share its parent's)
                self._connection = store.HeldConnection(self.engine)
                threading.Thread(target=self._loop, name="group-commit", daemon=True).start()
                self._pid = os.getpid()

    def _loop(self) -> None:
        while True:
            self._commit([self._queue.get()], more=True)

    def _take_queued(self, batch: list[tuple[I, Future[R]]]) -> None:
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                return

    @contextmanager
    def _locked_transaction(self) -> Iterator[Connection]:
        """A batch's transaction, once it holds the lock all writers share (SQLite's writer
        lock; the ``begin`` hook's), until its commit or rollback ends."""
        with self._connection.transaction() as conn:
            if self.begin is not None:
                self.begin(conn)
            yield conn

    def _commit(self, batch: list[tuple[I, Future[R]]], *, more: bool = False) -> None:
        """Commit ``batch``; with ``more``, also what is queued once the transaction has
        begun and holds its locks (SQLite's writer lock, the ``begin`` hook's), so what
        arrived while another process committed joins this batch instead of the next."""
        for attempt in range(self.retries + 1):
            try:
                with self._locked_transaction() as conn:
                    if more:
                        self._take_queued(batch)
                    results = self.apply_batch(conn, [item for item, _ in batch])
                break
            except Exception as exc:  # rolled back: nothing of the batch was written
                if store.is_transient(exc) and attempt < self.retries:
                    # safe to run again: a notification already committed (the connection
                    # broke during COMMIT) is found by its digest and recorded once
                    time.sleep(RETRY_PAUSE * 2**attempt)
                    continue
                if len(batch) == 1 or store.is_unavailable(exc):
                    for _, future in batch:  # the database is down: every item gets it
                        future.set_exception(exc)
                else:  # find the culprit by running each alone
                    for unit in batch:
                        self._commit([unit])
                return
        if self._queue.empty():  # idle: the connection goes back to the pool meanwhile
            self._connection.close()
        self.batches += 1
        self.items += len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch))
        for (_, future), result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)
