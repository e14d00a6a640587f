"""Parse and validate a CI notification (XML or JSON) into a :class:`Notification`.

The order of checks is the order of cost, cheapest first, and every check runs before the
next one can be fooled by what the previous one let through:

1. the body size (the web layer reads at most ``max_body_bytes`` and answers 413 above it);
2. the body is UTF-8;
3. XML: parsed by libxml2 with entities unresolved, no network and no DTD loading; a document
   that carries a DOCTYPE at all is refused, so no entity can be declared (XXE, billion laughs,
   quadratic blow-up); JSON: parsed with duplicate keys refused and mapped onto the same
   element tree the XML would have (§5.4 of the spec: no ``Response`` wrapper, strings, arrays
   for repeated elements);
4. the nesting depth, then the number of elements and attributes (the same caps for every
   XML and JSON document cirelay parses, each with its own element cap);
5. the XSDs, one set for both wire formats (spec §10: a queue's URL receives every job of
   the queue and every workflow instance): a ``WorkflowExecution`` is checked by
   ``workflow-notification.xsd``; a TaskFinish whose jobs are all VoiceSeparate by the typed
   ``notification.xsd`` alone (the hot path: one validation, as before); any other TaskFinish
   by the envelope ``task-notification.xsd``, then each VoiceSeparate JobsDetail in it by the
   typed schema too.

Failures of 2 to 4 raise :class:`MalformedNotificationError`, failures of 5
:class:`InvalidNotificationError` with every violation (path + reason) in ``details``.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
import threading
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from lxml import etree

from app.errors import InvalidNotificationError, MalformedNotificationError
from app.models import VOICE_SEPARATE, JobReport, JobState, Notification
from app.schemas import MAX_VIOLATIONS, SchemaSet, Violation

XML_CONTENT_TYPES = frozenset({"application/xml", "text/xml"})
JSON_CONTENT_TYPES = frozenset({"application/json"})
CONTENT_TYPES = XML_CONTENT_TYPES | JSON_CONTENT_TYPES

CI_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"

#: A real notification has about a hundred elements per job and no attributes. Validators
#: spend time on every element and every violation, so a document must be small in
#: *elements*, not only in bytes, before any schema work: a small body packed with elements or
#: attributes would otherwise keep them busy far longer than any sender waits. (libxml2 logs
#: one error per bad element; xmlschema's explanation is bounded on its own, see
#: :mod:`app.schemas`.)
MAX_ELEMENTS = 1000
#: attributes in a whole document: no CI document has any (the XSDs declare none; only
#: ``xsi:*`` hints are allowed, and never followed)
MAX_ATTRIBUTES = 16
#: values in a JSON document, walked before it is mapped onto elements
MAX_JSON_VALUES = 4 * MAX_ELEMENTS
#: violations listed in an answer and in quarantine; the first ones say what is wrong
MAX_REPORTED_VIOLATIONS = MAX_VIOLATIONS

_PARSER_OPTIONS: dict[str, Any] = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "dtd_validation": False,
    "huge_tree": False,
    "remove_blank_text": True,
    "remove_comments": True,
    "remove_pis": True,
}
_local = threading.local()
#: tags that are no element: the XML declaration, comments, processing instructions, CDATA
_MARKUP_SLACK = 64
_DECLARED_ENCODING = re.compile(
    rb"""(?:\xef\xbb\xbf)?<\?xml[^>]*?\bencoding\s*=\s*["']([A-Za-z0-9._:-]+)["']"""
)


def _parser() -> etree.XMLParser:
    """One parser per thread: lxml parsers serialise callers on a lock when shared."""
    parser: etree.XMLParser | None = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = etree.XMLParser(**_PARSER_OPTIONS)
    return parser


