"""CI's XML documents in and out: the request cirelay sends, the answers CI gives.

Both ends use this module: cirelay's CI client builds requests and parses answers; the CI
emulator parses requests and builds answers. Every document built is checked against its XSD
before it leaves (a builder never emits what CI, or our own parser, would refuse), and every
document parsed is checked before anything reads it.

Dict form: a document as a dict keyed like its XML, leaves as strings, a repeated element as a
list (``{"Tag": "VoiceSeparate", "Input": {"Object": ...}, "Operation": {...}}``); ``None``
values are left out, ``""`` is an empty element.

Untrusted bytes are parsed the way notifications are (:func:`app.notifications.parse_xml`: no
DTD, no entities, no network, a depth cap), after a size cap. A ``JobsDetail`` becomes a
:class:`~app.models.JobReport` through :func:`app.notifications.report_from_detail`, so a job
learnt by polling looks exactly like one learnt from a notification.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lxml import etree

from app.ci.errors import CIDocumentError
from app.errors import MalformedNotificationError
from app.models import JobReport
from app.notifications import element_to_dict, parse_xml, report_from_detail
from app.schemas import SchemaSet

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_DEPTH",
    "CIErrorBody",
    "build_create_request",
    "build_create_response",
    "build_describe_response",
    "build_error",
    "build_list_response",
    "parse_create_response",
    "parse_describe_response",
    "parse_error",
    "parse_list_response",
    "parse_request",
]

MAX_BODY_BYTES = 1 << 20
MAX_DEPTH = 32
#: Elements per document, checked before any schema work, as for a notification (a job's
#: ``JobsDetail`` is about 100 elements; a request about 25, with up to 6 operations; CI
#: answers a describe of up to 10 jobs and a list of up to 100, both ``describe_response``).
MAX_ELEMENTS: dict[str, int] = {
    "create_request": 500,
    "create_response": 2_000,
    "describe_response": 30_000,
    "error": 100,
}

#: Element order of the request, spec §2.1-§2.6 (the XSD accepts any order; CI's docs and
#: SDKs send this one).
REQUEST_ORDER: dict[str, tuple[str, ...]] = {
    "Request": (
        "Tag",
        "Input",
        "Operation",
        "QueueId",
        "QueueType",
        "CallBackFormat",
        "CallBackType",
        "CallBack",
        "CallBackMqConfig",
        "CallBackKafkaConfig",
    ),
    "Input": ("Object",),
    "Operation": ("TemplateId", "VoiceSeparate", "Output", "UserData", "JobLevel"),
    "VoiceSeparate": ("AudioMode", "AudioConfig"),
    "AudioConfig": ("Codec", "Samplerate", "Bitrate", "Channels"),
    "Output": ("Region", "Bucket", "Object", "AuObject", "BassObject", "DrumObject"),
    "CallBackMqConfig": ("MqRegion", "MqMode", "MqName"),
    "CallBackKafkaConfig": ("Region", "InstanceId", "Topic"),
}
#: Element order of a JobsDetail in CI's answers, spec §3.3.
RESPONSE_ORDER: dict[str, tuple[str, ...]] = {
    "JobsDetail": (
        "Code",
        "Message",
        "JobId",
        "State",
        "CreationTime",
        "StartTime",
        "EndTime",
        "QueueId",
        "Tag",
        "Input",
        "Operation",
        "Workflow",
    ),
    "Input": ("BucketId", "Object", "Region"),
    "Operation": (
        "TemplateId",
        "TemplateName",
        "VoiceSeparate",
        "Output",
        "MediaInfo",
        "MediaResult",
        "UserData",
        "JobLevel",
    ),
    "VoiceSeparate": REQUEST_ORDER["VoiceSeparate"],
    "AudioConfig": REQUEST_ORDER["AudioConfig"],
    "Output": REQUEST_ORDER["Output"],
}


@dataclass(frozen=True)
class CIErrorBody:
    """CI's ``<Error>`` body (spec §6.1). ``resource`` only comes from COS hosts."""

    code: str
    message: str
    request_id: str
    trace_id: str | None = None
    resource: str | None = None


