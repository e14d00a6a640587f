"""Events become visible in sequence order: a second writer waits for the first's commit."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from app import store
from tests.conftest import Clock

#: the outbox's mechanics with placeholder events, not the event catalogue
pytestmark = pytest.mark.outbox_unchecked


def event(n: int, clock: Clock) -> dict[str, object]:
    return {"id": f"evt_{n}", "type": "t", "source": "s", "time": clock.now, "data": {}}


@pytest.mark.postgresql
def test_a_second_event_writer_waits_until_the_first_commits(
    pg_engine: Engine, engine: Engine, clock: Clock
) -> None:
    if engine.dialect.name != "postgresql":  # `engine` only gives the per-test clean-up
        pytest.skip("SQLite has one writer at a time")
    with pg_engine.connect() as first, pg_engine.connect() as second:
        tx = first.begin()
        store.insert_events(first, [event(1, clock)])  # holds the events lock until commit
        with second.begin():
            second.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))
            with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
                store.insert_events(second, [event(2, clock)])
        tx.commit()
        with second.begin():
            store.insert_events(second, [event(2, clock)])  # free again
    with pg_engine.connect() as conn:
        assert [e.id for e in store.list_events(conn)] == ["evt_1", "evt_2"]