def media_type(content_type: str | None) -> str:
    """``"Application/XML; charset=utf-8"`` -> ``"application/xml"``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def parse_notification(
    body: bytes, content_type: str, schemas: SchemaSet, *, max_depth: int = 32
) -> Notification:
    """Turn a request body into a validated :class:`Notification`, or raise a 400 error."""
    kind = media_type(content_type)
    if kind in JSON_CONTENT_TYPES:
        root = json_to_element(load_json(body, max_depth))
        require_size(root, MAX_ELEMENTS)
    else:
        root = parse_xml(body, max_depth, MAX_ELEMENTS)
    wire_format = "json" if kind in JSON_CONTENT_TYPES else "xml"
    execution = root.find("WorkflowExecution") if root.tag == "Response" else None
    if execution is not None:  # a workflow instance ended (WorkflowFinish)
        from app import workflows  # it reads elements with this module's helpers

        _require_valid(schemas.validate("workflow_notification", root))
        return Notification(
            event_name=root.findtext("EventName"),
            reports=(),
            wire_format=wire_format,
            body=body,
            content_type=kind,
            workflow=workflows.workflow_report(execution),
        )
    details = root.findall("JobsDetail")
    if root.tag != "Response" or all(d.findtext("Tag") == VOICE_SEPARATE for d in details):
        _require_valid(schemas.validate("notification", root))
    else:
        _require_valid(schemas.validate("task_notification", root))
        for position, detail in enumerate(details, start=1):
            if detail.findtext("Tag") == VOICE_SEPARATE:
                _require_valid(_typed_violations(schemas, detail, position, len(details)))
    return Notification(
        event_name=root.findtext("EventName"),
        reports=tuple(report_from_detail(d) for d in details),
        wire_format=wire_format,
        body=body,
        content_type=kind,
    )


def _require_valid(violations: list[Violation]) -> None:
    violations = violations[:MAX_REPORTED_VIOLATIONS]
    if violations:
        raise InvalidNotificationError(
            f"notification violates the schema ({len(violations)} problem(s))",
            [v.as_dict() for v in violations],
        )


def _typed_violations(
    schemas: SchemaSet, detail: etree._Element, position: int, count: int
) -> list[Violation]:
    """The typed VoiceSeparate schema's verdict on one JobsDetail of a mixed notification:
    the detail alone in a ``Response`` of its own, its paths given back their position."""
    alone = etree.Element("Response")
    alone.append(copy.deepcopy(detail))
    where = f"/Response/JobsDetail[{position}]" if count > 1 else "/Response/JobsDetail"
    return [
        Violation(path=v.path.replace("/Response/JobsDetail", where, 1), reason=v.reason)
        for v in schemas.validate("notification", alone)
    ]


def parse_xml(body: bytes, max_depth: int, max_elements: int = MAX_ELEMENTS) -> etree._Element:
    """Parse untrusted XML: UTF-8 only, no DTD, bounded depth, at most ``max_elements``
    elements and :data:`MAX_ATTRIBUTES` attributes."""
    _require_utf8(body)
    if body.count(b"<") > 2 * max_elements + _MARKUP_SLACK:
        # each element is one tag or two, and a raw "<" is markup only (text escapes it): a
        # body with more is over the element cap, known without building its tree
        raise MalformedNotificationError(
            f"more than {max_elements} elements; this document has at most {max_elements}"
        )
    declared = _DECLARED_ENCODING.match(body)
    if declared and declared.group(1).lower() not in (b"utf-8", b"utf8", b"us-ascii"):
        # libxml2 would decode by the declaration: the bytes we checked are not what it reads
        raise MalformedNotificationError(
            f"encoding {declared.group(1).decode('ascii', 'replace')!r} is not accepted; send UTF-8"
        )
    try:
        tree = etree.fromstring(body, _parser()).getroottree()
    except etree.XMLSyntaxError as exc:
        raise MalformedNotificationError(f"not well-formed XML: {exc.msg}") from exc
    docinfo: Any = tree.docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise MalformedNotificationError("DTDs and entity declarations are not accepted")
    root = tree.getroot()
    _require_depth(root, max_depth)
    require_size(root, max_elements)
    return root


def load_json(body: bytes, max_depth: int) -> Any:
    """Decode untrusted JSON: UTF-8 only, no duplicate keys, bounded depth."""
    text = _require_utf8(body).removeprefix("\ufeff")  # RFC 8259 §8.1 lets us ignore a BOM
    problem = json_count_problem(body, MAX_JSON_VALUES)
    if problem:
        raise MalformedNotificationError(problem)
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except RecursionError as exc:
        raise MalformedNotificationError(f"JSON nested deeper than {max_depth} levels") from exc
    except ValueError as exc:
        raise MalformedNotificationError(f"not valid JSON: {exc}") from exc
    problem = json_shape_problem(value, max_depth, MAX_JSON_VALUES)
    if problem:
        raise MalformedNotificationError(problem)
    return value


def json_to_element(document: Any) -> etree._Element:
    """Map a JSON notification onto the XML element tree it stands for (§5.4).

    The object becomes the children of a ``<Response>`` root; each key an element; a list the
    element repeated; strings and numbers its text; ``null`` is omitted, as CI omits empty
    elements. The result is checked by the same XSD as an XML notification.
    """
    if not isinstance(document, dict):
        raise MalformedNotificationError("a JSON notification must be an object")
    root = etree.Element("Response")
    _fill(root, document, [MAX_ELEMENTS])
    return root


def _fill(parent: etree._Element, obj: dict[str, Any], budget: list[int]) -> None:
    for key, value in obj.items():
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            budget[0] -= 1
            if budget[0] < 0:  # stop building before a bomb costs memory
                raise MalformedNotificationError(
                    f"more than {MAX_ELEMENTS} elements; a notification has fewer"
                )
            try:
                child = etree.SubElement(parent, key)
            except ValueError as exc:
                raise MalformedNotificationError(f"{key!r} is not a valid element name") from exc
            if isinstance(item, dict):
                _fill(child, item, budget)
            elif isinstance(item, list):
                raise MalformedNotificationError(f"{key!r}: nested arrays have no XML form")
            else:
                try:
                    child.text = _scalar_text(item)
                except ValueError as exc:
                    raise MalformedNotificationError(f"{key!r}: {exc}") from exc


def _scalar_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def json_count_problem(data: bytes, max_values: int) -> str | None:
    """Before parsing: a document with ``max_values`` commas or more has more values than
    that (or commas in its strings, which no notification or API body has by the thousand),
    and decoding a megabyte of them costs tens of milliseconds. Counting is C-fast."""
    if data.count(b",") >= max_values:
        return f"more than {max_values} JSON values"
    return None


def json_shape_problem(value: Any, max_depth: int, max_values: int) -> str | None:
    """Why a decoded JSON ``value`` is too deep (a scalar in the top-level object is at level
    2) or holds more than ``max_values`` values, or None. It stops at the first cap it
    reaches, so its cost is bounded by the caps, not by the document."""
    left = max_values - 1
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > max_depth:
            return f"JSON nested deeper than {max_depth} levels"
        children = item.values() if isinstance(item, dict) else item
        if isinstance(item, dict | list):
            left -= len(children)
            if left < 0:
                return f"more than {max_values} JSON values"
            stack.extend((child, depth + 1) for child in children)
    return None


def _require_utf8(body: bytes) -> str:
    """The body as text: strict UTF-8, and no NUL (UTF-16/32 text without a BOM is valid
    UTF-8 byte for byte, NULs and all; neither XML nor JSON text may contain NUL)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedNotificationError(f"body is not UTF-8 (byte {exc.start})") from exc
    if "\x00" in text:
        raise MalformedNotificationError("body is not UTF-8 text (it contains NUL bytes)")
    return text


