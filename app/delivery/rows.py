"""What the deliverer hands the store, as frozen rows: the store takes them as dicts
(``dataclasses.asdict`` at the call), keyed by the column names they are written to.

An attempt itself is an :class:`app.models.DeliveryAttempt`, the same type the store reads back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class DeliveryUpdate:
    """Where one attempt leaves its delivery, for :func:`app.store.finish_attempts`."""

    id: int
    attempts: int
    last_status_code: int | None
    last_error: str | None
    #: a :class:`~app.models.DeliveryState` value
    state: str
    next_attempt_at: datetime
    completed_at: datetime | None


@dataclass(frozen=True)
class NewEvent:
    """An event on its way into the outbox (:func:`app.store.insert_event`): an
    :class:`~app.models.Event` before the database gives it its sequence number."""

    id: str
    type: str
    source: str
    subject: str | None
    job_id: str | None
    time: datetime
    data: dict[str, Any]
