"""CI documents in and out: built documents validate against their XSD, parsed ones are
checked and safe, and a polled job reads exactly like a notified one."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from lxml import etree
from qcloud_cos.cos_comm import format_xml

from app.ci.errors import CIDocumentError
from app.ci.wire import (
    CIErrorBody,
    build_create_request,
    build_create_response,
    build_describe_response,
    build_error,
    build_list_response,
    parse_create_response,
    parse_describe_response,
    parse_error,
    parse_list_response,
    parse_request,
)
from app.notifications import element_to_dict, parse_notification, parse_xml
from app.schemas import SchemaSet
from tests.ci.test_rules import valid_request

CORPUS = Path(__file__).parent.parent / "corpus"


def corpus(document: str, kind: str) -> list[Path]:
    return sorted((CORPUS / document / kind).glob("*.xml"))


def detail(path: Path, index: int = 0) -> dict[str, Any]:
    """A ``JobsDetail`` of a corpus document in dict form."""
    root = parse_xml(path.read_bytes(), 32)
    view = element_to_dict(root.findall("JobsDetail")[index])
    assert isinstance(view, dict)
    return view


SUBMITTED = CORPUS / "create_response/valid/submitted-dash-times.xml"
FINISHED = CORPUS / "describe_response/valid/finished-with-nonexist-jobids.xml"


def without_digest(report: Any) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(report).items() if k != "digest"}


# --- the request --------------------------------------------------------------------------


def test_built_request_validates_against_the_request_xsd(schemas: SchemaSet) -> None:
    body = build_create_request(valid_request(), schemas=schemas)
    assert schemas.validate("create_request", etree.fromstring(body)) == []


def test_built_request_is_utf8_with_a_declaration(schemas: SchemaSet) -> None:
    request = valid_request()
    request["Operation"]["UserData"] = "order 88123 ~ ok"
    request["Input"]["Object"] = "歌曲/track 017.wav"
    body = build_create_request(request, schemas=schemas)
    assert body.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    assert "歌曲/track 017.wav".encode() in body


def test_built_request_follows_the_spec_element_order(schemas: SchemaSet) -> None:
    request = valid_request()
    shuffled = dict(reversed(list(request.items())))
    shuffled["Operation"] = dict(reversed(list(request["Operation"].items())))
    root = etree.fromstring(build_create_request(shuffled, schemas=schemas))
    assert [c.tag for c in root] == [
        "Tag",
        "Input",
        "Operation",
        "CallBackFormat",
        "CallBackType",
        "CallBack",
    ]
    assert [c.tag for c in root.find("Operation")] == [
        "VoiceSeparate",
        "Output",
        "UserData",
        "JobLevel",
    ]
    assert [c.tag for c in root.find("Operation/Output")] == [
        "Region",
        "Bucket",
        "Object",
        "AuObject",
    ]


def test_request_round_trips_through_parse(schemas: SchemaSet) -> None:
    request = valid_request()
    request["Operation"] = [request["Operation"], {**request["Operation"], "JobLevel": "2"}]
    request["QueueId"] = "p0f5e2a7b9c1d44e6a8b3c5d7e9f01234"
    assert parse_request(build_create_request(request, schemas=schemas), schemas=schemas) == request


def test_integers_are_written_as_text(schemas: SchemaSet) -> None:
    request = valid_request()
    request["Operation"]["VoiceSeparate"]["AudioConfig"]["Bitrate"] = 192
    parsed = parse_request(build_create_request(request, schemas=schemas), schemas=schemas)
    assert parsed["Operation"]["VoiceSeparate"]["AudioConfig"]["Bitrate"] == "192"


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"Priority": "1"}, "/Request"),
        ({"QueueId": "q1"}, "/Request/QueueId"),
        ({"Tag": None}, "/Request"),
    ],
    ids=["unknown-element", "bad-queue-id", "missing-tag"],
)
def test_building_an_invalid_request_raises_with_the_xsd_violations(
    changes: dict[str, Any], path: str, schemas: SchemaSet
) -> None:
    with pytest.raises(CIDocumentError) as caught:
        build_create_request({**valid_request(), **changes}, schemas=schemas)
    assert caught.value.ci_code == "InvalidArgument"
    assert path in [d["path"] for d in caught.value.details]


@pytest.mark.parametrize(
    "value", [1.5, True, {"a"}, "bell\x07"], ids=["float", "bool", "set", "control-char"]
)
def test_building_refuses_values_xml_cannot_carry(value: Any, schemas: SchemaSet) -> None:
    with pytest.raises(CIDocumentError, match="UserData"):
        request = valid_request()
        request["Operation"]["UserData"] = value
        build_create_request(request, schemas=schemas)


def test_building_refuses_a_name_that_is_no_element_name(schemas: SchemaSet) -> None:
    with pytest.raises(CIDocumentError, match="not an XML element name"):
        build_create_request({**valid_request(), "a b": "x"}, schemas=schemas)


@pytest.mark.parametrize("path", corpus("create_request", "valid"), ids=lambda p: p.name)
def test_every_valid_corpus_request_parses(path: Path, schemas: SchemaSet) -> None:
    document = parse_request(path.read_bytes(), schemas=schemas)
    assert document["Tag"] == "VoiceSeparate" and document["Input"]["Object"]


@pytest.mark.parametrize("path", corpus("create_request", "invalid"), ids=lambda p: p.name)
def test_every_invalid_corpus_request_is_invalidargument(path: Path, schemas: SchemaSet) -> None:
    with pytest.raises(CIDocumentError) as caught:
        parse_request(path.read_bytes(), schemas=schemas)
    assert caught.value.ci_code == "InvalidArgument"
    assert caught.value.details


def test_the_sdks_request_body_parses(schemas: SchemaSet) -> None:
    """The Python SDK writes the body with xmltodict, XML declaration included."""
    body = format_xml(data=valid_request(), root="Request")
    assert body.startswith(b'<?xml version="1.0" encoding="utf-8"?>')
    assert parse_request(body, schemas=schemas) == valid_request()


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>
<Request><Tag>&b;</Tag></Request>"""
XXE = b"""<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><Request><Tag>&x;</Tag></Request>"""


