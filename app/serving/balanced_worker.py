"""gunicorn's gthread worker, with client connections spread evenly over the workers.

Every gthread worker polls the one listening socket and accepts whatever it is woken for, so
a burst of connections lands on the workers unevenly, and differently every time. Clients that
keep their connections open (a load balancer's upstream keep-alive pool, CI's callback senders,
wrk) then keep one worker busy, with its GIL and its one CPU, while another idles: the service
gets less than its CPUs can give, by an amount that changes from one burst to the next
(``bench/RESULTS.md`` has the measurements).

:class:`BalancedThreadWorker` accepts a connection only while it holds no more connections than
the least-loaded live worker; the others, woken for the same connection, leave it to that one.
Each worker publishes its count once per turn of its event loop into a table in memory shared
with the master and the other workers (:class:`ConnectionTable`, made before the first fork).
A worker that has not published for :data:`STALE_AFTER` seconds (hung, or dead before the master
noticed) does not count, so a stuck worker cannot stop the others accepting. The worker with the
fewest connections always accepts; one that stopped accepting looks again at its next turn, at
most a second later (gthread's poll timeout), when the others have taken their share.
"""

from __future__ import annotations

import mmap
import struct
import time
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

#: seconds without news after which a worker's count is ignored (gthread turns once a second)
STALE_AFTER = 3.0
#: workers the table has room for; a worker without a slot is not balanced
SLOTS = 256
_ENTRY = struct.Struct("dd")  # connections, monotonic time of the last publication


class ConnectionTable:
    """Each worker's open connections and when it last said so, in an anonymous shared mapping
    inherited by every worker forked after it is made."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        self._memory = mmap.mmap(-1, _ENTRY.size * slots)

    def publish(self, slot: int, connections: int, now: float) -> None:
        _ENTRY.pack_into(self._memory, slot * _ENTRY.size, float(connections), now)

    def clear(self, slot: int) -> None:
        _ENTRY.pack_into(self._memory, slot * _ENTRY.size, 0.0, 0.0)

    def fewest(self, slot: int, connections: int, now: float, workers: int) -> bool:
        """Whether ``connections`` is no more than any other live worker holds. Slots are
        handed out lowest first, so the live ones are below the number of ``workers``."""
        for other in range(min(max(workers, slot + 1), self.slots)):
            count, stamp = _ENTRY.unpack_from(self._memory, other * _ENTRY.size)
            if other != slot and now - stamp < STALE_AFTER and count < connections:
                return False
        return True

    def free_slot(self, taken: list[int | None]) -> int | None:
        """The lowest slot no live worker holds (``None`` when all are taken)."""
        return next((s for s in range(self.slots) if s not in taken), None)


#: made when the master loads its config (``app.serving.gunicorn_conf`` imports it),
#: before any fork
TABLE = ConnectionTable()


class BalancedThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gthread, accepting only while it has the fewest connections (see the module).

    ``cirelay_slot`` is set on the worker by the master (``app.serving.gunicorn_conf``'s
    ``pre_fork``); without one the worker behaves exactly as gthread."""

    cirelay_slot: int | None = None

    @property
    def worker_connections(self) -> int:
        """gthread's limit, read once per turn of its event loop to decide whether to accept:
        0 (accept nothing this turn) while another live worker has fewer connections."""
        limit: int = self.cfg.worker_connections
        if self.cirelay_slot is None:
            return limit
        now = time.monotonic()
        TABLE.publish(self.cirelay_slot, self.nr_conns, now)
        fewest = TABLE.fewest(self.cirelay_slot, self.nr_conns, now, self.cfg.workers)
        return limit if fewest else 0

    @worker_connections.setter
    def worker_connections(self, value: Any) -> None:
        """gthread's ``__init__`` sets the limit from the config, which the getter reads."""
