"""Group commit: many threads' units of work, one transaction, one fsync.

A notification is answered only after it is durably committed. On SQLite with
``synchronous=FULL`` the commit waits for an fsync (1-4 ms on this kind of disk), and only one
writer may hold the database at a time, so one transaction per notification caps a node at a
few hundred notifications per second however many cores it has. Databases solve this with
group commit; this is the same idea one level up:

    request threads ──run(work)──▶ queue ──▶ committer thread:
        take everything queued (up to ``max_batch``), ONE transaction, run each unit of work,
        COMMIT (one fsync), then hand each caller its own result or exception.

Each caller still gets all-or-nothing for its own work: if a unit of work raises, the batch is
rolled back, that caller gets the exception, and the others are run again without it. Units of
work are sorted by a caller-supplied key first, so two processes' batches take row locks in
the same order (no deadlocks on PostgreSQL).
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Connection, Engine

from app import store

T = TypeVar("T")


@dataclass(order=True)
class _Unit(Generic[T]):
    key: str
    work: Callable[[Connection], T] = field(compare=False)
    future: Future[T] = field(compare=False, default_factory=Future)


class GroupCommitter:
    def __init__(self, engine: Engine, *, max_batch: int = 64) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Unit[Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pid = 0
        #: sizes of the batches committed, for the metrics and the tests
        self.batches = 0
        self.units = 0

    def run(self, work: Callable[[Connection], T], *, key: str = "") -> T:
        """Run ``work(conn)`` in a shared transaction; return once it is committed."""
        self._ensure_thread()
        unit: _Unit[T] = _Unit(key, work)
        self._queue.put(unit)
        return unit.future.result()

    def _ensure_thread(self) -> None:
        # Started lazily, and again in a forked gunicorn worker (threads do not survive fork).
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                self._queue = queue.SimpleQueue()
                threading.Thread(target=self._loop, name="group-commit", daemon=True).start()
                self._pid = os.getpid()

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self._commit(sorted(batch))

    def _commit(self, batch: list[_Unit[Any]]) -> None:
        while batch:
            results: list[Any] = []
            failed: _Unit[Any] | None = None
            try:
                with store.transaction(self.engine) as conn:
                    for unit in batch:
                        try:
                            results.append(unit.work(conn))
                        except Exception as exc:  # handed to its caller
                            failed = unit
                            failed.future.set_exception(exc)
                            raise _RollBack from exc
            except _RollBack:
                assert failed is not None
                batch = [u for u in batch if u is not failed]  # run the others again
                continue
            except Exception as exc:  # the commit itself failed
                for unit in batch:
                    unit.future.set_exception(exc)
                return
            self.batches += 1
            self.units += len(batch)
            for unit, result in zip(batch, results, strict=True):
                unit.future.set_result(result)
            return


class _RollBack(Exception):
    """Raised inside the transaction to roll it back after a unit of work failed."""