@functools.cache
def default_schemas() -> SchemaSet:
    """The schemas in ``schemas/``, loaded once per process when a caller brings none."""
    return SchemaSet.load()


# --- building -----------------------------------------------------------------------------


def build_create_request(request: Mapping[str, Any], *, schemas: SchemaSet | None = None) -> bytes:
    """The ``POST /jobs`` body for ``request`` (dict form), in the spec's element order, UTF-8
    with an XML declaration. Raises :class:`CIDocumentError` when it violates the XSD."""
    root = etree.Element("Request")
    _fill(root, request, REQUEST_ORDER)
    return _serialize(root, "create_request", schemas)


def build_create_response(
    details: Sequence[Mapping[str, Any]], *, schemas: SchemaSet | None = None
) -> bytes:
    """CreateMediaJobs' answer: one ``JobsDetail`` per operation (spec §3)."""
    root = etree.Element("Response")
    _append_details(root, details)
    return _serialize(root, "create_response", schemas)


def build_describe_response(
    details: Sequence[Mapping[str, Any]],
    non_exist_job_ids: Sequence[str] = (),
    *,
    schemas: SchemaSet | None = None,
) -> bytes:
    """``GET /jobs/<ids>``'s answer (spec §4.1). Missing ids come one ``NonExistJobIds``
    element each (the Go SDK's ``[]string``; the wire shape is unconfirmed, §9 item 5, and
    :func:`parse_describe_response` reads both shapes); the element is left out when all
    ids exist."""
    root = etree.Element("Response")
    _append_details(root, details)
    for job_id in non_exist_job_ids:
        etree.SubElement(root, "NonExistJobIds").text = job_id
    return _serialize(root, "describe_response", schemas)


def build_list_response(
    details: Sequence[Mapping[str, Any]],
    next_token: str | None = None,
    *,
    schemas: SchemaSet | None = None,
) -> bytes:
    """``GET /jobs``'s answer (spec §4.2): the page, then ``NextToken`` when there is one."""
    root = etree.Element("Response")
    _append_details(root, details)
    if next_token is not None:
        etree.SubElement(root, "NextToken").text = next_token
    return _serialize(root, "describe_response", schemas)


def build_error(
    code: str,
    message: str,
    request_id: str,
    trace_id: str | None = None,
    *,
    resource: str | None = None,
    schemas: SchemaSet | None = None,
) -> bytes:
    """CI's ``<Error>`` body (spec §6.1); ``resource`` only for COS-style answers."""
    fields = {
        "Code": code,
        "Message": message,
        "Resource": resource,
        "RequestId": request_id,
        "TraceId": trace_id,
    }
    root = etree.Element("Error")
    _fill(root, fields, {})
    return _serialize(root, "error", schemas)


def _append_details(root: etree._Element, details: Sequence[Mapping[str, Any]]) -> None:
    for detail in details:
        _fill(etree.SubElement(root, "JobsDetail"), detail, RESPONSE_ORDER)


def _fill(
    parent: etree._Element, values: Mapping[str, Any], order: dict[str, tuple[str, ...]]
) -> None:
    """Append ``values`` under ``parent``: known names in ``order``, then the rest as given
    (the XSD then refuses any that do not belong)."""
    known = order.get(str(parent.tag), ())
    names = [n for n in known if n in values] + [n for n in values if n not in known]
    for name in names:
        value = values[name]
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            try:
                child = etree.SubElement(parent, name)
            except ValueError as exc:
                raise CIDocumentError(f"{name!r} is not an XML element name") from exc
            if isinstance(item, Mapping):
                _fill(child, item, order)
            else:
                _set_text(child, item)


def _set_text(element: etree._Element, value: Any) -> None:
    name = element.tag
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise CIDocumentError(f"{name}: a {type(value).__name__} has no XML form")
    try:
        element.text = str(value)
    except ValueError as exc:  # lxml refuses control characters and the like
        raise CIDocumentError(f"{name}: {exc}") from exc


