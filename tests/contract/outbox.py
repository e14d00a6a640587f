"""Every event written to the outbox checked against the catalogue: its type must be listed
(``app.contract.catalogue.EVENT_TYPES``) and its ``data`` must satisfy the type's JSON Schema.

``tests/conftest.py`` installs :func:`checking_outbox` around every test: it wraps the one
statement every outbox write goes through (``app.store.batched._INSERT_EVENTS``, behind
``store.insert_event`` and ``store.insert_events``), so an event that breaks its schema fails
the test that made it, at the line that wrote it."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from app.contract import EVENT_TYPES
from app.store import batched


@cache
def validator(event_type: str) -> Draft202012Validator:
    return Draft202012Validator(EVENT_TYPES[event_type].schema, format_checker=FormatChecker())


def problems(event_type: str, data: Any) -> list[str]:
    """Why an event of ``event_type`` with ``data`` breaks the catalogue ([] when it does not)."""
    if event_type not in EVENT_TYPES:
        return [f"event type {event_type!r} is not in the catalogue (app/contract/catalogue.py)"]
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '(data)'}: {e.message}"
        for e in validator(event_type).iter_errors(data)
    ]


class OffCatalogue(AssertionError):
    """An event the catalogue does not allow. An ordinary exception (not pytest's ``Failed``,
    a BaseException): raised in a committer thread, it reaches the caller as any error does."""


def check_rows(rows: list[Mapping[str, Any]]) -> None:
    for row in rows:
        found = problems(row["type"], row["data"])
        if found:
            raise OffCatalogue(f"event {row['type']} breaks the catalogue: {found}")


@contextmanager
def checking_outbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    insert = batched._INSERT_EVENTS
    original = insert.run

    def run(conn: Any, rows: list[dict[str, Any]]) -> None:
        check_rows(rows)
        original(conn, rows)

    monkeypatch.setattr(insert, "run", run)
    yield
