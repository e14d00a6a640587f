"""EventWaker: PostgreSQL's NOTIFY wakes streams and the deliverer when events commit."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app import store
from app.waker import EventWaker

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
