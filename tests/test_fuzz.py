"""Property-based tests of the notification parser and the callback endpoint (hypothesis).

* the parser, fed arbitrary bytes or mutated valid documents under every accepted content
  type, only ever returns a Notification or raises one of our two 400 errors;
* the same for arbitrary JSON values;
* the endpoint never answers 5xx, whatever the body and content type;
* whitespace between elements changes nothing, and the JSON wire form of every valid XML
  notification in the corpus gives the same JobReports.

Bounded so the whole module stays well under 30 s; examples are small (a few KB), the
megabyte-sized bodies are in test_hostile_inputs.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import itertools
import json
import os
import re
from collections.abc import Iterator, Set
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from hypothesis import example, given, settings
from hypothesis import strategies as st
from lxml import etree
from prometheus_client import CollectorRegistry

from app import build_services, create_app, store
from app.config import Settings
from app.errors import InvalidNotificationError, MalformedNotificationError
from app.migrations import upgrade
from app.models import Notification
from app.notifications import CONTENT_TYPES, json_to_element, load_json, parse_notification
from app.schemas import SchemaSet
from tests.conftest import (
    API_KEY,
    CALLBACK_KEYS,
    CORPUS,
    QUEUE_SECRET,
    SAMPLE_JOB_ID,
    make_job,
    queue_path,
)
from tests.hostile import xml_to_wire_json

#: examples per property; CI runs the default, ``CIRELAY_FUZZ_SCALE=20`` fuzzes 20 times longer
SCALE = max(1, int(os.environ.get("CIRELAY_FUZZ_SCALE", "1")))
VALID_DIR = CORPUS / "notification/valid"
INVALID_DIR = CORPUS / "notification/invalid"
VALID_XML = sorted(VALID_DIR.glob("*.xml"))
SEEDS_XML = [p.read_bytes() for p in VALID_XML] + [
    p.read_bytes() for p in sorted(INVALID_DIR.glob("*.xml"))[:8]
]
SEEDS_JSON = [p.read_bytes() for p in sorted(VALID_DIR.glob("*.json"))] + [
    p.read_bytes() for p in sorted(INVALID_DIR.glob("*.json"))
]
ACCEPTED = sorted(CONTENT_TYPES)
EXPECTED_ERRORS = (MalformedNotificationError, InvalidNotificationError)

#: what a hostile sender would splice into a document
SNIPPETS = [
    b'<!DOCTYPE Response [<!ENTITY e "x">]>',
    b'<!DOCTYPE Response SYSTEM "http://127.0.0.1:9/x.dtd">',
    b'<!ENTITY % p SYSTEM "file:///etc/passwd">%p;',
    b"&",
    b"&e;",
    b"&amp;",
    b"&#0;",
    b"&#x1F600;",
    b"]]>",
    b"<![CDATA[",
    b"<?xml version='1.0'?>",
    b"<?pi x?>",
    b"<!--",
    b"-->",
    b"<a>",
    b"</a>",
    b"<a/>",
    b'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="file:///etc/passwd"/>',
    b' xmlns="urn:x"',
    b' a="1"',
    b"<JobsDetail/>",
    b"<JobsDetail><State>Success</State></JobsDetail>",
    b"<CreationTime>2024-02-30T00:00:00+0800</CreationTime>",
    b"\x00",
    b"\x01",
    b"\xff",
    b"\xc0\xbc",
    b"\xed\xa0\x80",
    b"\xef\xbb\xbf",
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b",",
    b":",
    b'"a":',
    b'"JobsDetail":',
    b'"JobsDetail": [[]]',
    b'"EventName": "TaskFinish",',
    b"null",
    b"NaN",
    b"-Infinity",
    b"1e999",
    b"9" * 50,
    b'"\\u0000"',
    b'"\\ud800"',
    b"\\",
    b"\r\n",
    b"\t",
]


# --- strategies -----------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed document with one to five mutations: bit flips, truncation, deletion,
    duplication, insertion of a hostile snippet or of random bytes, deep nesting."""
    body = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(["flip", "truncate", "delete", "duplicate", "insert", "nest"]))
        at = draw(st.integers(0, len(body)))
        if kind == "flip" and body:
            index = min(at, len(body) - 1)
            body[index] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del body[at:]
        elif kind == "delete":
            del body[at : at + draw(st.integers(1, 64))]
        elif kind == "duplicate":
            body[at:at] = body[at : at + draw(st.integers(1, 256))]
        elif kind == "insert":
            body[at:at] = draw(st.sampled_from(SNIPPETS) | st.binary(min_size=1, max_size=16))
        elif kind == "nest":
            depth = draw(st.integers(1, 400))
            opening, closing = draw(
                st.sampled_from([(b"<a>", b"</a>"), (b'{"a":', b"}"), (b"[", b"]")])
            )
            body[at:at] = opening * depth + closing * draw(st.integers(0, depth))
    return bytes(body)