_COUNT_ELEMENTS = etree.XPath("count(//*)")
_COUNT_ATTRIBUTES = etree.XPath("count(//@*)")


def require_size(root: etree._Element, max_elements: int) -> None:
    """Bounded work for the validators: at most ``max_elements`` elements and
    :data:`MAX_ATTRIBUTES` attributes in the whole document (counted in C, by XPath)."""
    elements = int(cast(float, _COUNT_ELEMENTS(root)))
    if elements > max_elements:
        raise MalformedNotificationError(
            f"{elements} elements; this document has at most {max_elements}"
        )
    if cast(float, _COUNT_ATTRIBUTES(root)) > MAX_ATTRIBUTES:
        raise MalformedNotificationError(
            f"more than {MAX_ATTRIBUTES} attributes; CI's documents have none"
        )


def _require_depth(root: etree._Element, max_depth: int) -> None:
    if _deeper_than(max_depth)(root):
        raise MalformedNotificationError(f"XML nested deeper than {max_depth} levels")


@functools.lru_cache(maxsize=4)
def _deeper_than(max_depth: int) -> etree.XPath:
    """An XPath that is true when an element sits ``max_depth + 1`` levels deep: evaluated
    in C, level by level, instead of a Python call per element of the tree. (libxml2
    itself refuses documents deeper than 256 levels before we get here.)"""
    return etree.XPath("boolean(/" + "/".join(["*"] * (max_depth + 1)) + ")")