def _serialize(root: etree._Element, document: str, schemas: SchemaSet | None) -> bytes:
    _require_valid(root, document, schemas)
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


# --- parsing ------------------------------------------------------------------------------


def parse_request(
    body: bytes,
    *,
    schemas: SchemaSet | None = None,
    max_bytes: int = MAX_BODY_BYTES,
    max_depth: int = MAX_DEPTH,
) -> dict[str, Any]:
    """A received ``POST /jobs`` body in dict form, or :class:`CIDocumentError` (whose
    ``ci_code`` is what CI answers). The business rules are :mod:`app.ci.rules`' job."""
    root = _parse(body, "create_request", schemas, max_bytes, max_depth)
    view = element_to_dict(root)
    return view if isinstance(view, dict) else {}


def parse_create_response(
    body: bytes, *, schemas: SchemaSet | None = None, max_bytes: int = MAX_BODY_BYTES
) -> list[JobReport]:
    """The jobs CreateMediaJobs created, one report per ``JobsDetail``."""
    root = _parse(body, "create_response", schemas, max_bytes, MAX_DEPTH)
    return [report_from_detail(d) for d in root.iterfind("JobsDetail")]


def parse_describe_response(
    body: bytes, *, schemas: SchemaSet | None = None, max_bytes: int = MAX_BODY_BYTES
) -> tuple[list[JobReport], list[str]]:
    """``(reports, non_existent_ids)`` of a ``GET /jobs/<ids>`` answer. ``NonExistJobIds``
    may be one comma-separated element or one element per id (spec §4.1): both are read."""
    root = _parse(body, "describe_response", schemas, max_bytes, MAX_DEPTH)
    missing = [
        job_id.strip()
        for element in root.iterfind("NonExistJobIds")
        for job_id in (element.text or "").split(",")
        if job_id.strip()
    ]
    return [report_from_detail(d) for d in root.iterfind("JobsDetail")], missing


def parse_list_response(
    body: bytes, *, schemas: SchemaSet | None = None, max_bytes: int = MAX_BODY_BYTES
) -> tuple[list[JobReport], str | None]:
    """``(reports, next_token)`` of a ``GET /jobs`` answer; an empty token is ``None``."""
    root = _parse(body, "describe_response", schemas, max_bytes, MAX_DEPTH)
    token = root.findtext("NextToken")
    return [report_from_detail(d) for d in root.iterfind("JobsDetail")], token or None


def parse_error(
    body: bytes, *, schemas: SchemaSet | None = None, max_bytes: int = MAX_BODY_BYTES
) -> CIErrorBody:
    """CI's ``<Error>`` body, or :class:`CIDocumentError` when the body is not one."""
    root = _parse(body, "error", schemas, max_bytes, MAX_DEPTH)
    return CIErrorBody(
        code=root.findtext("Code") or "",
        message=root.findtext("Message") or "",
        request_id=root.findtext("RequestId") or "",
        trace_id=root.findtext("TraceId"),
        resource=root.findtext("Resource"),
    )


def _parse(
    body: bytes, document: str, schemas: SchemaSet | None, max_bytes: int, max_depth: int
) -> etree._Element:
    """Size cap, then the notifications' safe parser, then the XSD."""
    if not body.strip():
        raise CIDocumentError("the body is empty", ci_code="MissingContent")
    if len(body) > max_bytes:
        raise CIDocumentError(f"the body exceeds {max_bytes} bytes", ci_code="InvalidContent")
    try:
        root = parse_xml(body, max_depth, MAX_ELEMENTS[document])
    except MalformedNotificationError as exc:
        raise CIDocumentError(exc.message, ci_code="InvalidContent") from exc
    _require_valid(root, document, schemas)
    return root


def _require_valid(root: etree._Element, document: str, schemas: SchemaSet | None) -> None:
    violations = (schemas or default_schemas()).validate(document, root)
    if violations:
        raise CIDocumentError(
            f"{document} violates its schema ({len(violations)} problem(s)): "
            f"{violations[0].path}: {violations[0].reason}",
            details=[v.as_dict() for v in violations],
        )
