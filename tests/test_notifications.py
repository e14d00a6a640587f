"""Unit tests of app/notifications.py: content types, CI times, the JSON -> element mapping,
what a JobReport holds, and the depth cap at its boundaries."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from lxml import etree

from app.errors import InvalidNotificationError, MalformedNotificationError
from app.models import JobState
from app.notifications import (
    CONTENT_TYPES,
    content_digest,
    element_to_dict,
    json_to_element,
    load_json,
    media_type,
    parse_ci_time,
    parse_notification,
    parse_xml,
)
from app.schemas import SchemaSet
from tests.conftest import CORPUS, SUCCESS_XML
from tests.hostile import xml_to_wire_json

VALID = CORPUS / "notification/valid"


def parse_file(name: str, schemas: SchemaSet) -> Any:
    path = VALID / name
    content_type = "application/json" if path.suffix == ".json" else "application/xml"
    return parse_notification(path.read_bytes(), content_type, schemas)


def tree(element: etree._Element) -> bytes:
    return etree.tostring(element, method="c14n")


# --- media_type -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("application/xml", "application/xml"),
        ("Application/XML; charset=utf-8", "application/xml"),
        ("  text/xml  ;charset=UTF-8", "text/xml"),
        ("APPLICATION/JSON", "application/json"),
        ("application/json;", "application/json"),
        ("text/plain", "text/plain"),
        ("", ""),
        (None, ""),
        (";charset=utf-8", ""),
    ],
)
def test_media_type_is_the_lowercased_type_without_parameters(
    header: str | None, expected: str
) -> None:
    assert media_type(header) == expected


def test_accepted_content_types() -> None:
    assert frozenset({"application/xml", "text/xml", "application/json"}) == CONTENT_TYPES


# --- parse_ci_time --------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["-", "", None])
def test_unset_ci_time_is_none(text: str | None) -> None:
    assert parse_ci_time(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-05T09:41:07+0800", datetime(2024, 3, 5, 1, 41, 7, tzinfo=UTC)),
        ("2024-03-05T09:41:07-0530", datetime(2024, 3, 5, 15, 11, 7, tzinfo=UTC)),
        ("2024-03-05T09:41:07+0000", datetime(2024, 3, 5, 9, 41, 7, tzinfo=UTC)),
        ("2024-02-29T23:59:59+1400", datetime(2024, 2, 29, 9, 59, 59, tzinfo=UTC)),
    ],
)
def test_ci_time_offset_without_colon(text: str, expected: datetime) -> None:
    parsed = parse_ci_time(text)
    assert parsed == expected
    assert parsed is not None and parsed.utcoffset() is not None


def test_ci_time_keeps_the_offset_it_was_given() -> None:
    parsed = parse_ci_time("2024-03-05T09:41:07+0800")
    assert parsed is not None
    assert parsed.tzinfo == timezone(timedelta(hours=8))


# --- json_to_element / load_json ------------------------------------------------------------


def test_json_object_becomes_children_of_a_response_root_in_key_order() -> None:
    root = json_to_element({"b": "1", "a": {"c": "2"}})
    assert root.tag == "Response"
    assert [child.tag for child in root] == ["b", "a"]
    assert root.findtext("a/c") == "2"


def test_json_list_becomes_the_element_repeated() -> None:
    root = json_to_element({"ObjectName": ["x", "y", "z"]})
    assert [e.text for e in root.iterfind("ObjectName")] == ["x", "y", "z"]


def test_json_list_of_objects_becomes_repeated_containers() -> None:
    root = json_to_element({"Audio": [{"Index": "0"}, {"Index": "1"}]})
    assert [a.findtext("Index") for a in root.iterfind("Audio")] == ["0", "1"]


@pytest.mark.parametrize(
    "document",
    [{"Message": None}, {"Message": []}, {"Message": [None, None]}],
    ids=["null", "empty-list", "list-of-nulls"],
)
def test_json_null_and_empty_list_are_omitted(document: dict[str, Any]) -> None:
    root = json_to_element(document)
    assert len(root) == 0


def test_json_null_inside_a_list_is_skipped() -> None:
    root = json_to_element({"a": [None, "x", None]})
    assert [e.text for e in root] == ["x"]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1, "1"),
        (-7, "-7"),
        (1.5, "1.5"),
        (0.0, "0.0"),
        (True, "true"),
        (False, "false"),
        ("", None),
        ("text", "text"),
    ],
)
def test_json_scalars_become_text(value: Any, text: str | None) -> None:
    root = json_to_element({"a": value})
    assert root.findtext("a") == (text or "")
    assert root.find("a") is not None


def test_json_empty_object_is_an_empty_element() -> None:
    root = json_to_element({"a": {}})
    element = root.find("a")
    assert element is not None and len(element) == 0 and not element.text


@pytest.mark.parametrize(
    "document",
    [{"a": [[1]]}, {"a": [{"b": [["x"]]}]}, {"a": ["x", []]}],
    ids=["top", "nested-in-object", "empty-inner-list"],
)
def test_json_nested_arrays_are_rejected(document: dict[str, Any]) -> None:
    with pytest.raises(MalformedNotificationError, match="nested arrays"):
        json_to_element(document)


@pytest.mark.parametrize("document", [[], [{}], "x", 1, None, True])
def test_json_top_level_must_be_an_object(document: Any) -> None:
    with pytest.raises(MalformedNotificationError, match="object"):
        json_to_element(document)


@pytest.mark.parametrize("key", ["a b", "1x", "", "-a", "a:b", "<a>", "\x01", "\ud800"])
def test_json_key_that_is_no_element_name_is_rejected(key: str) -> None:
    with pytest.raises(MalformedNotificationError, match="element name"):
        json_to_element({key: "x"})


@pytest.mark.parametrize("text", ["\x00", "a\x01b", "\x1f", "\ud800", "\ufffe"])
def test_json_text_that_xml_cannot_hold_is_rejected(text: str) -> None:
    with pytest.raises(MalformedNotificationError):
        json_to_element({"a": text})


def test_json_integer_too_long_for_str_is_rejected() -> None:
    with pytest.raises(MalformedNotificationError):
        json_to_element({"a": 10**5000})


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": 1, "a": 2}',
        b'{"b": {"a": 1, "a": 1}}',
        b'{"a": [{"x": 1, "x": 1}]}',
    ],
)
def test_load_json_refuses_duplicate_keys(body: bytes) -> None:
    with pytest.raises(MalformedNotificationError, match="duplicate key"):
        load_json(body, 32)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_load_json_refuses_non_json_constants(constant: bytes) -> None:
    with pytest.raises(MalformedNotificationError, match="not valid JSON"):
        load_json(b'{"a": ' + constant + b"}", 32)


@pytest.mark.parametrize("body", [b"", b"{", b'{"a": 1,}', b"{'a': 1}", b'{"a": "\xff"}'], ids=repr)
def test_load_json_refuses_what_is_no_json(body: bytes) -> None:
    with pytest.raises(MalformedNotificationError):
        load_json(body, 32)


def test_jobsdetail_as_array_or_object_gives_the_same_tree(schemas: SchemaSet) -> None:
    document = json.loads((VALID / "jobsdetail-object.json").read_bytes())
    as_object = json_to_element(document)
    as_array = json_to_element({**document, "JobsDetail": [document["JobsDetail"]]})

    assert tree(as_object) == tree(as_array)
    one = parse_notification(json.dumps(document).encode(), "application/json", schemas)
    other = parse_notification(
        json.dumps({**document, "JobsDetail": [document["JobsDetail"]]}).encode(),
        "application/json",
        schemas,
    )
    assert one.reports == other.reports


def test_json_and_xml_of_the_same_notification_give_the_same_tree_and_reports(
    schemas: SchemaSet,
) -> None:
    xml_root = parse_xml(SUCCESS_XML.encode(), 32)
    wire = xml_to_wire_json(xml_root)
    json_root = json_to_element(load_json(json.dumps(wire).encode(), 32))

    # the same, once the empty elements the JSON leaves out are gone from the XML
    for element in list(xml_root.iter()):
        if len(element) == 0 and not element.text and element.getparent() is not None:
            element.getparent().remove(element)
    assert tree(json_root) == tree(xml_root)
    from_xml = parse_notification(SUCCESS_XML.encode(), "application/xml", schemas)
    from_json = parse_notification(json.dumps(wire).encode(), "application/json", schemas)
    assert from_json.wire_format == "json" and from_xml.wire_format == "xml"
    assert from_json.event_name == from_xml.event_name == "TaskFinish"


# --- parse_xml ------------------------------------------------------------------------------


def test_comments_and_processing_instructions_are_dropped() -> None:
    root = parse_xml(b"<?pi x?><Response><!-- c --><a>1<?pi y?></a></Response>", 32)
    assert tree(root) == b"<Response><a>1</a></Response>"


@pytest.mark.parametrize(
    "prolog",
    [
        b"<!DOCTYPE Response>",
        b'<!DOCTYPE Response [<!ENTITY e "x">]>',
        b'<!DOCTYPE Response SYSTEM "http://127.0.0.1:9/x.dtd">',
        b"<!DOCTYPE Response [<!ELEMENT Response ANY>]>",
    ],
)
def test_any_doctype_is_refused(prolog: bytes) -> None:
    with pytest.raises(MalformedNotificationError, match="DTD"):
        parse_xml(prolog + b"<Response/>", 32)


def test_predefined_entities_and_character_references_are_fine() -> None:
    root = parse_xml(b"<Response><a>&amp;&lt;&#x41;&#66;</a></Response>", 32)
    assert root.findtext("a") == "&<AB"


@pytest.mark.parametrize(
    "body",
    [b"\xff<Response/>", b"<Response>\xc0\xbc</Response>", b"<Response>\xed\xa0\x80</Response>"],
    ids=["ff", "overlong", "surrogate"],
)
def test_xml_that_is_not_utf8_is_refused(body: bytes) -> None:
    with pytest.raises(MalformedNotificationError, match="UTF-8"):
        parse_xml(body, 32)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"])
def test_xml_declared_in_another_encoding_is_refused_although_its_bytes_are_utf8(
    encoding: str,
) -> None:
    """Without a BOM, UTF-16/32 of ASCII text is valid UTF-8 (NUL is a UTF-8 character);
    the UTF-8 check alone lets it through and libxml2 then decodes it as declared."""
    body = f'<?xml version="1.0" encoding="{encoding.upper()}"?><Response/>'.encode(encoding)
    body.decode("utf-8")  # the premise
    with pytest.raises(MalformedNotificationError):
        parse_xml(body, 32)


def test_xml_declaring_latin1_is_read_as_utf8_or_refused(schemas: SchemaSet) -> None:
    """A UTF-8 body that declares ISO-8859-1: libxml2 honours the declaration, so "café"
    would be recorded as "cafÃ©". UTF-8 only means: refuse it, or read it as UTF-8."""
    text = SUCCESS_XML.replace("<Message/>", "<Message>café</Message>")
    body = ('<?xml version="1.0" encoding="ISO-8859-1"?>\n' + text).encode()
    try:
        notification = parse_notification(body, "application/xml", schemas)
    except MalformedNotificationError:
        return
    assert notification.reports[0].message == "café"


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le"])
def test_json_in_another_encoding_is_refused_although_its_bytes_are_utf8(encoding: str) -> None:
    """``json.loads`` of bytes detects UTF-16/32 by the NUL bytes and decodes them."""
    body = '{"EventName": "TaskFinish"}'.encode(encoding)
    body.decode("utf-8")  # the premise
    with pytest.raises(MalformedNotificationError, match="UTF-8"):
        load_json(body, 32)


# --- the depth cap --------------------------------------------------------------------------


def nested_xml(depth: int) -> bytes:
    """A chain of ``depth`` elements, ``Response`` the outermost."""
    return b"<Response>" + b"<a>" * (depth - 1) + b"</a>" * (depth - 1) + b"</Response>"


def nested_json(depth: int) -> bytes:
    """An object chain whose depth as ``load_json`` counts it (the top object is 1, a
    scalar is a level) is ``depth``; it maps onto ``nested_xml(depth)``."""
    return b'{"a":' * (depth - 2) + b'{"a":"x"}' + b"}" * (depth - 2)


@pytest.mark.parametrize("max_depth", [8, 32])
def test_xml_depth_cap_boundary(max_depth: int, schemas: SchemaSet) -> None:
    root = parse_xml(nested_xml(max_depth), max_depth)
    assert len(list(root.iter())) == max_depth
    # at the cap: past the depth check, stopped by the schema
    with pytest.raises(InvalidNotificationError):
        parse_notification(nested_xml(max_depth), "application/xml", schemas, max_depth=max_depth)
    with pytest.raises(MalformedNotificationError, match=f"deeper than {max_depth}"):
        parse_notification(
            nested_xml(max_depth + 1), "application/xml", schemas, max_depth=max_depth
        )


@pytest.mark.parametrize("max_depth", [8, 32])
def test_json_depth_cap_boundary(max_depth: int, schemas: SchemaSet) -> None:
    assert tree(json_to_element(load_json(nested_json(max_depth), max_depth))) == tree(
        parse_xml(nested_xml(max_depth).replace(b"<a></a>", b"<a>x</a>"), max_depth)
    )
    with pytest.raises(InvalidNotificationError):
        parse_notification(nested_json(max_depth), "application/json", schemas, max_depth=max_depth)
    with pytest.raises(MalformedNotificationError, match=f"deeper than {max_depth}"):
        parse_notification(
            nested_json(max_depth + 1), "application/json", schemas, max_depth=max_depth
        )


def test_json_array_counts_as_a_level() -> None:
    assert load_json(b'{"a": ["x"]}', 3) == {"a": ["x"]}
    with pytest.raises(MalformedNotificationError, match="deeper than 2"):
        load_json(b'{"a": ["x"]}', 2)


def test_json_deeper_than_the_interpreter_stack_is_malformed() -> None:
    with pytest.raises(MalformedNotificationError, match="deeper"):
        load_json(b"[" * 100_000 + b"]" * 100_000, 32)


def test_xml_deeper_than_libxml2_allows_is_malformed() -> None:
    with pytest.raises(MalformedNotificationError):
        parse_xml(nested_xml(20_000), 10**6)


# --- from JobsDetail to JobReport -----------------------------------------------------------


def test_report_of_the_success_sample(schemas: SchemaSet) -> None:
    notification = parse_file("success-alphabetical.xml", schemas)
    (report,) = notification.reports

    assert notification.event_name == "TaskFinish"
    assert report.ci_job_id == "j6d67510d4c4f15952ca66bc47f5b1ea3"
    assert report.state is JobState.SUCCESS
    assert (report.tag, report.code, report.message) == ("VoiceSeparate", "Success", "")
    assert report.queue_id == "p2dc301194961fa8e5ab09911ff9b55df"
    assert report.user_data == "client=karaoke-web;ticket=4471"
    assert report.input == {
        "bucket": "stemlab-1250000000",
        "region": "ap-shanghai",
        "object": "inbox/2024/11/ballad-04.flac",
    }
    assert report.output == {
        "region": "ap-shanghai",
        "bucket": "stemlab-1250000000",
        "object": "split/ballad-04/band.m4a",
        "au_object": "split/ballad-04/voice.m4a",
    }
    assert report.template is None and report.workflow is None
    assert report.created_at == datetime(2024, 11, 18, 13, 3, 44, tzinfo=UTC)
    assert report.started_at == datetime(2024, 11, 18, 13, 3, 46, tzinfo=UTC)
    assert report.ended_at == datetime(2024, 11, 18, 13, 5, 2, tzinfo=UTC)
    assert report.ci_duration_seconds == 78


def test_result_files_are_prefix_plus_name_with_their_md5(schemas: SchemaSet) -> None:
    (report,) = parse_file("success-alphabetical.xml", schemas).reports
    assert report.result_files == [
        {
            "bucket": "stemlab-1250000000",
            "region": "ap-shanghai",
            "object": "split/ballad-04/voice.m4a",
            "md5": "6ec1c16f968c9f8e67c1f38e642baca5",
        },
        {
            "bucket": "stemlab-1250000000",
            "region": "ap-shanghai",
            "object": "split/ballad-04/band.m4a",
            "md5": "4ba3a74d8cd52eaba03a56491e634def",
        },
    ]
    (template_report,) = parse_file("template-job.xml", schemas).reports
    assert template_report.result_files == [
        {
            "bucket": "choir-archive-1251000000",
            "region": "ap-beijing",
            "object": "separated/2023-06-30/vocals-only.aac",
            "md5": "821E4ABE197AC84E92BAB9B4C7900AB5",
        }
    ]


def test_result_file_without_a_matching_md5_has_none(schemas: SchemaSet) -> None:
    text = SUCCESS_XML.replace(
        "<ObjectName>split/ballad-04/band.m4a</ObjectName>\n          </Md5Info>",
        "<ObjectName>split/ballad-04/other.m4a</ObjectName>\n          </Md5Info>",
    )
    assert text != SUCCESS_XML
    (report,) = parse_notification(text.encode(), "application/xml", schemas).reports
    assert [f["md5"] for f in report.result_files] == ["6ec1c16f968c9f8e67c1f38e642baca5", None]


def test_single_result_file_in_json_is_not_split_into_characters(schemas: SchemaSet) -> None:
    (report,) = parse_file("jobsdetail-object.json", schemas).reports
    assert report.result_files == [
        {
            "bucket": "anime-ost-1309000000",
            "region": "ap-tokyo",
            "object": "ost/op-theme/karaoke.aac",
            "md5": "821e4abe197ac84e92bab9b4c7900ab5",
        }
    ]


def test_media_summary(schemas: SchemaSet) -> None:
    (report,) = parse_file("success-alphabetical.xml", schemas).reports
    audio = {
        "codec": "aac",
        "sample_rate": 44100,
        "channels": 2,
        "duration_seconds": 187.733,
        "bitrate_kbps": 128.0,
    }
    assert report.media_info == {
        "format": "mov,mp4,m4a,3gp,3g2,mj2",
        "duration_seconds": 187.733,
        "size_bytes": 6010368,
        "bitrate_kbps": 256.112,
        "audio": [audio, audio],
    }


def test_media_summary_with_a_single_audio_stream_and_missing_fields(schemas: SchemaSet) -> None:
    (report,) = parse_file("no-eventname-video-stream.json", schemas).reports
    assert report.media_info == {
        "format": "mov,mp4,m4a,3gp,3g2,mj2",
        "duration_seconds": 93.4,
        "size_bytes": 22103322,
        "bitrate_kbps": None,
        "audio": [
            {
                "codec": "aac",
                "sample_rate": 44100,
                "channels": 2,
                "duration_seconds": None,
                "bitrate_kbps": None,
            }
        ],
    }


def test_no_media_info_is_an_empty_summary(schemas: SchemaSet) -> None:
    (report,) = parse_file("failed-no-result.json", schemas).reports
    assert report.media_info == {}
    assert report.result_files == []


def test_cos_headers_and_workflow(schemas: SchemaSet) -> None:
    (report,) = parse_file("workflow-triggered.xml", schemas).reports
    assert report.input["cos_headers"] == {
        "Content-Type": "audio/mpeg",
        "EventName": "cos:ObjectCreated:Put",
        "Size": "3906721",
        "x-cos-meta-uploader": "user-58213",
        "x-cos-request-id": "NjZiNWI2NWZfOTg0ZjJhMDlfMjE3Y18xMjM0",
    }
    assert report.workflow == {
        "Name": "VoiceSeparate_1723184400123",
        "RunId": "i9b7eb1f2bae01dc9970b753db2264276",
        "WorkflowId": "w0c1e6f18e306f348047808ca2d210148",
        "WorkflowName": "ugc-instrumental",
    }


def test_cos_headers_from_a_json_array(schemas: SchemaSet) -> None:
    (report,) = parse_file("jobsdetail-array-workflow.json", schemas).reports
    assert report.input["cos_headers"]["Size"] == "58213377"
    assert len(report.input["cos_headers"]) == 4
    assert report.workflow is not None and report.workflow["WorkflowName"] == "covers-split"
    assert report.template == {"id": "t12ada7746b65c096899973753d49b1a4", "name": "split-mp3-320"}


def test_template_with_and_without_a_name(schemas: SchemaSet) -> None:
    (named,) = parse_file("template-job.xml", schemas).reports
    assert named.template == {"id": "t191cc2041b6bb64421b0ce7fa55c3b14", "name": "vocals-aac-44k"}
    (unnamed,) = parse_file("failed-no-result.json", schemas).reports
    assert unnamed.template == {"id": "tedc2475e8ea0b17d3735b821ecf09bcb", "name": None}


def test_empty_output_object_is_left_out(schemas: SchemaSet) -> None:
    (report,) = parse_file("template-job.xml", schemas).reports
    assert "object" not in report.output
    assert report.output["au_object"] == "separated/2023-06-30/vocals-only.aac"


def test_failed_job_not_started(schemas: SchemaSet) -> None:
    (report,) = parse_file("failed-no-result.json", schemas).reports
    assert report.state is JobState.FAILED
    assert (report.code, report.message) == ("1107", "TemplateNotFound")
    assert report.started_at is None
    assert report.ci_duration_seconds == 1
    assert report.user_data is None


def test_ci_duration_is_none_without_an_end(schemas: SchemaSet) -> None:
    text = SUCCESS_XML.replace(
        "<EndTime>2024-11-18T21:05:02+0800</EndTime>", "<EndTime>-</EndTime>"
    )
    text = text.replace("<State>Success</State>", "<State>Running</State>")
    (report,) = parse_notification(text.encode(), "application/xml", schemas).reports
    assert report.ended_at is None and report.ci_duration_seconds is None


def test_two_jobs_in_one_notification(schemas: SchemaSet) -> None:
    notification = parse_file("eventname-last-two-jobs.xml", schemas)
    assert len(notification.reports) == 2
    assert len({r.ci_job_id for r in notification.reports}) == 2


def test_digest_ignores_formatting_but_not_content(schemas: SchemaSet) -> None:
    compact = "".join(line.strip() for line in SUCCESS_XML.splitlines())
    one = parse_notification(SUCCESS_XML.encode(), "application/xml", schemas).reports[0]
    two = parse_notification(compact.encode(), "application/xml", schemas).reports[0]
    three = parse_notification(
        SUCCESS_XML.replace("ticket=4471", "ticket=4472").encode(), "application/xml", schemas
    ).reports[0]
    assert one.digest == two.digest != three.digest


def _without_empties(value: Any) -> Any:
    if isinstance(value, dict):
        kept = {k: _without_empties(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in ("", {}, [])}
    if isinstance(value, list):
        return [_without_empties(v) for v in value]
    return value


def defined_digest(detail: etree._Element) -> str:
    """The digest as it was first defined, and stored: the element's full view, empties
    dropped afterwards, as JSON with sorted keys."""
    view = _without_empties(element_to_dict(detail))
    return hashlib.sha256(
        json.dumps(view, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


@pytest.mark.parametrize("path", sorted(VALID.iterdir()), ids=lambda p: p.name)
def test_digests_are_the_ones_already_stored(path: Any, schemas: SchemaSet) -> None:
    """The parser digests a view built without empties in one walk; it must equal the
    definition the stored digests were made with, or a copy of an old notification would
    no longer be found and would be recorded twice."""
    notification = parse_file(path.name, schemas)
    root = (
        json_to_element(load_json(path.read_bytes(), 32))
        if path.suffix == ".json"
        else parse_xml(path.read_bytes(), 32)
    )
    details = root.findall("JobsDetail")
    assert [r.digest for r in notification.reports] == [defined_digest(d) for d in details]


_names = st.sampled_from(["A", "B", "C"])
_trees: st.SearchStrategy[Any] = st.recursive(
    st.sampled_from(["", "x", "0"]),
    lambda children: st.lists(st.tuples(_names, children), max_size=4),
    max_leaves=20,
)


def _build(parent: etree._Element, content: Any) -> None:
    if isinstance(content, str):
        parent.text = content or None
        return
    for name, child in content:
        _build(etree.SubElement(parent, name), child)


@settings(max_examples=300, deadline=None)
@given(content=_trees)
def test_the_view_without_empties_drops_them_as_the_definition_does(content: Any) -> None:
    """Any tree: repeated names, empty leaves, containers of empties, in any order."""
    root = etree.Element("JobsDetail")
    _build(root, content)
    assert element_to_dict(root, without_empties=True) == _without_empties(element_to_dict(root))


_views: st.SearchStrategy[Any] = st.recursive(
    st.text(),
    lambda children: st.one_of(
        st.dictionaries(st.text(), children, max_size=4), st.lists(children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(view=_views)
@example(view={"k": "\x7f"})  # ASCII, yet json.dumps escapes it
@example(view={"é": ["\U0001f600", "\u2028", ""]})
@example(view={'q"b\\': "\t\n\r\x01</x>"})
def test_the_digest_is_the_defined_encoding_whatever_the_text(view: Any) -> None:
    """content_digest encodes with orjson where that gives json.dumps's very bytes (ASCII
    without DEL) and with json.dumps otherwise: any text, keys and nesting, same digest."""
    defined = json.dumps(view, sort_keys=True, separators=(",", ":")).encode()
    assert content_digest(view) == hashlib.sha256(defined).hexdigest()


def test_notification_keeps_the_bytes_and_content_type_it_came_in(schemas: SchemaSet) -> None:
    body = SUCCESS_XML.encode()
    notification = parse_notification(body, "Text/XML; charset=utf-8", schemas)
    assert notification.body == body
    assert notification.content_type == "text/xml"
    assert notification.wire_format == "xml"


@pytest.mark.parametrize(
    "when",
    [
        "2024-02-30T21:03:44+0800",
        "2023-02-29T21:03:44+0800",
        "2024-04-31T21:03:44+0800",
        "0000-01-01T00:00:00+0800",
    ],
)
def test_time_that_matches_the_pattern_but_is_no_date_is_invalid(
    when: str, schemas: SchemaSet
) -> None:
    """The XSD pattern allows day 31 in every month and year 0000; parsing such a time
    must be a 400, not an uncaught ValueError."""
    body = SUCCESS_XML.replace("2024-11-18T21:03:44+0800", when).encode()
    with pytest.raises((InvalidNotificationError, MalformedNotificationError)):
        parse_notification(body, "application/xml", schemas)


@pytest.mark.parametrize(
    ("attributes", "refused"),
    [
        ([16], False),  # as many as a whole document may have
        ([17], True),
        ([9, 8], True),  # the cap is per document: 16 elements of 16 each made 256
        ([8, 8], False),
        ([0] * 3, False),
    ],
)
def test_the_attribute_cap_is_per_document(attributes: list[int], refused: bool) -> None:
    from app.notifications import MAX_ATTRIBUTES, MAX_ELEMENTS, require_size

    assert MAX_ATTRIBUTES == 16
    root = etree.Element("Response")
    for n in attributes:
        etree.SubElement(root, "E", {f"a{i}": "1" for i in range(n)})
    if refused:
        with pytest.raises(MalformedNotificationError, match="more than 16 attributes"):
            require_size(root, MAX_ELEMENTS)
    else:
        require_size(root, MAX_ELEMENTS)


@pytest.mark.parametrize("extra", [0, 1])
def test_the_element_cap_holds_for_xml_and_json_notifications(
    schemas: SchemaSet, extra: int
) -> None:
    """At most MAX_ELEMENTS elements, the root included, whichever the wire format."""
    from app.notifications import MAX_ELEMENTS

    count = MAX_ELEMENTS - 1 + extra  # children of the root
    xml = b"<Response>" + b"<JobsDetail/>" * count + b"</Response>"
    document = json.dumps({"JobsDetail": [{"Code": "x"}] * (count // 2)}).encode()
    for body, kind in ((xml, "application/xml"), (document, "application/json")):
        with pytest.raises((MalformedNotificationError, InvalidNotificationError)) as caught:
            parse_notification(body, kind, schemas)
        over = isinstance(caught.value, MalformedNotificationError)
        if kind == "application/xml":
            assert over == bool(extra), caught.value.message
        assert len(caught.value.details) <= 20