# --- from a valid JobsDetail element to a JobReport ---------------------------------------


def element_to_dict(element: etree._Element, *, without_empties: bool = False) -> Any:
    """A small, lossless-enough view of an element: text for leaves, dicts for containers,
    lists where a child name repeats.

    ``without_empties``: also leave out an element that occurs once and is empty or holds
    only empty elements (JSON omits the empty elements XML writes as ``<Message/>``); a
    repeated element keeps every occurrence, empty or not. This is the view a notification's
    digest is taken of (:func:`content_digest`)."""
    if len(element) == 0:
        return element.text or ""
    result: dict[str, Any] = {}
    empties = False  # whether an element seen once so far was empty
    for child in element:
        if len(child):
            value = element_to_dict(child, without_empties=without_empties)
        else:  # a leaf, most of them: no call
            value = child.text or ""
        tag = str(child.tag)
        existing = result.get(tag)
        if existing is None:
            result[tag] = value
            empties = empties or value == "" or value == {}
        elif isinstance(existing, list):  # values are text or dicts: a list is a repeat
            existing.append(value)
        else:
            result[tag] = [existing, value]
    if without_empties and empties:
        return {k: v for k, v in result.items() if v != "" and v != {}}
    return result


def as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    return value if isinstance(value, list) else [value]


