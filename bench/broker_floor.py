"""The floor of ``bench/delivery.py --broker nats`` (not a test): the least any relay from
cirelay's outbox to JetStream can do on this machine, run by ``bench/delivery.py --floor``
in place of ``cirelay worker`` under the same load.

One process polls the ``events`` table (the outbox the web tier commits to) every 10 ms, the
same interval as the worker on SQLite, and publishes each new event to the stream with its id
as ``Nats-Msg-Id``, all of one poll's at once, awaiting the acks. Nothing else: no delivery
rows, no leases, no attempts recorded, no per-job order, no retries, no signature. Whatever
latency it shows (state change -> stored in JetStream) is what committing, polling and
publishing cost by themselves here; cirelay's own figure is measured against it, in the same
run.

With ``--commit`` it also writes down, durably, what it is about to publish before it does
(one row per event in a table of its own, one transaction per poll, committed under the same
writer lock and ``synchronous=FULL`` as cirelay's writes): the least bookkeeping an
at-least-once relay needs, since one that dies mid-publish must know what to send again.
cirelay does that with its delivery rows and leases.

Usage (internal): ``broker_floor.py <sqlite database path> <nats:// subscription URL>
[--commit]``.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nats.js import JetStreamContext

from app.subscriptions import BrokerTarget

POLL_SECONDS = 0.01


async def relay(database: str, url: str, commit: bool) -> None:
    import nats

    target = BrokerTarget.parse(url)
    nc = await nats.connect(f"nats://{target.host}:{target.port}")
    js = nc.jetstream()
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True, check_same_thread=False)
    note = _Notes(database) if commit else None
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    # like a subscription, it gets the events after it starts
    last = db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
    query = (
        "SELECT seq, id, type, source, subject, time, data FROM events WHERE seq > ? "
        "ORDER BY seq LIMIT 1000"
    )
    while not stop.is_set():
        rows = db.execute(query, (last,)).fetchall()
        if not rows:
            await asyncio.sleep(POLL_SECONDS)
            continue
        if note is not None:
            note.sent([int(r[0]) for r in rows])
        await asyncio.gather(*(publish(js, target, row) for row in rows))
        last = rows[-1][0]
    await nc.close()


class _Notes:
    """``--commit``: a durable row per event about to be published, in a table of its own,
    one transaction per poll under cirelay's writer lock (``app.store.engine.WriterLock``)."""

    def __init__(self, database: str) -> None:
        self.db = sqlite3.connect(database, isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "busy_timeout=5000"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute("CREATE TABLE IF NOT EXISTS floor_sent (seq INTEGER PRIMARY KEY)")
        self.lock = os.open(f"{database}.writer-lock", os.O_RDWR | os.O_CREAT, 0o600)

    def sent(self, seqs: list[int]) -> None:
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT INTO floor_sent VALUES (?)", [(s,) for s in seqs])
            self.db.execute("COMMIT")
        finally:
            fcntl.flock(self.lock, fcntl.LOCK_UN)


async def publish(js: JetStreamContext, target: BrokerTarget, row: tuple[object, ...]) -> None:
    _, ident, kind, source, subject, time, data = row
    at = datetime.fromisoformat(str(time)).replace(tzinfo=UTC)
    try:
        body = json.loads(data)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # stored compressed: the floor sends it as it is
        body = repr(data)
    event = {
        "specversion": "1.0", "id": ident, "type": kind, "source": source, "subject": subject,
        "time": at.isoformat().replace("+00:00", "Z"), "datacontenttype": "application/json",
        "data": body,
    }  # fmt: skip
    await js.publish(
        target.topic(str(kind)), json.dumps(event).encode(), stream=target.destination,
        headers={"Nats-Msg-Id": str(ident), "content-type": "application/cloudevents+json"},
    )  # fmt: skip


if __name__ == "__main__":
    asyncio.run(relay(sys.argv[1], sys.argv[2], commit="--commit" in sys.argv[3:]))