bodies = st.one_of(
    st.binary(max_size=2048),
    mutated(SEEDS_XML),
    mutated(SEEDS_JSON),
    st.sampled_from(SEEDS_XML + SEEDS_JSON),
)

#: element names of the schema, so generated JSON sometimes looks like a notification
NAMES = [
    "EventName",
    "JobsDetail",
    "JobId",
    "State",
    "Tag",
    "Code",
    "Message",
    "CreationTime",
    "StartTime",
    "EndTime",
    "QueueId",
    "Input",
    "Operation",
    "Output",
    "MediaResult",
    "OutputFile",
    "ObjectName",
    "Md5Info",
    "Workflow",
    "Response",
]
json_keys = st.sampled_from(NAMES) | st.text(max_size=8)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.text(st.characters(codec=None, exclude_categories=()), max_size=8)
    | st.sampled_from(["TaskFinish", "Success", "VoiceSeparate", "-", SAMPLE_JOB_ID])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(json_keys, children, max_size=5)
    ),
    max_leaves=40,
)

CONTENT_TYPE_HEADERS = [
    *ACCEPTED,
    "Application/XML; charset=utf-8",
    "text/xml; charset=utf-16",
    "application/json; charset=latin-1",
    "text/plain",
    "application/octet-stream",
    "application/x-www-form-urlencoded",
    "",
    "application/xml, application/json",
    ";;;",
    "application/xml\x7f",
]


# --- (a) the parser on bytes ----------------------------------------------------------------


def _outcome(body: bytes, content_type: str, schemas: SchemaSet) -> Notification | None:
    """The parser's answer; None for one of our two 400 errors. Anything else propagates."""
    try:
        return parse_notification(body, content_type, schemas)
    except EXPECTED_ERRORS:
        return None


@settings(max_examples=300 * SCALE, deadline=None)
@given(body=bodies, content_type=st.sampled_from(ACCEPTED))
@example(body=b"", content_type="application/xml")
@example(body=b"\xef\xbb\xbf", content_type="application/json")
@example(body=b"<Response>" + b"<a>" * 300, content_type="text/xml")
def test_parser_only_returns_a_notification_or_raises_a_400(
    schemas: SchemaSet, body: bytes, content_type: str
) -> None:
    result = _outcome(body, content_type, schemas)
    if result is not None:
        assert isinstance(result, Notification)
        assert result.reports
        assert result.body == body


# --- (b) the parser on JSON values ----------------------------------------------------------


@settings(max_examples=300 * SCALE, deadline=None)
@given(value=json_values)
@example(value={"JobsDetail": [[{}]]})
@example(value={"": 1})
@example(value={"a": 10**4000})
@example(value={"a": float("nan")})
def test_json_values_only_give_a_notification_or_a_400(schemas: SchemaSet, value: Any) -> None:
    body = json.dumps(value).encode()
    with contextlib.suppress(MalformedNotificationError):
        json_to_element(load_json(body, 32))
    result = _outcome(body, "application/json", schemas)
    if result is not None:
        assert isinstance(value, dict)
    with contextlib.suppress(MalformedNotificationError):
        json_to_element(value)  # the mapping alone, also for values json.loads cannot make