def content_digest(view: Any) -> str:
    """sha256 of what a JobsDetail says, whatever its wire format and element order: its
    ``element_to_dict(..., without_empties=True)`` view as JSON with sorted keys. Equal
    digests are the same notification, recorded once. (Stored digests depend on this exact
    encoding: ``tests/test_notifications.py`` keeps the definition they were made with.)"""
    data = orjson.dumps(view, option=orjson.OPT_SORT_KEYS)  # the same bytes, from C...
    if not data.isascii() or b"\x7f" in data:  # ...unless json.dumps would escape some
        data = json.dumps(view, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(data).hexdigest()


def parse_ci_time(text: str | None) -> datetime | None:
    """CI's ``2024-03-05T09:41:07+0800``; ``-`` or empty before the job started.

    The XSD has already checked the exact shape, so the fast ISO parser is enough (and about
    twenty times quicker than ``strptime(CI_TIME_FORMAT)``)."""
    if not text or text == "-":
        return None
    return datetime.fromisoformat(text)


def _times(view: dict[str, Any]) -> dict[str, datetime | None]:
    """CreationTime, StartTime, EndTime; the XSD pattern admits 2024-02-30, this does not."""
    return {
        name: utc_time(view.get(name), f"/Response/JobsDetail/{name}")
        for name in ("CreationTime", "StartTime", "EndTime")
    }


def utc_time(text: str | None, path: str) -> datetime | None:
    """A CI time (or ``-``/empty: None) in UTC, the store's zone; a time the XSD's pattern
    admits but the calendar does not (2024-02-30) is a violation at ``path``."""
    try:
        moment = parse_ci_time(text)
        return moment.astimezone(UTC) if moment else None  # year 1 east of UTC: no UTC
    except (ValueError, OverflowError) as exc:
        raise InvalidNotificationError(
            "notification violates the schema (1 problem(s))",
            [{"path": path, "reason": f"not a calendar time: {exc}"}],
        ) from exc


def report_from_detail(detail: etree._Element) -> JobReport:
    """What a valid ``JobsDetail`` says about its job. Shared by notifications and by the CI
    client's answers, so a polled job and a notified job are recorded alike."""
    # the view without empties: every lookup below treats a missing key as empty
    view: dict[str, Any] = element_to_dict(detail, without_empties=True)
    times = _times(view)
    operation = view.get("Operation") or {}
    operation = operation if isinstance(operation, dict) else {}
    template = (
        {"id": operation["TemplateId"], "name": operation.get("TemplateName")}
        if operation.get("TemplateId")
        else None
    )
    return JobReport(
        ci_job_id=view["JobId"],
        state=JobState(view["State"]),
        tag=view.get("Tag", ""),
        code=view.get("Code", ""),
        message=view.get("Message", ""),
        queue_id=view.get("QueueId") or None,
        created_at=times["CreationTime"],
        started_at=times["StartTime"],
        ended_at=times["EndTime"],
        user_data=operation.get("UserData"),
        input=_input(view.get("Input")),
        output=_output(operation.get("Output")),
        result_files=_result_files(operation.get("MediaResult")),
        media_info=_media_summary(operation.get("MediaInfo")),
        # legacy bodies (2020-2021) carry Workflow inside Operation
        workflow=view.get("Workflow") or operation.get("Workflow") or None,
        template=template,
        digest=content_digest(view),
        operation={k: v for k, v in operation.items() if k not in _SHARED_OPERATION} or None,
    )


#: the Operation members every tag shares, recorded in columns of their own; the rest (the
#: tag's own container: VoiceSeparate, NoiseReduction, Transcode, ...) is kept as received
_SHARED_OPERATION = frozenset(
    {"Output", "MediaInfo", "MediaResult", "UserData", "TemplateId", "TemplateName",
     "JobLevel", "Workflow"}
)  # fmt: skip


def _input(node: Any) -> dict[str, Any]:
    node = node if isinstance(node, dict) else {}
    result: dict[str, Any] = {
        "bucket": node.get("BucketId") or node.get("Bucket"),
        "region": node.get("Region"),
        "object": node.get("Object"),
    }
    headers = as_list(node.get("CosHeaders"))
    if headers:
        result["cos_headers"] = {h.get("Key", ""): h.get("Value", "") for h in headers}
    return result


def _output(node: Any) -> dict[str, Any]:
    node = node if isinstance(node, dict) else {}
    names = {"Region": "region", "Bucket": "bucket", "Object": "object", "AuObject": "au_object"}
    return {ours: node[theirs] for theirs, ours in names.items() if node.get(theirs)}


def _result_files(node: Any) -> list[dict[str, Any]]:
    node = node if isinstance(node, dict) else {}
    files: list[dict[str, Any]] = []
    for out in as_list(node.get("OutputFile")):
        prefix = out.get("ObjectPrefix") or ""
        md5s = {m.get("ObjectName"): m.get("Md5") for m in as_list(out.get("Md5Info"))}
        for name in as_list(out.get("ObjectName")):
            files.append(
                {
                    "bucket": out.get("Bucket"),
                    "region": out.get("Region"),
                    "object": prefix + name,
                    "md5": md5s.get(name),
                }
            )
    return files


def _media_summary(node: Any) -> dict[str, Any]:
    node = node if isinstance(node, dict) else {}
    fmt = node.get("Format") or {}
    stream = node.get("Stream") or {}
    audio = as_list(stream.get("Audio") if isinstance(stream, dict) else None)
    if not fmt and not audio:
        return {}
    return {
        "format": fmt.get("FormatName"),
        "duration_seconds": _number(fmt.get("Duration")),
        "size_bytes": _number(fmt.get("Size")),
        "bitrate_kbps": _number(fmt.get("Bitrate")),
        "audio": [
            {
                "codec": a.get("CodecName"),
                "sample_rate": _number(a.get("SampleRate")),
                "channels": _number(a.get("Channel")),
                "duration_seconds": _number(a.get("Duration")),
                "bitrate_kbps": _number(a.get("Bitrate")),
            }
            for a in audio
            if isinstance(a, dict)
        ],
    }


def _number(text: Any) -> float | int | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() and "." not in text else value