@pytest.mark.parametrize(
    ("body", "ci_code"),
    [
        pytest.param(b"", "MissingContent", id="empty"),
        pytest.param(b"  \n", "MissingContent", id="blank"),
        pytest.param(b"<Request><Tag>", "InvalidContent", id="not-well-formed"),
        pytest.param(b"{}", "InvalidContent", id="json"),
        pytest.param(BILLION_LAUGHS, "InvalidContent", id="entity-expansion"),
        pytest.param(XXE, "InvalidContent", id="external-entity"),
        pytest.param("<Request>é</Request>".encode("latin-1"), "InvalidContent", id="not-utf8"),
        pytest.param(b"<a>" * 40 + b"</a>" * 40, "InvalidContent", id="too-deep"),
        pytest.param(b"<Request>" + b" " * (1 << 20) + b"</Request>", "InvalidContent", id="big"),
        pytest.param(b"<Response/>", "InvalidArgument", id="wrong-root"),
    ],
)
def test_unsafe_or_malformed_bodies_are_refused(
    body: bytes, ci_code: str, schemas: SchemaSet
) -> None:
    with pytest.raises(CIDocumentError) as caught:
        parse_request(body, schemas=schemas)
    assert caught.value.ci_code == ci_code


# --- the answers --------------------------------------------------------------------------


def test_create_response_round_trips(schemas: SchemaSet) -> None:
    body = build_create_response([detail(SUBMITTED)], schemas=schemas)
    assert schemas.validate("create_response", etree.fromstring(body)) == []
    [report] = parse_create_response(body, schemas=schemas)
    assert report.ci_job_id == "j6d67510d4c4f15952ca66bc47f5b1ea3"
    assert report.state == "Submitted" and report.started_at is None
    assert report.output["au_object"] == "split/${jobid}/acapella.${ext}"


def test_create_response_keeps_one_report_per_operation(schemas: SchemaSet) -> None:
    path = CORPUS / "create_response/valid/multiple-operations.xml"
    reports = parse_create_response(path.read_bytes(), schemas=schemas)
    assert len(reports) == len(etree.fromstring(path.read_bytes()).findall("JobsDetail")) > 1


def test_a_polled_job_reads_like_a_notified_one(schemas: SchemaSet) -> None:
    notification = (CORPUS / "notification/valid/success-alphabetical.xml").read_bytes()
    [notified] = parse_notification(notification, "application/xml", schemas).reports
    root = parse_xml(notification, 32)
    polled_body = build_describe_response(
        [element_to_dict(root.find("JobsDetail"))], schemas=schemas
    )
    [polled], missing = parse_describe_response(polled_body, schemas=schemas)
    assert missing == []
    assert without_digest(polled) == without_digest(notified)
    assert polled.result_files and polled.media_info


