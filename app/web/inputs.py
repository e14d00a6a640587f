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


#: the longest page a list answers
MAX_PAGE = 200
