"""The rules of :class:`app.web.stream.EventTail`: what a stream at a given cursor gets from the
newest events a process holds, and when it must read the database instead."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from app.models import Event, TypeFilter
from app.web import stream
from app.web.stream import EventTail, sse_message

EVERYTHING = TypeFilter()


def event(seq: int, type_: str = "com.cirelay.job.succeeded") -> Event:
    return Event(seq=seq, id=f"evt_{seq}", type=type_, source="/cirelay", subject=None,
                 job_id=None, time=datetime(2026, 12, 6, tzinfo=UTC), data={"n": seq})  # fmt: skip


def tail_at(head: int) -> EventTail:
    tail = EventTail(cast(Any, None), poll=0.05)
    tail.base = tail.last = head
    return tail


def test_a_stream_gets_every_event_after_its_cursor_once_in_order() -> None:
    tail = tail_at(10)
    tail._hold([event(11), event(12), event(13)])
    data, cursor = tail.since(11, EVERYTHING) or (b"", 0)
    assert data == (sse_message(event(12)) + sse_message(event(13))).encode()
    assert cursor == 13
    assert tail.since(13, EVERYTHING) == (b"", 13)  # nothing new: nothing repeated


def test_a_filter_skips_events_but_the_cursor_moves_past_them() -> None:
    tail = tail_at(0)
    tail._hold([event(1, "com.cirelay.job.running"), event(2), event(3, "com.cirelay.x")])
    wanted = TypeFilter.from_patterns(["com.cirelay.job.*"])
    data, cursor = tail.since(0, wanted) or (b"", 0)
    assert data == (sse_message(event(1, "com.cirelay.job.running")) +
                    sse_message(event(2))).encode()  # fmt: skip
    assert cursor == 3


def test_a_cursor_ahead_of_the_head_stays_where_it_is() -> None:
    tail = tail_at(5)
    tail._hold([event(6)])
    assert tail.since(100, EVERYTHING) == (b"", 100)


def test_a_cursor_behind_what_is_held_reads_the_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "TAIL_KEEP", 2)
    tail = tail_at(0)
    tail._hold([event(n) for n in range(1, 6)])  # more than twice TAIL_KEEP: the oldest go
    assert tail.base == 3 and tail.last == 5
    assert tail.since(2, EVERYTHING) is None
    data, cursor = tail.since(3, EVERYTHING) or (b"", 0)
    assert data == (sse_message(event(4)) + sse_message(event(5))).encode() and cursor == 5


def test_new_events_wake_the_streams_that_want_them_only() -> None:
    async def scenario() -> None:
        tail = tail_at(0)
        everything = tail.changed(EVERYTHING)
        quarantined = tail.changed(TypeFilter.from_patterns(["com.cirelay.notification.*"]))
        assert everything is tail.changed(EVERYTHING)  # one wake-up for the streams alike
        tail._hold([event(1)])
        assert everything.done() and not tail.changed(EVERYTHING).done()
        assert not quarantined.done()  # nothing it wants: left asleep
        tail._hold([event(2, "com.cirelay.notification.quarantined")])
        assert quarantined.done()

    asyncio.run(scenario())
