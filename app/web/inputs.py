"""What a client puts in a ``/v1`` request, read within the same caps as a notification.

* Numbers in query strings: ASCII digits only, at most a signed 64-bit integer.
  ``str.isdigit()`` also accepts ``²`` (which ``int()`` refuses) and other scripts' digits
  (which it reads), and a longer number overflows the database's integers: both answered 500.
* JSON bodies: at most ``CIRELAY_MAX_BODY_BYTES`` (Flask's ``MAX_CONTENT_LENGTH``: 413), at
  most ``CIRELAY_MAX_DEPTH`` levels and :data:`MAX_JSON_VALUES` values
  (:func:`app.notifications.json_shape_problem`), else 400. A body nested thousands deep is
  refused by the parser's recursion guard before it can build anything.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import request

from app.errors import BadRequestError
from app.notifications import json_count_problem, json_shape_problem
from app.web import services

#: the largest value of a signed 64-bit integer (SQL ``BIGINT``), the largest id or cursor
MAX_INT64 = (1 << 63) - 1
#: the route converter of a row id in a path (``/<{ROW_ID}:ident>``): a larger number is no
#: row (404), not an integer the database cannot hold (500)
ROW_ID = f"int(max={MAX_INT64})"
#: values (objects, arrays, scalars) in one JSON body: a job has about twenty, a
#: subscription at most sixty
MAX_JSON_VALUES = 1000


def ascii_int(text: str, minimum: int = 0, maximum: int = MAX_INT64) -> int | None:
    """``text`` as an integer from ``minimum`` to ``maximum``, or None when it is anything
    else: ASCII digits only (no sign, no space, no other script's digits)."""
    if not text.isascii() or not text.isdigit() or len(text) > len(str(MAX_INT64)):
        return None
    value = int(text)
    return value if minimum <= value <= maximum else None


def json_body() -> Any:
    """The request's JSON value, or None when the request does not say JSON or the body is
    not JSON (as Flask's ``get_json(silent=True)``, so each route keeps its own answer to a
    missing body). A body deeper or larger than the caps is a 400."""
    if not request.is_json:
        return None
    max_depth = services().settings.max_depth
    data = request.get_data(cache=True)  # at most MAX_CONTENT_LENGTH: 413 above it
    problem = json_count_problem(data, MAX_JSON_VALUES)
    if problem:
        raise BadRequestError(problem)
    try:
        value = json.loads(data)
    except RecursionError:
        raise BadRequestError(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError:  # not JSON, or not UTF-8/16/32
        return None
    problem = json_shape_problem(value, max_depth, MAX_JSON_VALUES)
    if problem:
        raise BadRequestError(problem)
    return value


def query_timestamp(name: str, details: list[dict[str, str]]) -> datetime | None:
    """The query parameter ``name`` as an aware UTC time (None when absent); a bad one is
    added to ``details``."""
    raw = request.args.get(name)
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        # the store compares in UTC, and 0001-01-01T00:00+14:00 has none (year 0)
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        details.append({"field": name, "reason": "an ISO 8601 timestamp, year 1 to 9999 in UTC"})
        return None


#: the longest page a list answers
MAX_PAGE = 200


@dataclass(frozen=True)
class PageQuery:
    """What every list (``/v1/jobs``, ``/v1/workflow-executions``) is asked: states,
    ``created_after``/``created_before``, ``limit`` and the ``cursor`` of the next page."""

    states: list[str]
    created_after: datetime | None
    created_before: datetime | None
    limit: int
    cursor: str | None


def page_query(known_states: Collection[str]) -> PageQuery:
    """The request's list parameters: ``state`` (repeat or comma-separate; each one of
    ``known_states``), the two ISO 8601 times, ``limit`` (1 to :data:`MAX_PAGE`, default 50)
    and ``cursor``; every bad one listed in one 400."""
    states = [s for raw in request.args.getlist("state") for s in raw.split(",") if s]
    details = [{"field": "state", "reason": f"unknown state {s!r}"} for s in states
               if s not in known_states]  # fmt: skip
    after = query_timestamp("created_after", details)
    before = query_timestamp("created_before", details)
    limit = ascii_int(request.args.get("limit", "50"), 1, MAX_PAGE)
    if limit is None:
        details.append({"field": "limit", "reason": f"an integer from 1 to {MAX_PAGE}"})
    if details or limit is None:
        raise BadRequestError("invalid query parameters", details)
    return PageQuery(states, after, before, limit, request.args.get("cursor") or None)
