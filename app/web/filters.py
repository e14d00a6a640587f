"""Filters as a client writes them — query parameters, form fields or a JSON body, with the
same names everywhere — read into the store's filters. One reading for the ``/v1`` API and
the console, so both accept and refuse the same things (400 listing every bad field).

Names: ``state`` (repeat or comma-separate), ``job_id``, ``created_after``/``created_before``
(ISO 8601) for deliveries; ``error``, ``source``, ``job_id``, ``received_after``/
``received_before``, ``pending`` for quarantined notifications; ``state``, ``tag``,
``origin``, ``ci_job_id``, ``user_data``, ``created_after``/``created_before`` for jobs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from app.errors import BadRequestError, UnprocessableError
from app.models import DeliveryFilter, DeliveryState, JobState, Outcome, QuarantineFilter, Source
from app.web.inputs import MAX_PAGE, ascii_int, json_body

#: a query string or form (``MultiDict``: ``getlist``), or a JSON object's fields
Fields = Mapping[str, Any]


def _values(fields: Fields, name: str) -> list[str]:
    """Every value given for ``name``: repeated or comma-separated, strings only."""
    getlist = getattr(fields, "getlist", None)
    raw: Iterable[Any] = getlist(name) if getlist else _as_list(fields.get(name))
    return [part.strip() for item in raw if isinstance(item, str) for part in item.split(",")
            if part.strip()]  # fmt: skip


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


@dataclass
class Reader:
    """Reads fields and collects every problem; :meth:`done` raises them as one 400."""

    fields: Fields
    problems: list[dict[str, str]] = field(default_factory=list)

    def text(self, name: str, max_length: int = 256, *, whole: bool = False) -> str | None:
        """The field's first value; ``whole``: as given (commas and spaces kept), for free
        text such as a job's user data or an object key."""
        values = self._raw(name) if whole else _values(self.fields, name)
        value = values[0] if values else None
        if value is not None and len(value) > max_length:
            self.problems.append({"field": name, "reason": f"at most {max_length} characters"})
            return None
        return value

    def _raw(self, name: str) -> list[str]:
        value = self.fields.get(name)
        return [value] if isinstance(value, str) and value else []

    def choices(self, name: str, allowed: Iterable[str]) -> tuple[str, ...]:
        values, known = _values(self.fields, name), set(allowed)
        bad = [v for v in values if v not in known]
        if bad:
            self.problems.append({"field": name, "reason": f"one of {sorted(known)}"})
        return tuple(v for v in values if v in known)

    def states(self, known: Iterable[str]) -> tuple[str, ...]:
        """``state``: each value one of ``known`` (each unknown one named in the 400)."""
        values, allowed = _values(self.fields, "state"), set(known)
        self.problems += [{"field": "state", "reason": f"unknown state {v!r}"} for v in values
                          if v not in allowed]  # fmt: skip
        return tuple(v for v in values if v in allowed)

    def limit(self, maximum: int = MAX_PAGE, default: int = 50) -> int:
        """``limit``: an integer from 1 to ``maximum`` (``default`` when absent)."""
        raw = self.fields.get("limit")
        value = ascii_int(str(raw), 1, maximum) if raw is not None else default
        if value is None:
            self.problems.append({"field": "limit", "reason": f"an integer from 1 to {maximum}"})
            return default
        return value

    def row_id(self, name: str, what: str = "an id") -> int | None:
        """A row id (``before`` pages by it)."""
        raw = self.fields.get(name)
        if raw is None:
            return None
        value = ascii_int(str(raw))
        if value is None:
            self.problems.append({"field": name, "reason": what})
        return value

    def choice(self, name: str, allowed: Iterable[str]) -> str | None:
        values = self.choices(name, allowed)
        return values[0] if values else None

    def time(self, name: str) -> datetime | None:
        values = _values(self.fields, name)
        if not values:
            return None
        try:
            value = datetime.fromisoformat(values[0].replace("Z", "+00:00"))
            # the store compares in UTC, and 0001-01-01T00:00+14:00 has none (year 0)
            return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
        except (ValueError, OverflowError):
            self.problems.append(
                {"field": name, "reason": "an ISO 8601 timestamp, year 1 to 9999 in UTC"}
            )
            return None

    def flag(self, name: str) -> bool:
        value = self.fields.get(name)
        if isinstance(value, bool):
            return value
        values = _values(self.fields, name)
        if not values:
            return False
        if values[0] not in ("true", "false", "1", "0", "on"):
            self.problems.append({"field": name, "reason": "true or false"})
        return values[0] in ("true", "1", "on")

    def done(self, message: str = "invalid filter") -> None:
        if self.problems:
            raise BadRequestError(message, self.problems)


def delivery_filter(fields: Fields, subscription_id: str | None) -> DeliveryFilter:
    read = Reader(fields)
    which = DeliveryFilter(
        subscription_id=subscription_id,
        states=read.choices("state", [s.value for s in DeliveryState]),
        job_id=read.text("job_id", 40),
        created_after=read.time("created_after"),
        created_before=read.time("created_before"),
    )
    read.done()
    return which


#: what a quarantined notification's error can be
QUARANTINE_ERRORS = (Outcome.SCHEMA_VIOLATION, Outcome.MALFORMED, Outcome.WRONG_ENDPOINT)


def quarantine_filter(fields: Fields) -> QuarantineFilter:
    read = Reader(fields)
    which = QuarantineFilter(
        error=read.choice("error", [e.value for e in QUARANTINE_ERRORS]),
        source=read.choice("source", [Source.CALLBACK.value, Source.QUEUE.value]),
        job_id=read.text("job_id", 40),
        received_after=read.time("received_after"),
        received_before=read.time("received_before"),
        pending_only=read.flag("pending"),
    )
    read.done()
    return which


@dataclass(frozen=True)
class JobQuery:
    """``store.list_jobs``'s filters."""

    states: tuple[str, ...] = ()
    tag: str | None = None
    origin: str | None = None
    ci_job_id: str | None = None
    user_data: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None

    def arguments(self) -> dict[str, Any]:
        return {
            "states": list(self.states), "tag": self.tag, "origin": self.origin,
            "ci_job_id": self.ci_job_id, "user_data": self.user_data,
            "created_after": self.created_after, "created_before": self.created_before,
        }  # fmt: skip


def job_query(read: Reader) -> JobQuery:
    """The jobs filter (its problems left in ``read``, for the caller's :meth:`Reader.done`)."""
    return JobQuery(
        states=read.states(s.value for s in JobState),
        tag=read.text("tag", 32),
        origin=read.choice("origin", ["api", "queue"]),
        ci_job_id=read.text("ci_job_id", 64),
        user_data=read.text("user_data", 1024, whole=True),
        created_after=read.time("created_after"),
        created_before=read.time("created_before"),
    )


def filter_body(allowed: frozenset[str], what: str) -> dict[str, Any]:
    """A JSON body of filters (an empty body: no filter); 422 if it is anything but an object
    of the ``allowed`` names."""
    body = json_body()
    body = {} if body is None else body
    if not isinstance(body, dict) or set(body) - allowed:
        raise UnprocessableError(
            f"{what} is a JSON object of filters",
            [{"field": "body", "message": f"fields: {sorted(allowed)}"}],
        )
    return body