# --- (c) the endpoint -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FlaskClient, str]]:
    """An app on its own SQLite database for the whole module: hypothesis runs many examples
    in one test call, so a function-scoped database would be shared by all of them anyway.
    Every example stands on its own: any answer but 5xx is right, whatever came before."""
    directory: Path = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{directory / 'fuzz.db'}"
    engine = store.create_engine(url)
    upgrade(engine)
    settings_ = Settings(
        database_url=url,
        public_url="http://cirelay.test",
        api_keys=(API_KEY,),
        callback_keys=CALLBACK_KEYS,
        queue_callback_secrets=(QUEUE_SECRET,),
    )
    services = build_services(settings_, registry=CollectorRegistry(), engine=engine)
    app = create_app(services=services)
    app.config["TESTING"] = True
    path = make_job(engine, "job_fuzz", services.clock(), ci_id=SAMPLE_JOB_ID)
    yield app.test_client(), path
    engine.dispose()


@settings(max_examples=200 * SCALE, deadline=None)
@given(
    body=bodies,
    content_type=st.sampled_from(CONTENT_TYPE_HEADERS),
    to_queue=st.booleans(),
    chunked=st.booleans(),
)
def test_endpoint_never_answers_5xx(
    fuzz_client: tuple[FlaskClient, str],
    body: bytes,
    content_type: str,
    to_queue: bool,
    chunked: bool,
) -> None:
    client, job_path = fuzz_client
    path = queue_path() if to_queue else job_path
    headers = {"Content-Type": content_type}
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
        response = client.post(
            path,
            input_stream=io.BytesIO(body),
            headers=headers,
            environ_overrides={"wsgi.input_terminated": True},
        )
    else:
        response = client.post(path, data=body, headers=headers)

    assert response.status_code in (200, 400, 415), response.get_data()[:2000]
    assert response.is_json
    answer = response.get_json()
    if response.status_code == 200:
        assert answer["results"]
    else:
        assert answer["error"] in (
            "malformed_notification",
            "invalid_notification",
            "unsupported_media_type",
            "wrong_endpoint",  # a valid queue notification about the job with a URL of its own
        )


# --- (d) whitespace, and the JSON wire form -------------------------------------------------

_TAG = re.compile(rb"<[^>]*>")


def _gaps(document: bytes) -> list[int]:
    """Offsets between two tags where whitespace is insignificant: not inside an element
    that has no children (``<a></a>``), where it would become the element's text."""
    tags = list(_TAG.finditer(document))
    gaps = []
    for before, after in itertools.pairwise(tags):
        if document[before.end() : after.start()].strip():
            continue  # text content
        start = before.group()
        opening = not start.startswith((b"</", b"<?", b"<!")) and not start.endswith(b"/>")
        if opening and after.group().startswith(b"</"):
            continue
        gaps.append(before.end())
    return gaps


@st.composite
def reindented(draw: st.DrawFn) -> tuple[Path, bytes]:
    """A valid corpus document, first compacted (no whitespace between elements) or not,
    then with whitespace inserted at some of the places where it is insignificant."""
    path = draw(st.sampled_from(VALID_XML))
    document = path.read_bytes()
    if draw(st.booleans()):
        document = b"".join(line.strip() for line in document.splitlines())
    gaps = _gaps(document)
    chosen = draw(st.sets(st.sampled_from(gaps), max_size=12)) if gaps else set()
    whitespace = st.text(alphabet=" \t\r\n", min_size=1, max_size=6)
    for at in sorted(chosen, reverse=True):
        document = document[:at] + draw(whitespace).encode() + document[at:]
    return path, document


@settings(max_examples=100 * SCALE, deadline=None)
@given(case=reindented())
def test_whitespace_between_elements_changes_nothing(
    schemas: SchemaSet, case: tuple[Path, bytes]
) -> None:
    path, document = case
    original = parse_notification(path.read_bytes(), "application/xml", schemas)
    changed = parse_notification(document, "application/xml", schemas)
    assert changed.reports == original.reports  # digest included


