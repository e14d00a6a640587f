"""The XSDs in schemas/ against the sample documents in tests/corpus/.

Corpus layout: ``tests/corpus/<document>/valid/*`` must be accepted and
``tests/corpus/<document>/invalid/<rule>.*`` rejected, each for the one rule it is named
after: ``expected-violations.json`` holds the path and a substring of xmlschema's reason.
``.json`` files are JSON notifications, mapped onto the XML tree by the same function the
service uses.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import pytest
import xmlschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from app.notifications import json_to_element
from app.schemas import DEFAULT_SCHEMA_DIR, DOCUMENTS, SchemaLoadError, SchemaSet, Violation

CORPUS = Path(__file__).parent / "corpus"
EXPECTED: dict[str, dict[str, str]] = json.loads(
    (CORPUS / "expected-violations.json").read_text(encoding="utf-8")
)
PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)


def corpus_files(kind: str) -> list[Path]:
    return sorted(
        p for p in CORPUS.glob(f"*/{kind}/*") if p.suffix in {".xml", ".json"} and p.is_file()
    )


VALID = corpus_files("valid")
INVALID = corpus_files("invalid")


def rel(path: Path) -> str:
    return path.relative_to(CORPUS).as_posix()


def document_of(path: Path) -> str:
    return path.relative_to(CORPUS).parts[0]


def load_root(path: Path) -> etree._Element:
    if path.suffix == ".json":
        return json_to_element(json.loads(path.read_text(encoding="utf-8")))
    return etree.parse(str(path), PARSER).getroot()


@pytest.fixture(scope="module")
def schemas() -> SchemaSet:
    return SchemaSet.load()


# --- the schema files --------------------------------------------------------------------


@pytest.mark.parametrize("xsd", sorted(DEFAULT_SCHEMA_DIR.glob("*.xsd")), ids=lambda p: p.name)
def test_xsd_is_valid_against_the_xsd_1_0_meta_schema(xsd: Path) -> None:
    meta = xmlschema.XMLSchema10.meta_schema
    meta.build()
    meta.validate(str(xsd))


def test_documents_name_every_document_xsd() -> None:
    on_disk = {p.name for p in DEFAULT_SCHEMA_DIR.glob("*.xsd")} - {"ci-types.xsd"}
    assert set(DOCUMENTS.values()) == on_disk


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_schema_loads_with_xmlschema_and_compiles_with_libxml2(
    schemas: SchemaSet, name: str
) -> None:
    assert schemas.xmlschema_for(name).built
    assert isinstance(schemas.lxml_for(name), etree.XMLSchema)


def test_shared_types_declare_no_document_root() -> None:
    types = xmlschema.XMLSchema10(
        str(DEFAULT_SCHEMA_DIR / "ci-types.xsd"), allow="sandbox", defuse="always"
    )
    assert list(types.elements) == []


def test_load_refuses_an_include_outside_the_schema_directory(tmp_path: Path) -> None:
    schema_dir = tmp_path / "schemas"
    shutil.copytree(DEFAULT_SCHEMA_DIR, schema_dir)
    shutil.copy(DEFAULT_SCHEMA_DIR / "ci-types.xsd", tmp_path / "outside.xsd")
    error_xsd = schema_dir / "error.xsd"
    error_xsd.write_text(
        error_xsd.read_text(encoding="utf-8").replace(
            'schemaLocation="ci-types.xsd"', 'schemaLocation="../outside.xsd"'
        ),
        encoding="utf-8",
    )
    with pytest.raises(SchemaLoadError, match="sandbox"):
        SchemaSet.load(schema_dir)


def test_load_reports_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(SchemaLoadError, match="notification"):
        SchemaSet.load(tmp_path / "nowhere")


def test_load_reports_a_broken_xsd(tmp_path: Path) -> None:
    schema_dir = tmp_path / "schemas"
    shutil.copytree(DEFAULT_SCHEMA_DIR, schema_dir)
    (schema_dir / "error.xsd").write_text("<xs:schema", encoding="utf-8")
    with pytest.raises(SchemaLoadError, match="error"):
        SchemaSet.load(schema_dir)


def test_unknown_document_name_is_a_key_error(schemas: SchemaSet) -> None:
    with pytest.raises(KeyError, match="callback"):
        schemas.is_valid("callback", etree.Element("Response"))


# --- the corpus itself ---------------------------------------------------------------------


def test_corpus_covers_every_document_both_ways() -> None:
    for name in DOCUMENTS:
        assert any(document_of(p) == name for p in VALID), name
        assert any(document_of(p) == name for p in INVALID), name
    assert len(INVALID) >= 40


def test_every_invalid_document_has_exactly_one_expectation() -> None:
    assert set(EXPECTED) == {rel(p) for p in INVALID}


# --- valid documents -----------------------------------------------------------------------


@pytest.mark.parametrize("path", VALID, ids=rel)
def test_valid_document_is_accepted_by_both_validators(schemas: SchemaSet, path: Path) -> None:
    name, root = document_of(path), load_root(path)
    schemas.xmlschema_for(name).validate(root)  # raises with xmlschema's reason if not
    fast = schemas.lxml_for(name)
    assert fast.validate(root), fast.error_log
    assert schemas.validate(name, root) == []
    assert schemas.explain(name, root) == []


# --- invalid documents ---------------------------------------------------------------------


@pytest.mark.parametrize("path", INVALID, ids=rel)
def test_invalid_document_is_rejected_by_both_for_its_rule(schemas: SchemaSet, path: Path) -> None:
    name, root = document_of(path), load_root(path)
    expected = EXPECTED[rel(path)]
    assert not schemas.lxml_for(name).validate(root)
    assert not schemas.xmlschema_for(name).is_valid(root)
    assert not schemas.is_valid(name, root)

    explained = schemas.explain(name, root)
    assert any(v.path == expected["path"] and expected["reason"] in v.reason for v in explained), [
        v.as_dict() for v in explained
    ]
    assert schemas.validate(name, root) == explained


# --- differential: libxml2 and xmlschema agree -----------------------------------------------


@pytest.mark.parametrize("path", VALID + INVALID, ids=rel)
def test_libxml2_and_xmlschema_agree(schemas: SchemaSet, path: Path) -> None:
    name, root = document_of(path), load_root(path)
    assert bool(schemas.lxml_for(name).validate(root)) == schemas.xmlschema_for(name).is_valid(root)


# Simple-typed leaves whose facets (patterns, enumerations, lengths, ranges) could be read
# differently by the two regex/facet engines; each gets arbitrary XML-legal text.
_NOTIFICATION = CORPUS / "notification" / "valid" / "success-alphabetical.xml"
_REQUEST = CORPUS / "create_request" / "valid" / "inline-params.xml"
_ENVELOPE = CORPUS / "task_notification" / "valid" / "noise-reduction.xml"
_LEGACY = CORPUS / "task_notification" / "valid" / "transcode-legacy-no-eventname.xml"
_WORKFLOW = CORPUS / "workflow_notification" / "valid" / "workflow-finish.xml"
_LEAVES = [
    ("notification", _NOTIFICATION, "JobsDetail/JobId"),
    ("notification", _NOTIFICATION, "JobsDetail/State"),
    ("notification", _NOTIFICATION, "JobsDetail/CreationTime"),
    ("notification", _NOTIFICATION, "JobsDetail/EndTime"),
    ("notification", _NOTIFICATION, "JobsDetail/Operation/UserData"),
    ("notification", _NOTIFICATION, "JobsDetail/Operation/Output/Bucket"),
    ("notification", _NOTIFICATION, "JobsDetail/Operation/MediaInfo/Format/Duration"),
    ("notification", _NOTIFICATION, "JobsDetail/Operation/MediaResult/OutputFile/Md5Info/Md5"),
    ("create_request", _REQUEST, "Operation/VoiceSeparate/AudioConfig/Bitrate"),
    ("create_request", _REQUEST, "Operation/JobLevel"),
    # the envelope: its own simple types, and the globals its lax Operation is typed by
    ("task_notification", _ENVELOPE, "JobsDetail/Tag"),
    ("task_notification", _ENVELOPE, "JobsDetail/JobId"),
    ("task_notification", _ENVELOPE, "JobsDetail/Operation/UserData"),
    ("task_notification", _ENVELOPE, "JobsDetail/Operation/Output/Bucket"),
    ("task_notification", _ENVELOPE, "JobsDetail/Operation/MediaResult/OutputFile/Md5Info/Md5"),
    ("task_notification", _LEGACY, "JobsDetail/Operation/Workflow/RunId"),
    ("task_notification", _LEGACY, "JobsDetail/Operation/Transcode/Video/Codec"),
    ("workflow_notification", _WORKFLOW, "WorkflowExecution/RunId"),
    ("workflow_notification", _WORKFLOW, "WorkflowExecution/State"),
    ("workflow_notification", _WORKFLOW, "WorkflowExecution/Tasks/JobId"),
    ("workflow_notification", _WORKFLOW, "WorkflowExecution/Tasks/TemplateId"),
]
_XML_CHARS = st.characters(
    codec="utf-8", exclude_categories=("Cs", "Cc"), exclude_characters="\ufffe\uffff"
) | st.sampled_from(" \t\n-+:.T0123456789abcdefj")


@settings(
    max_examples=400,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(leaf=st.sampled_from(_LEAVES), text=st.text(_XML_CHARS, max_size=40))
def test_libxml2_and_xmlschema_agree_on_arbitrary_leaf_text(
    schemas: SchemaSet, leaf: tuple[str, Path, str], text: str
) -> None:
    name, path, xpath = leaf
    root = copy.deepcopy(load_root(path))
    node = root.find(xpath)
    assert node is not None
    node.text = text
    assert bool(schemas.lxml_for(name).validate(root)) == schemas.xmlschema_for(name).is_valid(
        root
    ), (xpath, text)


# --- SchemaSet API -------------------------------------------------------------------------


def test_explain_reports_every_violation_with_absolute_paths(schemas: SchemaSet) -> None:
    root = load_root(_NOTIFICATION)
    root.find("JobsDetail/State").text = "Done"  # type: ignore[union-attr]
    root.find("JobsDetail/Operation/UserData").text = "x" * 1025  # type: ignore[union-attr]
    paths = {v.path for v in schemas.explain("notification", root)}
    assert paths == {"/Response/JobsDetail/State", "/Response/JobsDetail/Operation/UserData"}


def test_violation_reason_is_one_line(schemas: SchemaSet) -> None:
    for path in INVALID:
        for violation in schemas.explain(document_of(path), load_root(path)):
            assert "\n" not in violation.reason and violation.reason


def test_violation_as_dict() -> None:
    violation = Violation(path="/Response/JobsDetail/State", reason="value must be one of [...]")
    assert violation.as_dict() == {
        "path": "/Response/JobsDetail/State",
        "reason": "value must be one of [...]",
    }


def test_validate_trusts_xmlschema_when_libxml2_disagrees(
    schemas: SchemaSet, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(SchemaSet, "is_valid", lambda self, name, root: False)
    with caplog.at_level(logging.WARNING, logger="app.schemas"):
        assert schemas.validate("notification", load_root(_NOTIFICATION)) == []
    assert "xmlschema wins" in caplog.text


def test_decode_a_valid_notification(schemas: SchemaSet) -> None:
    decoded = schemas.decode("notification", load_root(_NOTIFICATION))
    assert decoded["EventName"] == "TaskFinish"
    (detail,) = decoded["JobsDetail"]
    assert detail["JobId"] == "j6d67510d4c4f15952ca66bc47f5b1ea3"
    assert detail["State"] == "Success"
    assert detail["Operation"]["Output"]["Bucket"] == "stemlab-1250000000"
    assert len(detail["Operation"]["MediaResult"]["OutputFile"]["ObjectName"]) == 2


def test_decode_a_json_notification(schemas: SchemaSet) -> None:
    path = CORPUS / "notification" / "valid" / "jobsdetail-object.json"
    decoded = schemas.decode("notification", load_root(path))
    (detail,) = decoded["JobsDetail"]
    assert detail["Operation"]["VoiceSeparate"]["AudioConfig"]["Bitrate"] == 256


def test_decode_refuses_an_invalid_document(schemas: SchemaSet) -> None:
    root = load_root(CORPUS / "notification" / "invalid" / "state-not-in-enum.xml")
    with pytest.raises(xmlschema.XMLSchemaValidationError):
        schemas.decode("notification", root)
