"""Stored bodies (notifications, CI requests) pretty-printed for a person, line by line,
with the lines of the elements a violation names marked — what the console shows.

XML is parsed as the receiver parses it (no DTD, no entities, no network, bounded); a body
that does not parse is shown as it is (decoded, bad bytes replaced). A violation's path
(``/Response/JobsDetail/State``, or with positions ``…/JobsDetail[2]/…``) marks the element's
lines; in a JSON body (CI's JSON notifications map onto the same paths) the lines of the
member named by the path's last step.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from lxml import etree

#: the most lines shown of one body (the body cap is 1 MiB; the rest is cut)
MAX_LINES = 4000


@dataclass(frozen=True)
class Line:
    number: int
    text: str
    marked: bool = False


def pretty_lines(body: bytes, content_type: str, paths: Iterable[str] = ()) -> list[Line]:
    """``body`` pretty-printed as numbered lines, those of the elements at ``paths`` marked."""
    wanted = [p for p in paths if p and p != "/"]
    text = body.decode("utf-8", errors="replace")
    if "json" in content_type.lower():
        return _json_lines(text, wanted)
    if "xml" in content_type.lower() or text.lstrip().startswith("<"):
        return _xml_lines(body, wanted) or _plain(text)
    return _plain(text)


def pretty_json(value: Any) -> list[Line]:
    """A stored JSON value (a CI request as sent) as numbered lines."""
    return _plain(json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False))


def _plain(text: str, marked: frozenset[int] = frozenset()) -> list[Line]:
    lines = text.splitlines()[:MAX_LINES] or [""]
    return [Line(n, line, n in marked) for n, line in enumerate(lines, start=1)]


_PARSER = etree.XMLParser(
    resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
    remove_blank_text=True,
)  # fmt: skip


def _xml_lines(body: bytes, paths: list[str]) -> list[Line] | None:
    try:
        root = etree.fromstring(body, _PARSER)
        pretty = etree.tostring(root, pretty_print=True, encoding="unicode")
        tree = etree.fromstring(pretty.encode(), _PARSER).getroottree()
    except (etree.XMLSyntaxError, ValueError):
        return None
    marked: set[int] = set()
    for path in paths:
        for element in _find(tree, path):
            first = _line(element, 0)
            last = max(_line(e, first) for e in element.iter())
            # a parent's closing tag is on the line after its last descendant's
            last += 1 if len(element) else 0
            marked.update(range(first, last + 1))
    return _plain(pretty, frozenset(marked))


def _line(element: etree._Element, default: int) -> int:
    # lxml-stubs types ``sourceline`` oddly; lxml gives an int (or None)
    line = getattr(element, "sourceline", None)
    return int(line) if isinstance(line, int) else default


_STEP = re.compile(r"^[A-Za-z_][\w.-]*(\[\d+\])?$")


def _find(tree: etree._ElementTree, path: str) -> list[etree._Element]:
    """The elements at an absolute path of plain steps (anything else finds nothing)."""
    steps = path.strip("/").split("/")
    if not all(_STEP.match(s) for s in steps):
        return []
    found = tree.xpath("/" + "/".join(steps))
    return [e for e in found if isinstance(e, etree._Element)] if isinstance(found, list) else []


def _json_lines(text: str, paths: list[str]) -> list[Line]:
    try:
        pretty = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return _plain(text)
    names = {re.sub(r"\[\d+\]$", "", p.rstrip("/").rsplit("/", 1)[-1]) for p in paths}
    keys = {f'"{name}":' for name in names if name}
    marked = frozenset(
        n for n, line in enumerate(pretty.splitlines(), start=1)
        if any(line.lstrip().startswith(k) for k in keys)
    )  # fmt: skip
    return _plain(pretty, marked)