def _without_digest(notification: Notification) -> list[Any]:
    return [dataclasses.replace(r, digest="") for r in notification.reports]


@pytest.mark.parametrize("path", VALID_XML, ids=[p.name for p in VALID_XML])
def test_json_wire_form_of_every_valid_xml_notification_gives_the_same_reports(
    schemas: SchemaSet, path: Path
) -> None:
    from_xml = parse_notification(path.read_bytes(), "application/xml", schemas)
    root = etree.fromstring(path.read_bytes(), etree.XMLParser(remove_blank_text=True))
    wire = json.dumps(xml_to_wire_json(root)).encode()

    from_json = parse_notification(wire, "application/json", schemas)

    assert from_json.event_name == from_xml.event_name
    assert _without_digest(from_json) == _without_digest(from_xml)


@settings(max_examples=50 * SCALE, deadline=None)
@given(path=st.sampled_from(VALID_XML), as_list=st.booleans(), indent=st.sampled_from([None, 0, 2]))
def test_json_wire_form_with_jobsdetail_as_array_or_object_is_accepted(
    schemas: SchemaSet, path: Path, as_list: bool, indent: int | None
) -> None:
    root = etree.fromstring(path.read_bytes(), etree.XMLParser(remove_blank_text=True))
    wire = xml_to_wire_json(root)
    details = wire["JobsDetail"]
    if as_list and not isinstance(details, list):
        wire["JobsDetail"] = [details]
    from_json = parse_notification(
        json.dumps(wire, indent=indent).encode(), "application/json", schemas
    )
    from_xml = parse_notification(path.read_bytes(), "application/xml", schemas)
    assert _without_digest(from_json) == _without_digest(from_xml)


# --- times that pass the XSD pattern --------------------------------------------------------

#: the pattern of CITime in schemas/ci-types.xsd
CI_TIME = (
    r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9][+\-](0[0-9]|1[0-4])[0-5][0-9]"
)


@settings(max_examples=200 * SCALE, deadline=None)
@given(
    when=st.from_regex(CI_TIME, fullmatch=True),
    field=st.sampled_from(["CreationTime", "StartTime", "EndTime"]),
)
@example(when="2024-02-30T00:00:00+0800", field="CreationTime")
def test_any_time_the_schema_allows_gives_a_notification_or_a_400(
    schemas: SchemaSet, when: str, field: str
) -> None:
    document = (VALID_DIR / "success-alphabetical.xml").read_text()
    document = re.sub(rf"<{field}>[^<]*</{field}>", f"<{field}>{when}</{field}>", document)
    _outcome(document.encode(), "application/xml", schemas)


# --- (e) the /v1 API: query strings and bodies ----------------------------------------------

#: values a hostile client puts in a query string: other scripts' digits, 64-bit edges, times
#: whose UTC is outside the calendar, and arbitrary text
QUERY_VALUES = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from(["²", "٣", "１", "0", "9223372036854775807", "9223372036854775808", "-0"]),  # noqa: RUF001
    st.builds(
        "{:04d}-{:02d}-{:02d}T{:02d}:00:00{}".format,
        st.sampled_from([1, 2, 1970, 9999]),
        st.integers(1, 12),
        st.integers(1, 31),
        st.integers(0, 23),
        st.sampled_from(["", "Z", "+14:00", "-14:00", "+23:59", "-23:59"]),
    ),
)
QUERY_NAMES = ["after", "limit", "type", "state", "tag", "cursor", "before",
               "created_after", "created_before", "bucket", "region"]  # fmt: skip
GET_ROUTES = [
    "/v1/events",
    "/v1/jobs",
    "/v1/jobs/{job}",
    "/v1/subscriptions",
    "/v1/subscriptions/{sub}",
    "/v1/subscriptions/{sub}/deliveries",
]
BODY_ROUTES = [
    ("POST", "/v1/jobs"),
    ("POST", "/v1/subscriptions"),
    ("PATCH", "/v1/subscriptions/{sub}"),
    ("POST", "/v1/subscriptions/{sub}/rotate-secret"),
    ("POST", "/v1/subscriptions/{sub}/replay"),
]
#: 5xx a valid job may get here, where no CI is configured: CI's fault, not the input's
CI_ANSWERS = {"ci_unavailable", "ci_not_configured", "ci_timeout", "ci_error", "unavailable"}