def test_describe_response_lists_missing_ids_one_element_each(schemas: SchemaSet) -> None:
    missing = ["j00000000000000000000000000000001", "j00000000000000000000000000000002"]
    body = build_describe_response([detail(FINISHED)], missing, schemas=schemas)
    assert body.count(b"<NonExistJobIds>") == 2
    reports, not_found = parse_describe_response(body, schemas=schemas)
    assert [r.state for r in reports] == ["Success"] and not_found == missing


def test_describe_response_reads_a_comma_separated_missing_list(schemas: SchemaSet) -> None:
    reports, missing = parse_describe_response(FINISHED.read_bytes(), schemas=schemas)
    assert len(reports) == 1
    assert missing == ["j00000000000000000000000000000000", "j11111111111111111111111111111111"]


def test_describe_response_of_only_missing_ids(schemas: SchemaSet) -> None:
    path = CORPUS / "describe_response/valid/nonexist-repeated-only.xml"
    reports, missing = parse_describe_response(path.read_bytes(), schemas=schemas)
    assert reports == [] and len(missing) == 2


def test_list_response_with_next_token(schemas: SchemaSet) -> None:
    body = build_list_response([detail(SUBMITTED), detail(FINISHED)], "tok-2", schemas=schemas)
    assert schemas.validate("describe_response", etree.fromstring(body)) == []
    reports, token = parse_list_response(body, schemas=schemas)
    assert [r.state for r in reports] == ["Submitted", "Success"] and token == "tok-2"


@pytest.mark.parametrize("token", [None, ""], ids=["absent", "empty"])
def test_list_response_without_a_next_page(token: str | None, schemas: SchemaSet) -> None:
    body = build_list_response([], token, schemas=schemas)
    assert parse_list_response(body, schemas=schemas) == ([], None)


def test_corpus_list_response_token(schemas: SchemaSet) -> None:
    path = CORPUS / "describe_response/valid/list-with-nexttoken.xml"
    _, token = parse_list_response(path.read_bytes(), schemas=schemas)
    assert token == "eyJjcmVhdGVkIjoiMjAyNS0wMi0wMVQwNzo1OTowMCswODAwIn0="


def test_building_an_invalid_answer_raises(schemas: SchemaSet) -> None:
    broken = {**detail(SUBMITTED), "State": "Done"}
    with pytest.raises(CIDocumentError) as caught:
        build_create_response([broken], schemas=schemas)
    assert caught.value.details[0]["path"].endswith("/State")


def test_an_empty_create_response_is_invalid(schemas: SchemaSet) -> None:
    with pytest.raises(CIDocumentError):
        build_create_response([], schemas=schemas)


@pytest.mark.parametrize("path", corpus("describe_response", "invalid"), ids=lambda p: p.name)
def test_invalid_describe_answers_are_refused(path: Path, schemas: SchemaSet) -> None:
    with pytest.raises(CIDocumentError):
        parse_describe_response(path.read_bytes(), schemas=schemas)


# --- the error body -----------------------------------------------------------------------


def test_error_round_trips(schemas: SchemaSet) -> None:
    body = build_error("InvalidArgument", "Output is empty", "req-1", "trace-1", schemas=schemas)
    assert body.startswith(b"<?xml")
    assert parse_error(body, schemas=schemas) == CIErrorBody(
        "InvalidArgument", "Output is empty", "req-1", "trace-1"
    )


def test_error_with_a_cos_resource_and_no_trace(schemas: SchemaSet) -> None:
    body = build_error("NoSuchBucket", "", "req-2", resource="b.cos.x/jobs", schemas=schemas)
    parsed = parse_error(body, schemas=schemas)
    assert (parsed.message, parsed.trace_id, parsed.resource) == ("", None, "b.cos.x/jobs")


@pytest.mark.parametrize("path", corpus("error", "valid"), ids=lambda p: p.name)
def test_every_valid_corpus_error_parses(path: Path, schemas: SchemaSet) -> None:
    assert parse_error(path.read_bytes(), schemas=schemas).code


@pytest.mark.parametrize("path", corpus("error", "invalid"), ids=lambda p: p.name)
def test_every_invalid_corpus_error_is_refused(path: Path, schemas: SchemaSet) -> None:
    with pytest.raises(CIDocumentError):
        parse_error(path.read_bytes(), schemas=schemas)


def test_an_html_error_page_is_not_an_error_body(schemas: SchemaSet) -> None:
    with pytest.raises(CIDocumentError) as caught:
        parse_error(b"<html><body>502 Bad Gateway</body></html>", schemas=schemas)
    assert caught.value.ci_code == "InvalidArgument"


def test_building_an_error_without_a_code_raises(schemas: SchemaSet) -> None:
    with pytest.raises(CIDocumentError):
        build_error("", "m", "req", schemas=schemas)
