"""The retry policy: anything but a 2xx or a 410 retries on the configured schedule with
jitter (``Retry-After`` honoured on 429 and 503) until the schedule is exhausted."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import timedelta

from app.config import Settings


@dataclass(frozen=True)
class Policy:
    """When to retry and when to give up on a subscriber."""

    schedule: tuple[float, ...]
    disable_after: timedelta
    timeout: float
    jitter: float = 0.2

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        return cls(
            schedule=settings.delivery_retry_schedule,
            disable_after=timedelta(seconds=settings.delivery_disable_after_seconds),
            timeout=settings.delivery_timeout_seconds,
        )

    @property
    def first_delay(self) -> timedelta:
        """The first retry's delay: a subscription failing longer than this is down."""
        return timedelta(seconds=self.schedule[0] if self.schedule else 0)

    def probe_delay(self, rng: random.Random) -> timedelta:
        """How long a subscription whose endpoint cannot be reached waits for its next probe
        (one delivery, the oldest due): the first retry's delay, jittered, however long it
        has been down. Each delivery keeps its own backoff, but the endpoint is looked at
        again this often, so one that comes back is found within seconds and its backlog
        drains then (a probe's own retry, 30 s or 10 min into the schedule, would leave it
        waiting that long)."""
        return self.first_delay * rng.uniform(1 - self.jitter, 1 + self.jitter)

    @property
    def lease(self) -> timedelta:
        """How long a claim stays with its worker: one attempt's timeout, plus room."""
        return timedelta(seconds=self.timeout + 5)

    def retry_delay(
        self, attempt: int, retry_after: float | None, rng: random.Random
    ) -> float | None:
        """Seconds until the next try after failed attempt number ``attempt`` (1-based), or
        ``None`` when the schedule is exhausted. ``Retry-After`` replaces the scheduled delay
        (capped at the schedule's longest) when the subscriber sent one."""
        if attempt > len(self.schedule):
            return None
        if retry_after is not None:
            return min(retry_after, max(self.schedule))
        base = self.schedule[attempt - 1]
        return base * rng.uniform(1 - self.jitter, 1 + self.jitter)