@pytest.fixture(scope="module")
def api_client(
    fuzz_client: tuple[FlaskClient, str],
) -> tuple[FlaskClient, dict[str, str], str]:
    client, _ = fuzz_client
    auth = {"Authorization": f"Bearer {API_KEY}"}
    created = client.post(
        "/v1/subscriptions", json={"url": "https://93.184.215.14/hook"}, headers=auth
    )
    assert created.status_code == 201, created.get_data()
    return client, auth, str(created.get_json()["id"])


def _assert_not_5xx(response: Any, allowed: Set[str] = frozenset()) -> None:
    if response.status_code >= 500:
        document = response.get_json(silent=True) or {}
        assert document.get("error") in allowed, (response.status_code, response.get_data()[:500])


@settings(max_examples=300 * SCALE, deadline=None)
@given(
    route=st.sampled_from(GET_ROUTES),
    query=st.lists(st.tuples(st.sampled_from(QUERY_NAMES), QUERY_VALUES), max_size=4),
    # a header value cannot hold a line break (the client refuses to send one)
    last_event_id=st.none() | QUERY_VALUES.filter(lambda v: not {"\r", "\n"} & set(v)),
)
@example(route="/v1/events", query=[("after", "²")], last_event_id=None)
@example(route="/v1/events", query=[("after", str(2**64))], last_event_id=None)
@example(route="/v1/jobs", query=[("created_after", "0001-01-01T00:00:00+14:00")],
         last_event_id=None)  # fmt: skip
def test_api_query_strings_never_answer_5xx(
    api_client: tuple[FlaskClient, dict[str, str], str],
    route: str,
    query: list[tuple[str, str]],
    last_event_id: str | None,
) -> None:
    client, auth, sub = api_client
    headers = dict(auth)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id.encode("utf-8").decode("latin-1")
    response = client.get(
        route.format(job=SAMPLE_JOB_ID, sub=sub), query_string=query, headers=headers
    )
    _assert_not_5xx(response)
    assert response.is_json


api_bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "url": st.text(max_size=40) | st.just("https://93.184.215.14/x"),
            "event_types": st.lists(st.text(max_size=20), max_size=3) | json_values,
            "since": QUERY_VALUES | json_values,
            "event_id": st.text(max_size=10) | json_values,
            "grace_seconds": st.integers() | json_values,
            "input": json_values,
            "voice_separate": json_values,
            "output": json_values,
            "template_id": json_values,
        },
    ).map(lambda v: json.dumps(v).encode()),
    st.integers(1, 3000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    bodies,
)


@settings(max_examples=300 * SCALE, deadline=None)
@given(
    route=st.sampled_from(BODY_ROUTES),
    body=api_bodies,
    content_type=st.sampled_from(["application/json", "application/xml", "text/plain"]),
)
@example(route=("POST", "/v1/jobs"), body=b"[" * 100_000, content_type="application/json")
@example(  # was 500: a JSON value that is not an object
    route=("POST", "/v1/subscriptions/{sub}/rotate-secret"), body=b"true",
    content_type="application/json",
)  # fmt: skip
@example(
    route=("POST", "/v1/subscriptions/{sub}/replay"),
    body=b'{"since": "0001-01-01T00:00:00+14:00"}',
    content_type="application/json",
)
def test_api_bodies_never_answer_5xx(
    api_client: tuple[FlaskClient, dict[str, str], str],
    route: tuple[str, str],
    body: bytes,
    content_type: str,
) -> None:
    client, auth, sub = api_client
    method, path = route
    response = client.open(
        path.format(sub=sub), method=method, data=body, content_type=content_type, headers=auth
    )
    _assert_not_5xx(response, CI_ANSWERS if path == "/v1/jobs" else set())
    assert response.is_json
