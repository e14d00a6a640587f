"""EventWaker: PostgreSQL's NOTIFY wakes streams and the deliverer when events commit; on
SQLite the worker's CommitWatcher does, from a commit by any process."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app import store
from app.waker import CommitWatcher, EventWaker

#: the outbox's mechanics with placeholder events, not the event catalogue
pytestmark = pytest.mark.outbox_unchecked


def event_row(n: int) -> dict[str, object]:
    return {"id": f"evt_waker_{n}", "type": "com.cirelay.test", "source": "/test",
            "time": datetime.now(UTC), "data": {}}  # fmt: skip


@pytest.mark.postgresql
def test_a_committed_event_wakes_the_waiters_at_once(pg_engine: Engine) -> None:
    with pg_engine.begin() as conn:
        conn.execute(sa.delete(store.events).where(store.events.c.id.like("evt_waker_%")))
    waker = EventWaker(pg_engine.url.render_as_string(hide_password=False))
    called = threading.Event()
    waker.on_events(called.set)
    deadline = time.monotonic() + 10
    while waker.wait(0.3) or not called.is_set():  # until it listens and all is quiet
        assert time.monotonic() < deadline, "the waker never listened"
    called.clear()

    def commit_later() -> None:
        time.sleep(0.2)
        with store.transaction(pg_engine) as conn:
            store.insert_events(conn, [event_row(1), event_row(2)])

    writer = threading.Thread(target=commit_later)
    started = time.monotonic()
    writer.start()
    assert waker.wait(5.0) is True
    assert time.monotonic() - started < 2.0
    writer.join()
    assert called.wait(1.0)


def test_without_postgresql_waiting_just_times_out(tmp_path: object) -> None:
    waker = EventWaker("sqlite:///x.db")
    assert not waker.active
    started = time.monotonic()
    assert waker.wait(0.05) is False
    assert time.monotonic() - started >= 0.05


@pytest.mark.postgresql
def test_the_listening_connection_is_dropped_by_a_silent_partition(pg_engine: Engine) -> None:
    """Like every pooled connection: a bounded connect and TCP keepalive / user timeout, so
    a partition that swallows packets ends the LISTEN and the waker reconnects."""
    url = pg_engine.url.render_as_string(hide_password=False)
    with store.listening_connection(url) as conn:
        params = conn.info.get_parameters()
        assert conn.autocommit
    assert params["connect_timeout"] == "2"
    assert {k: params[k] for k in store.KEEPALIVE} == {
        k: str(v) for k, v in store.KEEPALIVE.items()
    }


def test_a_commit_by_another_process_wakes_the_commit_watcher_at_once(tmp_path: Path) -> None:
    """SQLite has no NOTIFY: the watcher asks ``PRAGMA data_version`` every 2 ms, which
    changes when any other connection, of any process, has committed."""
    with contextlib.closing(sqlite3.connect(tmp_path / "c.db")) as conn:
        conn.execute("PRAGMA journal_mode=WAL")  # as cirelay's engine opens it
        conn.execute("CREATE TABLE events (seq INTEGER)")
    watcher = CommitWatcher(str(tmp_path / "c.db"))
    woken = threading.Event()
    watcher.on_events(woken.set)
    try:
        assert woken.wait(2.0), "the first look wakes too (what was committed before)"
        woken.clear()
        assert not woken.wait(0.2), "nothing committed: no wake"
        insert = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]);"
            "c.execute('INSERT INTO events VALUES (1)'); c.commit()"
        )
        subprocess.run([sys.executable, "-c", insert, str(tmp_path / "c.db")], check=True)
        assert woken.wait(2.0), "a commit by another process did not wake the watcher"
    finally:
        watcher.close()
    assert watcher._thread is not None and not watcher._thread.is_alive()


def test_the_commit_watcher_never_creates_a_database(tmp_path: Path) -> None:
    """A path with no database yet (the worker started before migrations): the watcher
    waits for it rather than creating an empty file SQLite would then take for the database."""
    watcher = CommitWatcher(str(tmp_path / "missing.db"))
    woken = threading.Event()
    watcher.on_events(woken.set)
    try:
        assert not woken.wait(0.3)
        assert not (tmp_path / "missing.db").exists()
    finally:
        watcher.close()
